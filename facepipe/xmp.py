"""Face tags other photo tools read: XMP sidecars with MWG regions (``mwg-rs``: a region per named face, its
name, type Face and normalised area, centre x, y and w, h, with the photo's AppliedToDimensions), written
beside each photo as ``photo.jpg.xmp`` (darktable, digiKam) or ``photo.xmp`` (Lightroom); and the names other
tools put in photos' MWG or Microsoft (MP) regions, read back as labels of the faces they cover.

exiftool (Debian ``libimage-exiftool-perl``) reads and writes the XMP. A sidecar that is already there is
merged into, never replaced: its other tags stay, and so do regions facepipe did not write; a face whose box
a region of the user's already covers gets no second region. What facepipe wrote into each sidecar is
recorded in the export folder (``xmp_sidecars.json``), so that a rerun replaces its own regions only.
Areas are those of detect's boxes, in the photo as detect read it (EXIF orientation applied).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from facepipe.common import FacepipeError, write_text_atomic
from facepipe.formats import DETECTIONS_CSV, read_detections, read_json, write_json_atomic
from facepipe.settings import XMP_NAMINGS

XMP_RECORD_JSON = "xmp_sidecars.json"  # in the export folder: sidecar -> the regions facepipe wrote there
SAME_FACE_OVERLAP = 0.5  # intersection over union above which a region and a face box are one face
FACE_TAG_COLUMNS = ["name", "identity"]  # read-tags: a label manifest (crop name, the tag's name)
LABEL_OVERLAP = 0.3  # ... at least this, for a region's name to label a detected face (boxes differ in size)
EMPTY_PACKET = (
    "<?xpacket begin='\ufeff' id='W5M0MpCehiHzreSzNTczkc9d'?>\n<x:xmpmeta xmlns:x='adobe:ns:meta/'>"
    "<rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'></rdf:RDF></x:xmpmeta>\n"
    "<?xpacket end='w'?>\n"
)


@dataclass
class XmpSummary:
    """What writing the sidecars did."""

    photos: int
    regions: int
    created: int
    merged: int
    kept: int  # faces left out: a region of the user's covers them

    def line(self) -> str:
        return (
            f"xmp: {self.regions} named face region(s) in the sidecars of {self.photos} photo(s) "
            f"({self.created} new, {self.merged} merged into; {self.kept} face(s) already tagged by you)"
        )


def sidecar_of(photo: str | os.PathLike, naming: str = XMP_NAMINGS[0]) -> Path:
    """The sidecar of ``photo``: ``photo.jpg.xmp`` or ``photo.xmp`` (``naming``)."""
    if naming not in XMP_NAMINGS:
        raise FacepipeError(f"unknown sidecar naming {naming!r}: use {' or '.join(XMP_NAMINGS)}")
    photo = Path(photo)
    return photo.with_name(photo.name + ".xmp") if naming == XMP_NAMINGS[0] else photo.with_suffix(".xmp")


def _exiftool(arguments: list[str]) -> str:
    """Run exiftool with ``arguments`` (the file names in an argument file: any number, any characters)."""
    program = shutil.which("exiftool")
    if program is None:
        raise FacepipeError("XMP face tags need exiftool: apt-get install libimage-exiftool-perl (or exiftool.org)")
    with tempfile.NamedTemporaryFile("w", suffix=".args", encoding="utf-8", delete=False) as argfile:
        argfile.write("\n".join(arguments) + "\n")
    try:
        done = subprocess.run(
            [program, "-charset", "filename=utf8", "-@", argfile.name],
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
    finally:
        os.unlink(argfile.name)
    if done.returncode not in (0, 1) or (done.returncode == 1 and not done.stdout):
        problem = (done.stderr.strip().splitlines() or ["no message"])[0]
        raise FacepipeError(f"exiftool failed: {problem}")
    return done.stdout


def _area(region: dict, dimensions: dict | None) -> tuple[float, float, float, float] | None:
    """An MWG region's area as normalised (left, top, width, height), or None where it has none."""
    area = region.get("Area") or {}
    try:
        x, y, w, h = (float(area[k]) for k in ("X", "Y", "W", "H"))
    except (KeyError, TypeError, ValueError):
        return None
    if str(area.get("Unit", "normalized")).lower() == "pixel":
        try:
            width, height = float(dimensions["W"]), float(dimensions["H"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return None
        x, y, w, h = x / width, y / height, w / width, h / height
    return x - w / 2, y - h / 2, w, h


def _mp_area(rectangle) -> tuple[float, float, float, float] | None:
    try:
        x, y, w, h = (float(v) for v in str(rectangle).split(","))
    except ValueError:
        return None
    return x, y, w, h


def read_regions(paths: list[Path]) -> dict[Path, list[dict]]:
    """Each file's named regions (MWG and Microsoft MP): ``name``, ``box`` (normalised left, top, width,
    height), ``kind`` ("mwg" or "mp") and, for MWG, the ``region`` as exiftool gives it."""
    paths = [p for p in paths if p.is_file()]
    if not paths:
        return {}
    found: dict[Path, list[dict]] = {}
    for entry in json.loads(
        _exiftool(["-struct", "-j", "-n", "-XMP:RegionInfo", "-XMP:RegionInfoMP", *map(str, paths)]) or "[]"
    ):
        info, regions = entry.get("RegionInfo") or {}, []
        for region in info.get("RegionList") or []:
            box = _area(region, info.get("AppliedToDimensions"))
            if box is not None:
                regions.append({"name": str(region.get("Name") or ""), "box": box, "kind": "mwg", "region": region})
        for region in (entry.get("RegionInfoMP") or {}).get("Regions") or []:
            box = _mp_area(region.get("Rectangle"))
            if box is not None and region.get("PersonDisplayName"):
                regions.append({"name": str(region["PersonDisplayName"]), "box": box, "kind": "mp"})
        found[Path(entry["SourceFile"])] = regions
    return found


def overlap(a, b) -> float:
    """Intersection over union of two (left, top, width, height) boxes."""
    width = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    union = a[2] * a[3] + b[2] * b[3] - width * height
    return width * height / union if union > 0 else 0.0


def _mwg_region(name: str, box) -> dict:
    left, top, w, h = (round(float(v), 6) for v in box)
    return {
        "Name": name,
        "Type": "Face",
        "Area": {"X": round(left + w / 2, 6), "Y": round(top + h / 2, 6), "W": w, "H": h, "Unit": "normalized"},
    }


def _same_region(a: dict, b: dict) -> bool:
    """Whether two MWG regions are the same (name and area, to the 6 decimals facepipe writes)."""
    area_a, area_b = a.get("Area") or {}, b.get("Area") or {}
    return str(a.get("Name")) == str(b.get("Name")) and all(
        abs(float(area_a.get(k, -9)) - float(area_b.get(k, 9))) < 1e-5 for k in ("X", "Y", "W", "H")
    )


def named_faces(faces: pd.DataFrame, crops_dir: Path) -> pd.DataFrame:
    """The named ``faces`` (crop ``name``, ``person``) with their photo (``source``), box normalised to the
    photo (``box``) and the photo's size (``width``, ``height``), from the crops' detections.csv."""
    detections = read_detections(crops_dir / DETECTIONS_CSV)
    needed = {"x", "y", "w", "h", "source_width", "source_height"}
    if not needed <= set(detections.columns):
        raise FacepipeError(
            f"{crops_dir / DETECTIONS_CSV} has no face boxes and photo sizes (an older detect): run detect again"
        )
    named = faces[faces["person"].fillna("").astype(str).str.len() > 0]
    table = named[["name", "person"]].merge(detections, left_on="name", right_on="crop")
    table["box"] = [
        (x / sw, y / sh, w / sw, h / sh)
        for x, y, w, h, sw, sh in zip(
            table["x"], table["y"], table["w"], table["h"], table["source_width"], table["source_height"]
        )
    ]
    return table.rename(columns={"source_width": "width", "source_height": "height"})


def write_face_tags(
    faces: pd.DataFrame, crops_dir: Path, record_folder: Path, naming: str = XMP_NAMINGS[0]
) -> XmpSummary:
    """Write (or merge into) the sidecar of each photo with a named face among ``faces`` (a clustering's
    faces with their group's ``person``), recording what was written in ``record_folder``."""
    table = named_faces(faces, crops_dir)
    record_path = record_folder / XMP_RECORD_JSON
    record = read_json(record_path).get("sidecars", {}) if record_path.is_file() else {}
    sidecars = {photo: sidecar_of(photo, naming) for photo in table["source"].unique()}
    existing = read_regions(list(sidecars.values()))
    entries, created, kept = [], 0, 0
    for photo, members in table.groupby("source", sort=True):
        sidecar = sidecars[photo]
        ours = record.get(str(sidecar), {}).get("regions", [])
        theirs = [
            r
            for r in existing.get(sidecar, [])
            if r["kind"] == "mwg" and not any(_same_region(r["region"], mine) for mine in ours)
        ]
        regions = []
        for name, box in zip(members["person"], members["box"]):
            if any(overlap(box, r["box"]) >= SAME_FACE_OVERLAP for r in theirs):
                kept += 1
            else:
                regions.append(_mwg_region(str(name), box))
        if not sidecar.exists():
            write_text_atomic(sidecar, EMPTY_PACKET)
            created += 1
        entries.append(
            {
                "SourceFile": str(sidecar),
                "RegionInfo": {
                    "AppliedToDimensions": {
                        "W": int(members["width"].iloc[0]),
                        "H": int(members["height"].iloc[0]),
                        "Unit": "pixel",
                    },
                    "RegionList": [r["region"] for r in theirs] + regions,
                },
            }
        )
        record[str(sidecar)] = {"photo": str(photo), "regions": regions}
    if entries:
        with tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8", delete=False) as data:
            json.dump(entries, data, ensure_ascii=False)
        try:
            _exiftool(
                [
                    "-q",
                    "-struct",
                    f"-json={data.name}",
                    "-overwrite_original",
                    *(entry["SourceFile"] for entry in entries),
                ]
            )
        finally:
            os.unlink(data.name)
    write_json_atomic(record_path, {"format": "facepipe-xmp/1", "naming": naming, "sidecars": record})
    return XmpSummary(
        photos=len(entries),
        regions=sum(len(record[e["SourceFile"]]["regions"]) for e in entries),
        created=created,
        merged=len(entries) - created,
        kept=kept,
    )


def face_tags(faces: pd.DataFrame, crops_dir: Path) -> pd.DataFrame:
    """Each face of ``faces`` (crop ``name``) that a named region of its photo, or of the photo's sidecar (either
    naming), covers: ``name`` and ``identity`` (the region's name), as a label manifest (``--labels``)."""
    detections = read_detections(crops_dir / DETECTIONS_CSV)
    table = faces[["name"]].merge(detections, left_on="name", right_on="crop")
    photos = sorted(set(table["source"]))
    files = [Path(p) for p in photos] + [sidecar_of(p, n) for p in photos for n in XMP_NAMINGS]
    regions = read_regions(files)
    rows = []
    for row in table.itertuples(index=False):
        box = (
            row.x / row.source_width,
            row.y / row.source_height,
            row.w / row.source_width,
            row.h / row.source_height,
        )
        near = [
            r
            for f in [Path(row.source)] + [sidecar_of(row.source, n) for n in XMP_NAMINGS]
            for r in regions.get(f, [])
            if r["name"]
        ]
        best = max(near, key=lambda r: overlap(box, r["box"]), default=None)
        if best is not None and overlap(box, best["box"]) >= LABEL_OVERLAP:
            rows.append({"name": row.name, "identity": best["name"]})
    return pd.DataFrame(rows, columns=FACE_TAG_COLUMNS)


def read_face_tags(
    clusters: str | os.PathLike, out: str | os.PathLike | None = None, to_people: bool = False
) -> tuple[pd.DataFrame, dict[int, str]]:
    """The faces of the clustering ``clusters`` that its photos' tags name (``face_tags``), written to ``out``
    (a label manifest: name, identity) when given; and each group's name by most of its tagged faces, added to
    the folder's people file with ``to_people`` (a group it names already keeps that name)."""
    from facepipe.formats import PEOPLE_TOML, own_csv_output, write_csv_atomic
    from facepipe.people import People, people_file_of, read_people, write_people
    from facepipe.suggest import read_clustering

    clustering = read_clustering(clusters)
    if clustering.crops_dir is None:
        raise FacepipeError(f"{clustering.results_path} names no crops folder, so the faces' photos are unknown")
    tags = face_tags(clustering.results, clustering.crops_dir)
    if out is not None:
        write_csv_atomic(tags, own_csv_output(out, FACE_TAG_COLUMNS, "face tags"))
    grouped = tags.merge(clustering.results[["name", "cluster"]], on="name")
    grouped = grouped[grouped["cluster"] >= 0]
    names = {int(g): rows["identity"].mode().iloc[0] for g, rows in grouped.groupby("cluster")}
    if to_people and names:
        people_file = people_file_of(clustering.folder, None) or clustering.folder / PEOPLE_TOML
        people = read_people(people_file) if people_file.is_file() else People()
        people.names = {**names, **people.names}
        write_people(people_file, people)
    return tags, names
