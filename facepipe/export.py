"""From groups to folders of people: one folder per group (named by the group's name when it has one), plus
``unknown/`` and ``no_face/``, holding the source photos (or the face crops) as hard links, symbolic links or
copies, and ``manifest.csv``.

A rerun brings the folder to what the clustering says now: files that no longer belong are removed, missing
ones made, the others left as they are. Only files the previous manifest lists are ever removed, and nothing
outside the target folder is touched; each file is made under a temporary name and renamed, and the manifest
is written last, so an interrupted export resumes where it stopped.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from facepipe.common import FacepipeError, progress
from facepipe.formats import (
    CLUSTER_RESULTS_CSV,
    DETECTIONS_CSV,
    EXPORT_MANIFEST_COLUMNS,
    EXPORT_MANIFEST_CSV,
    NO_FACE_FOLDER,
    SOURCES_CSV,
    UNKNOWN_CLUSTER,
    UNKNOWN_FOLDER,
    CLUSTER_SIDECAR_FIELDS,
    cluster_results_path,
    group_names,
    read_cluster_results,
    read_csv,
    read_sidecar,
    recorded_path,
    sidecar_path,
    write_csv_atomic,
)
from facepipe.export_settings import EXPORT_MODES
from facepipe.labels import crop_sources
from facepipe.locks import locks_output


@dataclass
class ExportSummary:
    """What an export did."""

    groups: int
    photos: int
    files: int
    made: int
    removed: int
    copied_across_devices: int
    out_dir: Path
    seconds: float

    def line(self) -> str:
        across = (f"; {self.copied_across_devices} copied (another file system: no hard link)"
                  if self.copied_across_devices else "")
        return (f"export: {self.files} files of {self.photos} photos in {self.groups} group folders + unknown + "
                f"no_face ({self.made} made, {self.removed} removed, {self.files - self.made} already there"
                f"{across}) -> {self.out_dir} in {self.seconds:.1f}s")


def folder_name(text: str) -> str:
    """A group's name as a folder name: unicode and spaces kept; path separators, control characters and
    names the file system reserves replaced."""
    name = re.sub(r"[/\\\x00-\x1f\x7f]", "_", text).strip().rstrip(".")
    return name if name and name not in (".", "..") else "_"


def _group_folders(groups: pd.DataFrame) -> dict[int, str]:
    """Group id -> folder: its name, else ``group_N``; a name two groups share, or one of the fixed folders,
    gets `` (group N)``."""
    folders, taken = {}, {UNKNOWN_FOLDER, NO_FACE_FOLDER}
    for row in groups.sort_values("cluster").itertuples(index=False):
        name = folder_name(row.person) if isinstance(row.person, str) and row.person else f"group_{row.cluster}"
        if name in taken:
            name = f"{name} (group {row.cluster})"
        taken.add(name)
        folders[int(row.cluster)] = name
    return folders


def _unique_file_names(items: pd.DataFrame) -> pd.Series:
    """The file name each item gets in its folder: the item's own name, with a short hash of its full path
    added where two different items of one folder share that name (the same name in two photo folders)."""
    base = items["item"].map(lambda path: Path(path).name)
    clash = items.assign(base=base).groupby(["folder", "base"])["item"].transform("nunique") > 1

    def with_hash(path: str) -> str:
        path = Path(path)
        return f"{path.stem}_{hashlib.sha1(str(path).encode('utf-8')).hexdigest()[:8]}{path.suffix}"

    return base.where(~clash, items["item"].map(with_hash))


def _read_clustering(results_path: Path) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """The faces (crop, group, distance, source photo) of a clustering, its groups and the crops folder."""
    results = read_cluster_results(results_path)
    meta_file = sidecar_path(results_path)
    meta = read_sidecar(results_path, CLUSTER_SIDECAR_FIELDS)
    if not meta.get("crops_dir"):
        raise FacepipeError(f"{meta_file} names no crops folder, so the faces' photos are unknown")
    crops_dir = recorded_path(meta["crops_dir"], results_path)
    faces = results
    source_of = crop_sources(faces["name"].tolist(), crops_dir)
    missing = sorted(set(faces["name"]) - set(source_of))
    if missing:
        raise FacepipeError(f"{len(missing)} face(s) of {results_path} are not in {crops_dir / DETECTIONS_CSV}, "
                            f"e.g. {missing[0]}: the clustering and the crops folder do not belong together")
    faces["source"] = faces["name"].map(source_of)
    ids = sorted(int(c) for c in faces["cluster"].unique() if c != UNKNOWN_CLUSTER)
    return faces, pd.DataFrame({"cluster": ids, "person": [group_names(results_path.parent).get(c, "") for c in ids]}), \
        crops_dir


def _plan(faces: pd.DataFrame, groups: pd.DataFrame, crops_dir: Path, use_crops: bool) -> pd.DataFrame:
    """One row per file to make (EXPORT_MANIFEST_COLUMNS, ``file`` relative to the target folder)."""
    folders = _group_folders(groups)
    names = dict(zip(groups["cluster"].astype(int), groups["person"]))
    rows = faces.assign(
        group=faces["cluster"].astype(int),
        person=faces["cluster"].map(lambda c: names.get(int(c), "")),  # the manifest's "name"
        folder=faces["cluster"].map(lambda c: UNKNOWN_FOLDER if c == UNKNOWN_CLUSTER else folders[int(c)]),
        item=faces["name"].map(lambda n: str(crops_dir / n)) if use_crops else faces["source"],
    ).rename(columns={"source": "photo", "name": "face"})
    sources_file = crops_dir / SOURCES_CSV
    if sources_file.is_file():
        sources = read_csv(sources_file, ["source", "status", "faces"], "sources CSV")
        empty = sources[(sources["status"] == "ok") & (pd.to_numeric(sources["faces"], errors="coerce") == 0)]
        rows = pd.concat([rows, pd.DataFrame({"photo": empty["source"].astype(str), "face": "",
                                              "group": UNKNOWN_CLUSTER, "person": "", "distance": float("nan"),
                                              "folder": NO_FACE_FOLDER, "item": empty["source"].astype(str)})],
                         ignore_index=True)
    rows = rows.sort_values(["folder", "item", "distance"]).drop_duplicates(["folder", "item"])  # a photo once a folder
    rows["file"] = rows["folder"] + "/" + _unique_file_names(rows)
    return rows


def _is_in_place(target: Path, item: Path, mode: str) -> bool:
    if mode == "symlink":
        return target.is_symlink() and os.readlink(target) == str(item)
    if target.is_symlink() or not target.is_file():
        return False
    if os.path.samefile(target, item):
        return mode == "hardlink"  # a hard link is no copy: editing it would edit the photo
    found, wanted = target.stat(), item.stat()
    return found.st_size == wanted.st_size and found.st_mtime_ns == wanted.st_mtime_ns  # a copy (copy2)


def _make(target: Path, item: Path, mode: str) -> bool:
    """Make ``target`` from ``item`` through a temporary name; True when a hard link had to be a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.unlink(missing_ok=True)
    copied = False
    try:
        if mode == "symlink":
            os.symlink(item, temporary)
        elif mode == "hardlink":
            try:
                os.link(item, temporary)
            except OSError as error:
                if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                shutil.copy2(item, temporary)
                copied = True
        else:
            shutil.copy2(item, temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return copied


def _inside(folder: Path, relative: str) -> Path | None:
    """``folder / relative`` when it stays inside ``folder`` (a manifest row never reaches outside)."""
    path = Path(os.path.abspath(folder / relative))
    real = Path(os.path.realpath(path.parent)) / path.name  # a link to a folder outside does not count as inside
    return path if real.is_relative_to(os.path.realpath(folder)) and path != folder else None


def _previous_files(out_dir: Path) -> set[str]:
    """The files the previous export's manifest lists (relative to ``out_dir``): the only ones export may
    replace or remove."""
    manifest = out_dir / EXPORT_MANIFEST_CSV
    return set(read_csv(manifest, ["file"], "export manifest")["file"].astype(str)) if manifest.is_file() else set()


def _remove_what_no_longer_belongs(out_dir: Path, plan: pd.DataFrame, before: set[str]) -> int:
    removed = 0
    for relative in sorted(set(before) - set(plan["file"])):
        path = _inside(out_dir, relative)
        if path is not None and (path.is_file() or path.is_symlink()):
            path.unlink()
            removed += 1
            if path.parent != out_dir and not any(path.parent.iterdir()):
                path.parent.rmdir()
    return removed


@locks_output(lambda args: args["out_dir"])
def export(
    cluster_results: str | os.PathLike = CLUSTER_RESULTS_CSV,
    out_dir: str | os.PathLike = "people",
    *,
    mode: str = "hardlink",
    crops: bool = False,
    show_progress: bool = True,
) -> ExportSummary:
    """Export a clustering (``cluster_results.csv``, or the folder holding it) into ``out_dir``: a folder per
    group, ``unknown/`` and ``no_face/``, with each source photo (or, with ``crops``, each face crop) as a
    ``mode`` hard link, symlink or copy, and ``manifest.csv`` (EXPORT_MANIFEST_COLUMNS). A photo with several
    people is in each of their folders. A hard link across file systems becomes a copy."""
    started = time.monotonic()
    if mode not in EXPORT_MODES:
        raise FacepipeError(f"unknown export mode {mode!r}: use {', '.join(EXPORT_MODES)}")
    results_path = cluster_results_path(cluster_results)
    out_dir = Path(os.path.abspath(out_dir))
    faces, groups, crops_dir = _read_clustering(results_path)
    if out_dir == crops_dir or crops_dir.is_relative_to(out_dir):
        raise FacepipeError(f"the export folder {out_dir} holds the crops folder {crops_dir}: choose another")
    plan = _plan(faces, groups, crops_dir, crops)
    inside = plan["item"].map(lambda item: Path(os.path.realpath(item)).is_relative_to(os.path.realpath(out_dir)))
    if inside.any():
        raise FacepipeError(f"{out_dir} holds photos it would export ({plan['item'][inside].iloc[0]}): choose a "
                            "folder outside the collection")
    before = _previous_files(out_dir)
    removed = _remove_what_no_longer_belongs(out_dir, plan, before)
    made = copied = 0
    for row in progress(plan.itertuples(index=False), desc="export", total=len(plan), unit="file",
                        enabled=show_progress):
        target, item = out_dir / row.file, Path(row.item)
        if not item.is_file():
            raise FacepipeError(f"{item} (of face {row.face or row.photo}) is gone: its photo was moved or deleted "
                                "since detect; export the rest by running detect and cluster again")
        if _is_in_place(target, item, mode):
            continue
        if (target.exists() or target.is_symlink()) and row.file not in before:
            raise FacepipeError(f"{target} exists and was not made by an earlier export: move it away, or export "
                                "into another folder (nothing export did not make is ever replaced)")
        copied += _make(target, item, mode)
        made += 1
    manifest = plan.rename(columns={"person": "name"})[EXPORT_MANIFEST_COLUMNS]
    write_csv_atomic(manifest, out_dir / EXPORT_MANIFEST_CSV, float_format="%.6g", keep_if_same=True)
    return ExportSummary(groups=len(groups), photos=int(plan["photo"].nunique()), files=len(plan), made=made,
                         removed=removed, copied_across_devices=copied, out_dir=out_dir,
                         seconds=time.monotonic() - started)
