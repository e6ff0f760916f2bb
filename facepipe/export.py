"""From groups to folders of people: one folder per group (named by the group's name when it has one), plus
``unknown/`` and ``no_face/``, holding the source photos (or the face crops) as hard links, symbolic links or
copies, and ``manifest.csv``.

A rerun brings the folder to what the clustering says now: files that no longer belong are removed, missing
ones made, the others left as they are. Export removes or replaces only files its record
(``manifest.csv.json``) says it made and that are still what it made (a copy the user edited is left alone);
it exports only into a new or empty folder or an earlier export, never writes through a link inside it, and
touches nothing outside it. The record is written before anything changes (with the files about to be made)
and again last; each file is made under a temporary name and renamed, so an interrupted export resumes where
it stopped.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import os
import random
import re
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from facepipe.common import (
    FacepipeError,
    file_sha256,
    progress,
    remove_own_temporaries,
    temporary_affixes,
    write_text_atomic,
)
from facepipe.formats import (
    CLUSTER_RESULTS_CSV,
    CLUSTER_SIDECAR_FIELDS,
    DETECTIONS_CSV,
    EXPORT_MANIFEST_COLUMNS,
    EXPORT_MANIFEST_CSV,
    EXPORT_RECORD_FORMAT,
    LOCK_FILE,
    NO_FACE_FOLDER,
    SOURCES_CSV,
    UNKNOWN_CLUSTER,
    UNKNOWN_FOLDER,
    cluster_results_path,
    csv_text,
    group_names,
    path_in_sidecar,
    read_cluster_results,
    read_csv,
    read_json,
    sidecar_path,
    write_json_atomic,
)
from facepipe.labels import crop_sources
from facepipe.locks import locks_output
from facepipe.owned import holds_recorded, inside, inside_or_none, left_alone_phrase
from facepipe.settings import ExportSettings
from facepipe.xmp import XmpSummary


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
    left_alone: list[Path] = field(default_factory=list)  # files export made that the user changed since
    xmp: XmpSummary | None = None  # the face tags written into the photos' XMP sidecars (--xmp)

    def line(self) -> str:
        across = (
            f"; {self.copied_across_devices} copied (another file system: no hard link)"
            if self.copied_across_devices
            else ""
        )
        return (
            f"export: {self.files} files of {self.photos} photos in {self.groups} group folders + unknown + "
            f"no_face ({self.made} made, {self.removed} removed, {self.files - self.made} already there"
            f"{across}{left_alone_phrase(self.left_alone)}) -> {self.out_dir} in {self.seconds:.1f}s"
            + (f"\n{self.xmp.line()}" if self.xmp else "")
        )


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
    crops_dir = path_in_sidecar(
        results_path,
        "crops_dir",
        CLUSTER_SIDECAR_FIELDS,
        "{sidecar} names no crops folder, so the faces' photos are unknown",
    )
    faces = results
    source_of = crop_sources(faces["name"].tolist(), crops_dir)
    missing = sorted(set(faces["name"]) - set(source_of))
    if missing:
        raise FacepipeError(
            f"{len(missing)} face(s) of {results_path} are not in {crops_dir / DETECTIONS_CSV}, "
            f"e.g. {missing[0]}: the clustering and the crops folder do not belong together"
        )
    faces["source"] = faces["name"].map(source_of)
    ids = sorted(int(c) for c in faces["cluster"].unique() if c != UNKNOWN_CLUSTER)
    return (
        faces,
        pd.DataFrame({"cluster": ids, "person": [group_names(results_path.parent).get(c, "") for c in ids]}),
        crops_dir,
    )


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
        rows = pd.concat(
            [
                rows,
                pd.DataFrame(
                    {
                        "photo": empty["source"].astype(str),
                        "face": "",
                        "group": UNKNOWN_CLUSTER,
                        "person": "",
                        "distance": float("nan"),
                        "folder": NO_FACE_FOLDER,
                        "item": empty["source"].astype(str),
                    }
                ),
            ],
            ignore_index=True,
        )
    rows = rows.sort_values(["folder", "item", "distance"]).drop_duplicates(
        ["folder", "item"]
    )  # a photo once a folder
    rows["file"] = rows["folder"] + "/" + _unique_file_names(rows)
    return rows


def _is_in_place(target: Path, item: Path, mode: str) -> bool:
    """True when ``target`` (a file export made) already is what ``mode`` makes of ``item``."""
    if mode == "symlink":
        return target.is_symlink() and os.readlink(target) == str(item)
    if target.is_symlink() or not target.is_file():
        return False
    if os.path.samefile(target, item):
        return mode == "hardlink"  # a hard link is no copy: editing it would edit the photo
    found, wanted = target.stat(), item.stat()
    return found.st_size == wanted.st_size and found.st_mtime_ns == wanted.st_mtime_ns  # a copy (copy2)


_TEMPORARY_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789_"  # those of mkstemp, which atomic_path uses


def _temporary_beside(target: Path) -> Path:
    """A free temporary name beside ``target`` in atomic_path's pattern (``remove_own_temporaries`` knows it)."""
    prefix, suffix = temporary_affixes(target)
    return target.with_name(prefix + "".join(random.choices(_TEMPORARY_LETTERS, k=8)) + suffix)


def _make(target: Path, item: Path, mode: str) -> bool:
    """Make ``target`` from ``item`` through a temporary name; True when a hard link had to be a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_beside(target)
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


def _what_was_made(target: Path, mode: str, copied: bool) -> dict:
    """How the record knows ``target`` again: a symlink by its target, a hard link by its inode, a copy by its
    sha256 (and size, time and inode, which spare the hashing while they are unchanged)."""
    found = os.lstat(target)
    if mode == "symlink":
        return {"symlink": os.readlink(target)}
    if mode == "hardlink" and not copied:
        return {"inode": [found.st_dev, found.st_ino]}
    return {
        "sha256": file_sha256(target),
        "size": found.st_size,
        "mtime_ns": found.st_mtime_ns,
        "inode": [found.st_dev, found.st_ino],
    }


def _is_made_of(path: Path, item: str, mode: str) -> bool:
    """True when ``path`` is what ``mode`` makes of ``item``: a file export was about to make when it stopped."""
    if mode == "symlink":
        return path.is_symlink() and os.readlink(path) == item
    if path.is_symlink() or not path.is_file() or not os.path.isfile(item):
        return False
    return (mode == "hardlink" and os.path.samefile(path, item)) or file_sha256(path) == file_sha256(item)


def _still_made(path: Path, entry: dict) -> bool:
    """True when ``path`` still is the file the record's ``entry`` says export made there (or was making)."""
    if not isinstance(entry, dict) or not os.path.lexists(path):
        return False
    made = entry.get("made")
    if not isinstance(made, dict):  # about to be made when export stopped
        previous = entry.get("previous")
        return _is_made_of(path, str(entry.get("from")), str(entry.get("mode"))) or (
            isinstance(previous, dict) and _still_made(path, previous)
        )
    found = os.lstat(path)
    if "symlink" in made:
        return stat.S_ISLNK(found.st_mode) and os.readlink(path) == made["symlink"]
    if not stat.S_ISREG(found.st_mode):
        return False
    if "sha256" not in made:  # a hard link: of the same inode, or (device numbers can change) of its photo still
        from_photo = str(entry.get("from"))
        return [found.st_dev, found.st_ino] == made.get("inode") or (
            os.path.isfile(from_photo) and os.path.samefile(path, from_photo)
        )
    if [found.st_size, found.st_mtime_ns, [found.st_dev, found.st_ino]] == [
        made.get("size"),
        made.get("mtime_ns"),
        made.get("inode"),
    ]:
        return True
    return file_sha256(path) == made["sha256"]


def _record_path(out_dir: Path) -> Path:
    return sidecar_path(out_dir / EXPORT_MANIFEST_CSV)


def _files_in(folder: Path) -> list[str]:
    """What ``folder`` holds apart from empty folders and its lock file (links not followed), sorted."""
    found = []
    for root, folders, names in os.walk(folder):
        links = [name for name in folders if os.path.islink(os.path.join(root, name))]
        found += [os.path.relpath(os.path.join(root, name), folder) for name in names + links]
    return sorted(name for name in found if name != LOCK_FILE)


def _read_record(out_dir: Path) -> dict:
    """The record of an earlier export into ``out_dir`` (``files``: what it made; ``manifest_sha256``: the
    manifest.csv there now), or an empty one for a new or empty folder. A folder holding files but no record
    of export's, or a manifest.csv changed since export wrote it, is refused: export never reads, replaces
    or removes what it did not make."""
    record_file, manifest = _record_path(out_dir), out_dir / EXPORT_MANIFEST_CSV
    if not out_dir.is_dir():
        return {"files": {}, "manifest_sha256": []}
    if not os.path.lexists(record_file):
        others = _files_in(out_dir)
        if others:
            raise FacepipeError(
                f"{out_dir} holds files that were not made by an earlier export (e.g. {others[0]}; "
                f"no {record_file.name} of export's): export into a new or empty folder, or into "
                "an earlier export (nothing export did not make is ever replaced or removed)"
            )
        return {"files": {}, "manifest_sha256": []}
    record = read_json(record_file) if not record_file.is_symlink() else None
    files = record.get("files") if isinstance(record, dict) and record.get("format") == EXPORT_RECORD_FORMAT else None
    if not isinstance(files, dict):
        raise FacepipeError(
            f"{record_file} is not export's record ({EXPORT_RECORD_FORMAT}): move it away, or "
            "export into another folder"
        )
    digests = record.get("manifest_sha256")
    digests = [d for d in digests if isinstance(d, str)] if isinstance(digests, list) else []
    found = [digest for digest in digests if holds_recorded(manifest, digest)][:1]
    if os.path.lexists(manifest) and not found:
        raise FacepipeError(
            f"{manifest} was changed since export wrote it: move it away and rerun (export never "
            "overwrites a file it did not write)"
        )
    return dict(record, manifest_sha256=found)


def _write_record(out_dir: Path, files: dict[str, dict], manifest_digests: list[str], earlier: dict) -> dict:
    """Write export's record (left untouched when it says what the ``earlier`` one said); returns a copy of it
    (``files``' entries are filled in later, which must not change what this record was)."""
    record = {
        "format": EXPORT_RECORD_FORMAT,
        "files": files,
        "manifest_sha256": list(dict.fromkeys(manifest_digests)),
    }
    if record != earlier:
        write_json_atomic(_record_path(out_dir), record)
    return copy.deepcopy(record)


def _still_there(
    out_dir: Path, earlier: dict[str, dict], targets: dict[str, Path]
) -> tuple[dict[str, Path], dict[str, Path]]:
    """The recorded files still in ``out_dir`` (``targets``: the paths of this plan, checked): those still as
    export made them (its own), and those changed."""
    owned, changed = {}, {}
    for relative, entry in earlier.items():
        path = targets.get(relative) or inside_or_none(out_dir, relative)
        if path is not None and os.path.lexists(path):
            (owned if _still_made(path, entry) else changed)[relative] = path
    return owned, changed


def _remove_what_no_longer_belongs(out_dir: Path, owned: dict[str, Path], plan: pd.DataFrame) -> int:
    """Remove the files export made (``owned``, still as it made them) that the plan no longer holds."""
    removed = 0
    for relative in sorted(set(owned) - set(plan["file"])):
        path = owned[relative]
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
    mode: str = ExportSettings.mode,
    crops: bool = ExportSettings.crops,
    xmp: str | None = ExportSettings.xmp,
    show_progress: bool = True,
) -> ExportSummary:
    """Export a clustering (``cluster_results.csv``, or its folder) into ``out_dir``: a folder per group,
    ``unknown/`` and ``no_face/``, each source photo (``crops``: face crop) a ``mode`` hard link, symlink or copy
    (a hard link across file systems: a copy), ``manifest.csv``; a photo of several people is in each one's
    folder. ``xmp`` (a sidecar naming, settings.XMP_NAMINGS): tag the named faces in the photos' XMP sidecars too."""
    started = time.monotonic()
    ExportSettings(mode=mode, crops=crops, xmp=xmp)  # checks them
    results_path = cluster_results_path(cluster_results)
    out_dir = Path(os.path.abspath(out_dir))
    faces, groups, crops_dir = _read_clustering(results_path)
    if out_dir == crops_dir or crops_dir.is_relative_to(out_dir):
        raise FacepipeError(f"the export folder {out_dir} holds the crops folder {crops_dir}: choose another")
    plan = _plan(faces, groups, crops_dir, crops)
    within = plan["item"].map(lambda item: Path(os.path.realpath(item)).is_relative_to(os.path.realpath(out_dir)))
    if within.any():
        raise FacepipeError(
            f"{out_dir} holds photos it would export ({plan['item'][within].iloc[0]}): choose a "
            "folder outside the collection"
        )
    targets = {row.file: inside(out_dir, row.file) for row in plan.itertuples(index=False)}  # no link on the way
    missing = plan[~plan["item"].map(os.path.isfile)]
    if len(missing):
        row = missing.iloc[0]
        raise FacepipeError(
            f"{row['item']} (of face {row['face'] or row['photo']}) is gone: its photo was moved or "
            "deleted since detect; export the rest by running detect and cluster again"
        )
    remove_own_temporaries(out_dir, {EXPORT_MANIFEST_CSV, _record_path(out_dir).name}.__contains__)
    record = _read_record(out_dir)
    earlier = record["files"]
    owned, changed = _still_there(out_dir, earlier, targets)
    strangers = [path for relative, path in targets.items() if relative not in earlier and os.path.lexists(path)]
    if strangers:
        raise FacepipeError(
            f"{strangers[0]} exists and was not made by an earlier export: move it away, or export "
            "into another folder (nothing export did not make is ever replaced)"
        )
    names_in: dict[Path, set[str]] = {}
    for path in targets.values():
        names_in.setdefault(path.parent, set()).add(path.name)
    for folder, names in names_in.items():  # the temporaries of files an interrupted export was making
        remove_own_temporaries(folder, names.__contains__)

    files, todo = _files_to_make(plan, targets, earlier, owned, changed, mode)
    manifest_text = csv_text(plan.rename(columns={"person": "name"})[EXPORT_MANIFEST_COLUMNS], float_format="%.6g")
    manifest_digest = hashlib.sha256(manifest_text.encode("utf-8")).hexdigest()
    kept = {relative: earlier[relative] for relative in changed}
    ahead = {**{relative: earlier[relative] for relative in owned}, **kept, **files}  # before anything changes
    record = _write_record(out_dir, ahead, record["manifest_sha256"] + [manifest_digest], record)
    removed = _remove_what_no_longer_belongs(out_dir, owned, plan)
    copied = 0
    for row in progress(todo, desc="export", total=len(todo), unit="file", enabled=show_progress):
        across = _make(targets[row.file], Path(row.item), mode)
        files[row.file]["made"] = _what_was_made(targets[row.file], mode, across)
        files[row.file].pop("previous", None)
        copied += across
    if not holds_recorded(out_dir / EXPORT_MANIFEST_CSV, manifest_digest):
        write_text_atomic(out_dir / EXPORT_MANIFEST_CSV, manifest_text)
    _write_record(out_dir, {**kept, **files}, [manifest_digest], record)
    return ExportSummary(
        groups=len(groups),
        photos=int(plan["photo"].nunique()),
        files=len(plan),
        made=len(todo),
        removed=removed,
        copied_across_devices=copied,
        out_dir=out_dir,
        seconds=time.monotonic() - started,
        left_alone=sorted(changed.values()),
        xmp=_tag_photos(faces, groups, crops_dir, out_dir, xmp) if xmp else None,
    )


def _files_to_make(plan: pd.DataFrame, targets: dict, earlier: dict, owned: dict, changed: dict, mode: str):
    """The record entry of each file of the ``plan`` this export keeps or makes (not those the user ``changed``),
    and the plan's rows still to make: a file an earlier export made (``owned``) that is in place is kept."""
    files, todo = {}, []
    for row in plan.itertuples(index=False):
        if row.file in changed:
            continue  # the user changed it since export made it: theirs now, left alone
        entry = {"from": str(row.item), "mode": mode}
        target = targets[row.file]
        if row.file in owned and _is_in_place(target, Path(row.item), mode):
            files[row.file] = dict(earlier[row.file], **entry)
            if not isinstance(files[row.file].get("made"), dict):  # made by an export that then stopped
                as_copy = mode == "hardlink" and not os.path.samefile(target, row.item)
                files[row.file] = dict(entry, made=_what_was_made(target, mode, as_copy))
            continue
        if row.file in owned:
            entry["previous"] = earlier[row.file]
        files[row.file] = entry
        todo.append(row)
    return files, todo


def _tag_photos(faces: pd.DataFrame, groups: pd.DataFrame, crops_dir: Path, out_dir: Path, naming: str):
    """The named faces written into their photos' XMP sidecars (``xmp.write_face_tags``), recorded in ``out_dir``."""
    from facepipe.xmp import write_face_tags

    return write_face_tags(faces.merge(groups, on="cluster", how="left"), crops_dir, out_dir, naming)
