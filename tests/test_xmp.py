"""Face tags for other tools (issue 27): export --xmp writes MWG regions into XMP sidecars, merging with what
is there; names in photos' MWG or Microsoft regions read back as labels. Every file is read back with exiftool."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from facepipe.cli import main
from facepipe.cluster import cluster
from facepipe.export import export
from facepipe.formats import CLUSTER_RESULTS_CSV, DETECTIONS_CSV
from facepipe.people import PEOPLE_TOML, People, read_people, write_people
from facepipe.xmp import read_face_tags, sidecar_of

SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"


def exiftool_json(*arguments) -> list[dict]:
    if not shutil.which("exiftool"):
        message = "needs exiftool (apt-get install libimage-exiftool-perl)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run(
        ["exiftool", "-struct", "-j", "-n", *map(str, arguments)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


@pytest.fixture
def named(tmp_path):
    """The bundled sample photos, copied (their sidecars are the test's), clustered, each group named after the
    person most of its photos' folders name; returns the work folder and the names."""
    from facepipe.detect import DetectorParams, detect
    from facepipe.embed import embed

    shutil.copytree(SAMPLES / "images", tmp_path / "photos")
    detect(
        [tmp_path / "photos"], tmp_path / "temp", DetectorParams(largest_only=True), workers=2, show_progress=False
    )
    embed(tmp_path / "temp", tmp_path / "image_features.csv", model="dlib-resnet128", workers=2, show_progress=False)
    cluster(tmp_path / "image_features.csv", tmp_path, samples_dir=None, show_progress=False)
    faces = faces_of(tmp_path)
    grouped = faces[faces["cluster"] >= 0]
    names = {int(g): rows["person"].mode().iloc[0].replace("_", " ") for g, rows in grouped.groupby("cluster")}
    write_people(tmp_path / PEOPLE_TOML, People(names=names))
    cluster(tmp_path / "image_features.csv", tmp_path, samples_dir=None, show_progress=False)
    return tmp_path, names


def faces_of(work: Path) -> pd.DataFrame:
    results = pd.read_csv(work / CLUSTER_RESULTS_CSV)
    detections = pd.read_csv(work / "temp" / DETECTIONS_CSV)
    faces = results.merge(detections, left_on="name", right_on="crop")
    return faces.assign(person=faces["source"].map(lambda s: Path(s).parent.name))


def regions_of(sidecar: Path) -> list[dict]:
    return (exiftool_json(sidecar)[0].get("RegionInfo") or {}).get("RegionList", [])


def test_export_xmp_writes_a_region_per_named_face_that_exiftool_reads_back(named, tmp_path):
    work, names = named
    faces = faces_of(work)
    kept = faces[faces["cluster"] >= 0].iloc[0]["source"]
    mine = sidecar_of(kept)
    subprocess.run(
        [
            "exiftool",
            "-q",
            "-o",
            str(mine),
            "-XMP-dc:Subject=holiday",
            "-XMP-dc:Title=Beach",
            "-XMP-mwg-rs:RegionInfo={RegionList=[{Name=My dog,Type=Pet,Area={X=0.1,Y=0.1,W=0.1,H=0.1,"
            "Unit=normalized}}]}",
            str(kept),
        ],
        check=True,
        capture_output=True,
    )
    summary = export(work, tmp_path / "export", xmp="photo.jpg.xmp", show_progress=False)
    assert summary.xmp is not None and summary.xmp.merged >= 1 and "xmp:" in summary.line()
    for row in faces.itertuples(index=False):
        if row.cluster < 0:
            assert not sidecar_of(row.source).exists() or row.source == kept
            continue
        regions = [r for r in regions_of(sidecar_of(row.source)) if r.get("Type") == "Face"]
        assert len(regions) == 1, (row.source, regions)
        area = regions[0]["Area"]
        assert regions[0]["Name"] == names[row.cluster] and area["Unit"] == "normalized"
        expected = (
            (row.x + row.w / 2) / row.source_width,
            (row.y + row.h / 2) / row.source_height,
            row.w / row.source_width,
            row.h / row.source_height,
        )
        assert [area[k] for k in "XYWH"] == pytest.approx(expected, abs=1e-5)
        dimensions = exiftool_json(sidecar_of(row.source))[0]["RegionInfo"]["AppliedToDimensions"]
        assert (dimensions["W"], dimensions["H"]) == (row.source_width, row.source_height)
    theirs = exiftool_json(mine)[0]
    assert theirs["Subject"] == ["holiday"] and theirs["Title"] == "Beach"
    assert "My dog" in [r["Name"] for r in theirs["RegionInfo"]["RegionList"]]

    # a rename and a rerun: facepipe's regions are replaced, the user's stay; beside-naming photo.xmp works too
    group = next(iter(names))
    people = read_people(work / PEOPLE_TOML)
    people.names[group] = "Someone Else"
    write_people(work / PEOPLE_TOML, people)
    cluster(work / "image_features.csv", work, samples_dir=None, show_progress=False)
    result = CliRunner().invoke(main, ["export", str(work), "-o", str(tmp_path / "export"), "--xmp", "-q"])
    assert result.exit_code == 0, result.output
    renamed = faces[faces["cluster"] == group].iloc[0]["source"]
    assert [r["Name"] for r in regions_of(sidecar_of(renamed)) if r.get("Type") == "Face"] == ["Someone Else"]
    assert "My dog" in [r["Name"] for r in regions_of(mine)] and exiftool_json(mine)[0]["Subject"] == ["holiday"]
    result = CliRunner().invoke(
        main, ["export", str(work), "-o", str(tmp_path / "lightroom"), "--xmp-name", "photo.xmp", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert Path(renamed).with_suffix(".xmp").is_file()


def test_names_in_mwg_and_microsoft_regions_read_back_as_labels(named, tmp_path):
    work, names = named
    export(work, tmp_path / "export", xmp="photo.jpg.xmp", show_progress=False)
    faces = faces_of(work)
    tags, group_names = read_face_tags(work, tmp_path / "tags.csv")
    by_face = tags.set_index("name")["identity"]
    grouped = faces[faces["cluster"] >= 0]
    assert by_face.reindex(grouped["name"]).tolist() == [names[g] for g in grouped["cluster"]]  # the round trip
    assert group_names == names
    assert list(pd.read_csv(tmp_path / "tags.csv").columns) == ["name", "identity"]

    # a Microsoft (MP) region written into a photo, as Windows Photo Gallery tags people
    unknown = faces[faces["cluster"] < 0]
    row = (unknown if len(unknown) else faces).iloc[0]
    rectangle = (
        f"{row.x / row.source_width:.4f}, {row.y / row.source_height:.4f}, {row.w / row.source_width:.4f}, "
        f"{row.h / row.source_height:.4f}"
    )
    sidecar_of(row.source).unlink(missing_ok=True)
    subprocess.run(
        [
            "exiftool",
            "-q",
            "-overwrite_original",
            "-XMP-MP:RegionInfoMP={Regions=[{PersonDisplayName="
            f"Windows Name,Rectangle={rectangle.replace(',', '|,')}}}]}}",
            row.source,
        ],
        check=True,
        capture_output=True,
    )
    assert exiftool_json(row.source)[0]["RegionInfoMP"]["Regions"][0]["PersonDisplayName"] == "Windows Name"
    tags, _ = read_face_tags(work)
    assert tags.set_index("name")["identity"][row["name"]] == "Windows Name"
    (work / PEOPLE_TOML).unlink()
    result = CliRunner().invoke(main, ["read-tags", str(work), "-o", str(tmp_path / "tags.csv"), "--people"])
    assert result.exit_code == 0, result.output
    assert read_people(work / PEOPLE_TOML).names == names  # the people file, from the tags alone
