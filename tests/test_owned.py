"""Issue 28, class 1: facepipe removes or replaces only files it recorded writing, inside its own output folder
(``facepipe.owned``; export's record ``manifest.csv.json``). Each test puts a user's files where an earlier
version deleted or overwrote them and checks that their bytes are unchanged and nothing outside was written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from facepipe.cli import main
from facepipe.cluster import cluster
from facepipe.common import FacepipeError, file_sha256, temporary_affixes
from facepipe.detect import DetectorParams, crop_name, detect
from facepipe.export import export
from facepipe.formats import (
    CLUSTER_COLUMNS,
    CLUSTER_RESULTS_CSV,
    DETECTION_COLUMNS,
    DETECTIONS_CSV,
    EXPORT_MANIFEST_CSV,
    LOCK_FILE,
    SOURCE_COLUMNS,
    SOURCES_CSV,
    Embeddings,
    read_csv,
    sidecar_path,
    write_csv_atomic,
    write_embeddings,
    write_json_atomic,
)
from facepipe.images import save_image_atomic
from facepipe.settings import ClusterSettings

pytestmark = pytest.mark.fast


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder`` (the lock file aside): a file's bytes, a link's target."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.name == LOCK_FILE:
            continue
        relative = str(path.relative_to(folder))
        found[relative] = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else "/"
    return found


def clustering(root: Path, groups: dict[str, int], name: str = "clusters") -> Path:
    """A clustering of one face per photo (``groups``: photo name -> group) with its crops folder; returns
    the clustering's folder. Export reads no pixels: the photos are small files of their own bytes."""
    photos, crops, clusters = root / "photos", root / "crops", root / name
    for folder in (photos, crops, clusters):
        folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in groups:
        photo = photos / name
        if not photo.exists():
            photo.write_bytes(f"the photo {name}".encode())
        crop = crop_name(photo, 0, "jpg")
        (crops / crop).write_bytes(f"the crop of {name}".encode())
        rows.append({"crop": crop, "source": str(photo)})
    write_csv_atomic(pd.DataFrame(rows), crops / DETECTIONS_CSV)
    results = pd.DataFrame(
        {"name": [r["crop"] for r in rows], "cluster": list(groups.values()), "distance": 0.1},
        columns=CLUSTER_COLUMNS,
    )
    write_csv_atomic(results, clusters / CLUSTER_RESULTS_CSV)
    write_json_atomic(sidecar_path(clusters / CLUSTER_RESULTS_CSV), {"crops_dir": str(crops)})
    return clusters


GROUPS = {"a.jpg": 0, "b.jpg": 0, "c.jpg": 1, "d.jpg": 1}
REGROUPED = {"a.jpg": 1, "b.jpg": 0, "c.jpg": 0, "d.jpg": 1}


def test_export_refuses_a_folder_of_the_users_own_files_with_a_manifest(tmp_path):
    clusters = clustering(tmp_path, GROUPS)
    target = tmp_path / "target"
    (target / "photos").mkdir(parents=True)
    (target / "thesis.docx").write_bytes(b"four years of work")
    (target / "photos" / "a.jpg").write_bytes(b"a photo of the user's")
    pd.DataFrame({"file": ["thesis.docx", "photos/a.jpg"]}).to_csv(target / EXPORT_MANIFEST_CSV, index=False)
    before, outside = snapshot(target), snapshot(tmp_path / "photos")
    with pytest.raises(FacepipeError, match="not made by an earlier export"):
        export(clusters, target, show_progress=False)
    result = CliRunner().invoke(main, ["export", str(clusters), "-o", str(target), "-q"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "not made by an earlier export (e.g. manifest.csv" in result.output
    assert snapshot(target) == before and snapshot(tmp_path / "photos") == outside


def test_a_manifest_line_never_names_what_export_removes(tmp_path):
    clusters = clustering(tmp_path, GROUPS)
    target = tmp_path / "people"
    export(clusters, target, mode="copy", show_progress=False)
    (target / "notes.txt").write_text("the user's notes")
    (target / "group_0" / "notes.txt").write_text("more notes")
    with open(target / EXPORT_MANIFEST_CSV, "a") as manifest:  # the manifest names the user's files
        manifest.write(",,0,,0.1,notes.txt\n,,0,,0.1,group_0/notes.txt\n,,0,,0.1,../victim.txt\n")
    (tmp_path / "victim.txt").write_text("outside")
    regrouped = clustering(tmp_path, REGROUPED, "regrouped")
    with pytest.raises(FacepipeError, match="changed since export wrote it"):
        export(regrouped, target, mode="copy", show_progress=False)
    assert (target / "notes.txt").read_text() == "the user's notes"
    assert (target / "group_0" / "notes.txt").read_text() == "more notes"
    (target / EXPORT_MANIFEST_CSV).unlink()  # moved away: export writes a new one, and the notes stay
    summary = export(regrouped, target, mode="copy", show_progress=False)
    assert summary.removed == 2 and summary.made == 2
    assert (target / "notes.txt").read_text() == "the user's notes"
    assert (target / "group_0" / "notes.txt").read_text() == "more notes"
    assert (tmp_path / "victim.txt").read_text() == "outside"
    assert set(read_csv(target / EXPORT_MANIFEST_CSV)["file"]) == {
        "group_0/b.jpg",
        "group_0/c.jpg",
        "group_1/a.jpg",
        "group_1/d.jpg",
    }


def test_a_copy_the_user_edited_is_neither_overwritten_nor_removed(tmp_path):
    clusters = clustering(tmp_path, GROUPS)
    target = tmp_path / "people"
    export(clusters, target, mode="copy", show_progress=False)
    edited, kept = target / "group_0" / "a.jpg", target / "group_1" / "c.jpg"
    edited.write_bytes(b"retouched by the user")
    kept.write_bytes(b"also retouched")
    again = export(clusters, target, mode="copy", show_progress=False)
    assert edited.read_bytes() == b"retouched by the user" and again.made == 0
    assert "left alone" in again.line() and edited in again.left_alone
    regrouped = export(clustering(tmp_path, REGROUPED, "regrouped"), target, mode="copy", show_progress=False)
    assert edited.read_bytes() == b"retouched by the user"  # no longer belongs there: still not removed
    assert kept.read_bytes() == b"also retouched"  # belongs elsewhere now, is not rewritten or removed
    assert set(regrouped.left_alone) == {edited, kept}
    assert (target / "group_1" / "a.jpg").read_bytes() == b"the photo a.jpg"


@pytest.mark.parametrize("mode", ["hardlink", "symlink"])
def test_what_the_user_put_in_place_of_an_exported_link_stays(tmp_path, mode):
    clusters = clustering(tmp_path, GROUPS)
    target, theirs = tmp_path / "people", tmp_path / "theirs.jpg"
    export(clusters, target, mode=mode, show_progress=False)
    replaced = target / "group_0" / "a.jpg"
    replaced.unlink()
    theirs.write_bytes(b"the user's own photo")
    if mode == "symlink":
        replaced.symlink_to(theirs)
    else:
        shutil.copy(theirs, replaced)
    summary = export(clustering(tmp_path, REGROUPED, "regrouped"), target, mode=mode, show_progress=False)
    assert summary.left_alone == [replaced] and replaced.read_bytes() == b"the user's own photo"
    assert theirs.read_bytes() == b"the user's own photo"
    assert os.path.samefile(target / "group_1" / "a.jpg", tmp_path / "photos" / "a.jpg")


def test_a_users_own_copy_is_never_adopted_nor_removed_after_a_regroup(tmp_path):
    clusters = clustering(tmp_path, GROUPS)
    target = tmp_path / "people"
    (target / "group_0").mkdir(parents=True)
    own = target / "group_0" / "a.jpg"
    shutil.copy2(tmp_path / "photos" / "a.jpg", own)  # the same size and time as export's copy would have
    with pytest.raises(FacepipeError, match="not made by an earlier export"):
        export(clusters, target, mode="copy", show_progress=False)
    own.unlink()
    export(clusters, target, mode="copy", show_progress=False)
    theirs = target / "group_1" / "a.jpg"  # where a.jpg goes after the regroup
    shutil.copy2(tmp_path / "photos" / "a.jpg", theirs)
    with pytest.raises(FacepipeError, match="was not made by an earlier export"):
        export(clustering(tmp_path, REGROUPED, "regrouped"), target, mode="copy", show_progress=False)
    assert theirs.read_bytes() == b"the photo a.jpg"
    theirs.rename(tmp_path / "moved away.jpg")
    export(clustering(tmp_path, REGROUPED, "regrouped"), target, mode="copy", show_progress=False)
    assert (tmp_path / "moved away.jpg").read_bytes() == b"the photo a.jpg"
    export(clusters, target, mode="copy", show_progress=False)  # back: export's own copy of a.jpg is removed
    assert not theirs.exists()


def test_export_never_writes_through_a_symlinked_group_folder(tmp_path):
    clusters = clustering(tmp_path, GROUPS)
    target, elsewhere = tmp_path / "people", tmp_path / "elsewhere"
    export(clusters, target, mode="copy", show_progress=False)
    shutil.move(target / "group_1", elsewhere)
    (target / "group_1").symlink_to(elsewhere)
    (elsewhere / "precious.txt").write_text("not facepipe's")
    before = snapshot(elsewhere)
    with pytest.raises(FacepipeError, match="symbolic link"):
        export(clustering(tmp_path, REGROUPED, "regrouped"), target, mode="copy", show_progress=False)
    assert snapshot(elsewhere) == before


def test_detect_removes_only_its_own_crops_of_photos_no_longer_among_the_inputs(tmp_path):
    """Crop paths in detections.csv of photos no longer among the inputs: ``../victim.txt`` and an absolute
    path are never followed; the crop detect named is removed; a user's ``.draft.tmp.txt`` stays."""
    photos, out = tmp_path / "photos", tmp_path / "crops"
    photos.mkdir()
    save_image_atomic(photos / "blank.png", np.full((80, 80, 3), 128, dtype=np.uint8))
    params = DetectorParams(detector="haar", min_neighbors=5)
    detect([photos], out, params, workers=1, show_progress=False)
    victims = [tmp_path / "victim.txt", tmp_path / "other" / "victim2.txt"]
    for victim in victims:
        victim.parent.mkdir(exist_ok=True)
        victim.write_text("the user's")
    gone = [Path("/elsewhere/gone_1.jpg"), Path("/elsewhere/gone_2.jpg"), Path("/elsewhere/gone_3.jpg")]
    own_crop = crop_name(gone[2], 0, "jpg")
    save_image_atomic(out / own_crop, np.zeros((8, 8, 3), dtype=np.uint8))
    digests = {crop: file_sha256(crop) if crop.is_file() else "0" * 64 for crop in (out / own_crop, *victims)}
    detections = pd.DataFrame(
        [
            dict(
                dict.fromkeys(DETECTION_COLUMNS, 1),
                crop=crop,
                source=str(source),
                face_index=0,
                detector="haar",
                sha256=digests[path],
            )
            for crop, source, path in [
                ("../victim.txt", gone[0], victims[0]),
                (str(victims[1]), gone[1], victims[1]),
                (own_crop, gone[2], out / own_crop),
            ]
        ]
    )
    write_csv_atomic(detections, out / DETECTIONS_CSV)
    sources = read_csv(out / SOURCES_CSV)
    sources = pd.concat(
        [sources, pd.DataFrame({"source": [str(p) for p in gone], "status": "ok", "faces": 1, "reason": ""})]
    )[SOURCE_COLUMNS]
    write_csv_atomic(sources, out / SOURCES_CSV)
    (out / ".draft.tmp.txt").write_text("a draft")
    prefix, suffix = temporary_affixes(out / DETECTIONS_CSV)
    left_over = out / f"{prefix}k1lled_0{suffix}"  # what a kill during atomic_path leaves: removed by the rerun
    left_over.write_text("half a file")
    summary = detect([photos], out, params, workers=1, show_progress=False)
    assert [victim.read_text() for victim in victims] == ["the user's", "the user's"]
    assert summary.removed == 1 and not (out / own_crop).exists()
    assert (out / ".draft.tmp.txt").read_text() == "a draft" and not left_over.exists()
    assert set(read_csv(out / SOURCES_CSV)["source"]) == {str(photos / "blank.png")}


def synthetic_embeddings(tmp_path: Path, groups: int) -> Path:
    """Six well-separated faces per group, with a crops folder of blank crops."""
    crops = tmp_path / "crops"
    crops.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:groups] * 10
    vectors = np.concatenate([c + rng.normal(0, 0.1, (6, 8)).astype(np.float32) for c in centres])
    names = [f"face_{i}.jpg" for i in range(len(vectors))]
    for name in names:
        save_image_atomic(crops / name, np.full((16, 16, 3), 90, dtype=np.uint8))
    path = tmp_path / f"features_{groups}.csv"
    write_embeddings(path, Embeddings(names, vectors, {"model": "synthetic", "crops_dir": str(crops)}))
    return path


def test_cluster_removes_only_the_sample_grids_it_recorded(tmp_path):
    samples, out = tmp_path / "samples", tmp_path / "clusters"
    samples.mkdir()
    (samples / "cluster_wedding.jpg").write_bytes(b"the user's wedding")
    (samples / "cluster_7.jpg").write_bytes(b"a grid of the user's own")
    three = cluster(
        synthetic_embeddings(tmp_path, 3), out, ClusterSettings(k=3), samples_dir=samples, show_progress=False
    )
    assert three.k == 3 and (samples / "cluster_2.jpg").is_file()
    (samples / "cluster_1.jpg").write_bytes(b"edited by the user")
    two_groups = synthetic_embeddings(tmp_path, 2)
    with pytest.raises(FacepipeError, match="changed since facepipe wrote it"):
        cluster(two_groups, out, ClusterSettings(k=2), samples_dir=samples, show_progress=False)
    assert (samples / "cluster_1.jpg").read_bytes() == b"edited by the user" and (samples / "cluster_2.jpg").is_file()
    (samples / "cluster_1.jpg").rename(tmp_path / "kept.jpg")
    two = cluster(two_groups, out, ClusterSettings(k=2), samples_dir=samples, show_progress=False)
    assert two.k == 2 and not (samples / "cluster_2.jpg").exists()  # recorded by the run before: removed
    assert (samples / "cluster_wedding.jpg").read_bytes() == b"the user's wedding"
    assert (samples / "cluster_7.jpg").read_bytes() == b"a grid of the user's own"


@pytest.mark.fast
@pytest.mark.parametrize("table", [DETECTIONS_CSV, SOURCES_CSV])
def test_detect_refuses_a_folder_holding_the_users_own_detection_tables(tmp_path, table):
    """A table with no detect.json beside it is not facepipe's: detect writes detect.json before them."""
    mine = tmp_path / "my_crops"
    mine.mkdir()
    (mine / table).write_text("my,own,table\n")
    (tmp_path / "photo.jpg").write_bytes(b"not looked at")
    for extra in ([], ["--force"]):
        result = CliRunner().invoke(main, ["detect", str(tmp_path / "photo.jpg"), "-o", str(mine), "-q", *extra])
        assert result.exit_code == 1 and f"holds a {table} that facepipe did not write" in result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert (
        sorted(p.name for p in mine.iterdir() if p.name != LOCK_FILE) == [table]
        and (mine / table).read_text() == "my,own,table\n"
    )
