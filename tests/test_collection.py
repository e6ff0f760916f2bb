"""Real collections: each detector, the combined mode, photos without a face, strangers kept out of people's
groups, one face per photo in a group, and output folders of an older version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from facepipe.cli import main
from facepipe.cluster import cluster
from facepipe.common import FacepipeError
from facepipe.detect import DetectorParams, detect
from facepipe.detectors import CNN, COMBINED, HAAR, HOG, box_iou, detection_rules
from facepipe.formats import (
    CLUSTER_RESULTS_CSV,
    DETECT_PARAMS_JSON,
    DETECTION_COLUMNS,
    DETECTIONS_CSV,
    SOURCES_CSV,
    UNKNOWN_GRID_JPG,
    Embeddings,
    read_json,
    sidecar_path,
    write_embeddings,
    write_json_atomic,
)
from facepipe.settings import ClusterSettings

NO_FACE = [
    "dlib_dogs.jpg",
    "insightface_mask_black.jpg",
    "insightface_mask_blue.jpg",
    "insightface_mask_green.jpg",
    "insightface_mask_white.jpg",
]


def faces_per_photo(folder: Path) -> dict[str, int]:
    sources = pd.read_csv(folder / SOURCES_CSV)
    return dict(zip(sources["source"].map(lambda p: Path(p).name), sources["faces"]))


@pytest.mark.parametrize("detector", [HAAR, HOG, COMBINED])
def test_each_detector_records_itself_and_finds_no_face_where_there_is_none(detector, data_dir, tmp_path):
    detect(
        [data_dir("group_photos") / "images"],
        tmp_path,
        DetectorParams(detector=detector),
        workers=2,
        show_progress=False,
    )
    detections = pd.read_csv(tmp_path / DETECTIONS_CSV)
    faces = faces_per_photo(tmp_path)
    print(f"{detector}: {len(detections)} faces in {sum(v > 0 for v in faces.values())} of {len(faces)} photos")
    assert list(detections.columns) == DETECTION_COLUMNS
    assert all(faces[photo] == 0 for photo in NO_FACE)
    assert faces["dlib_bald_guys.jpg"] >= 5
    used = {name for names in detections["detector"] for name in names.split("+")}  # "haar+dlib-hog": both found it
    assert used <= ({HAAR, HOG, CNN} if detector == COMBINED else {detector}) and used
    assert (detections["score"] > 0).all()
    if detector == HAAR:
        assert (detections["score"] >= 45).all()  # Haar's score: the neighbours that confirmed the face


def test_dlib_cnn_finds_a_face_and_none_on_the_dogs(data_dir, tmp_path):
    photos = data_dir("group_photos") / "images"
    detect(
        [photos / "face_recognition_obama.jpg", photos / "dlib_dogs.jpg"],
        tmp_path,
        DetectorParams(detector=CNN, max_side=400, dlib_upsample=0),
        show_progress=False,
    )
    faces = faces_per_photo(tmp_path)
    assert faces == {"face_recognition_obama.jpg": 1, "dlib_dogs.jpg": 0}
    assert pd.read_csv(tmp_path / DETECTIONS_CSV)["detector"].tolist() == [CNN]


def test_combined_mode_finds_every_face_haar_or_hog_finds_alone_on_unaligned_photos(data_dir, tmp_path):
    """celeba_wild: full-size photos, faces anywhere; Haar at minNeighbors 45 misses most of them, and a face
    Haar finds must not keep HOG from finding the others of the photo."""
    photos = sorted((data_dir("celeba_wild") / "images").glob("*.jpg"))[::10]
    rates, boxes = {}, {}
    for detector in (HAAR, HOG, COMBINED):
        detect(photos, tmp_path / detector, DetectorParams(detector=detector), workers=2, show_progress=False)
        rates[detector] = np.mean([n > 0 for n in faces_per_photo(tmp_path / detector).values()])
        detections = pd.read_csv(tmp_path / detector / DETECTIONS_CSV)
        boxes[detector] = {
            source: rows[["x", "y", "w", "h"]].to_numpy() for source, rows in detections.groupby("source")
        }
    print(f"celeba_wild, {len(photos)} photos with a face found: {rates}")
    assert rates[COMBINED] >= 0.9 > rates[HAAR]
    for detector in (HAAR, HOG):
        for source, alone in boxes[detector].items():
            for box in alone:
                assert any(box_iou(box, found) >= 0.3 for found in boxes[COMBINED].get(source, [])), (
                    detector,
                    source,
                )


def test_a_detect_folder_of_an_older_version_is_refused_with_the_reason(data_dir, tmp_path):
    photos = [data_dir("group_photos") / "images" / "face_recognition_obama.jpg"]
    detect(photos, tmp_path, show_progress=False)
    params = read_json(tmp_path / DETECT_PARAMS_JSON)
    for key in ("detector", "max_side", "dlib_upsample", "dlib_threshold"):
        del params["params"][key]
    write_json_atomic(tmp_path / DETECT_PARAMS_JSON, params)
    with pytest.raises(FacepipeError, match="other parameters.*detector.*--force"):
        detect(photos, tmp_path, show_progress=False)
    # its detections.csv, without the detector and score columns, is still read by embed
    old = pd.read_csv(tmp_path / DETECTIONS_CSV).drop(columns=["detector", "score"])
    old.to_csv(tmp_path / DETECTIONS_CSV, index=False)
    from facepipe.embed import embed

    summary = embed(tmp_path, tmp_path / "features.csv", model="dlib-resnet128", show_progress=False)
    assert summary.embedded == 1


def test_a_detect_folder_made_under_other_detection_rules_is_redone_not_kept(data_dir, tmp_path):
    """The same settings under an older facepipe's detectors (a detect.json without this one's rules, or with
    other rules) are refused with the reason; --force redoes them and records the rules."""
    photos = [data_dir("group_photos") / "images" / "face_recognition_obama.jpg"]
    detect(photos, tmp_path, show_progress=False)
    recorded = read_json(tmp_path / DETECT_PARAMS_JSON)
    assert recorded["rules"] == detection_rules(recorded["params"]["detector"])
    for older in ({k: v for k, v in recorded.items() if k != "rules"}, {**recorded, "rules": {"hog_max_side": 640}}):
        write_json_atomic(tmp_path / DETECT_PARAMS_JSON, {**older, "facepipe_version": "0.9"})
        with pytest.raises(FacepipeError, match="other detection rules.*facepipe 0.9.*--force"):
            detect(photos, tmp_path, show_progress=False)
    assert detect(photos, tmp_path, force=True, show_progress=False).processed_now == 1
    assert read_json(tmp_path / DETECT_PARAMS_JSON)["rules"] == recorded["rules"]
    assert detect(photos, tmp_path, show_progress=False).skipped == 1


@pytest.mark.fast
def test_two_faces_of_one_photo_never_share_a_group(tmp_path):
    """Two near-identical faces from one photo (a reflection, a poster): the one nearer the centroid stays."""
    rng = np.random.default_rng(0)
    centre = rng.standard_normal(16)
    vectors = centre + 0.01 * rng.standard_normal((6, 16))
    names = [f"crop_{i}.jpg" for i in range(6)]
    crops = tmp_path / "crops"
    crops.mkdir()
    sources = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "e.jpg"]  # the last two faces share a photo
    pd.DataFrame({"crop": names, "source": sources}).to_csv(crops / DETECTIONS_CSV, index=False)
    write_embeddings(
        tmp_path / "emb.csv", Embeddings(names, vectors.astype(np.float32), {"model": "toy", "crops_dir": str(crops)})
    )
    summary = cluster(
        tmp_path / "emb.csv",
        tmp_path / "out",
        ClusterSettings(method="graph", threshold=0.5),
        samples_dir=None,
        show_progress=False,
    )
    results = pd.read_csv(tmp_path / "out" / CLUSTER_RESULTS_CSV)
    assert results["cluster"].tolist()[:4] == [0] * 4
    assert sorted(results["cluster"].tolist()[4:]) == [-1, 0]
    kept = 4 + results["cluster"].tolist()[4:].index(0)
    assert results["distance"][kept] <= results["distance"][9 - kept]
    assert "1 second face(s) of a photo" in summary.k_rule and summary.unknown == 1


def test_strangers_go_to_unknown_and_people_keep_their_groups(data_dir, tmp_path):
    """dlib_johns (5 people) with 150 one-off LFW people: the default rule of dlib-resnet128 embeddings."""
    from facepipe.embed import embed

    inputs = tmp_path / "inputs.txt"
    inputs.write_text(f"{data_dir('dlib_johns') / 'images'}\n{data_dir('lfw_singletons') / 'images'}\n")
    embed([inputs], tmp_path / "features.csv", model="dlib-resnet128", workers=2, show_progress=False)
    manifest = tmp_path / "manifest.csv"
    pd.concat(
        [
            pd.read_csv(data_dir("dlib_johns") / "manifest.csv").assign(
                relpath=lambda f: "dlib_johns/" + f["relpath"]
            ),
            pd.read_csv(data_dir("lfw_singletons") / "manifest.csv").assign(
                relpath=lambda f: "lfw_singletons/" + f["relpath"]
            ),
        ]
    ).to_csv(manifest, index=False)
    result = CliRunner().invoke(
        main,
        [
            "cluster",
            str(tmp_path / "features.csv"),
            "-o",
            str(tmp_path / "out"),
            "--samples-dir",
            str(tmp_path / "samples"),
            "--labels",
            str(manifest),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    print(result.output)
    results = pd.read_csv(tmp_path / "out" / CLUSTER_RESULTS_CSV)
    johns = results["name"].str.contains("dlib_johns")
    assert results.loc[johns, "cluster"].nunique() == 5 and (results.loc[johns, "cluster"] >= 0).all()
    johns_groups = set(results.loc[johns, "cluster"])
    strangers = results.loc[~johns, "cluster"]
    print(
        f"one-off people: {strangers.isin(johns_groups).mean():.1%} in a John's group, "
        f"{(strangers >= 0).mean():.1%} in any group"
    )
    assert not strangers.isin(johns_groups).any()
    assert (strangers >= 0).mean() <= 0.05  # two strangers a little alike may still pair up
    meta = read_json(sidecar_path(tmp_path / "out" / CLUSTER_RESULTS_CSV))
    assert meta["method"] == "graph" and meta["same_person_distance"] == pytest.approx(0.37)
    assert meta["unknown"] == int((results["cluster"] == -1).sum()) >= 0.95 * len(strangers)
    assert (tmp_path / "samples" / UNKNOWN_GRID_JPG).is_file()


@pytest.mark.fast
def test_graph_needs_a_rule_the_embedder_does_not_have(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
    write_embeddings(tmp_path / "emb.csv", Embeddings([f"f{i}" for i in range(10)], vectors, {"model": "toy"}))
    with pytest.raises(FacepipeError, match="no same-person distance is known for toy"):
        cluster(
            tmp_path / "emb.csv",
            tmp_path / "out",
            ClusterSettings(method="graph"),
            samples_dir=None,
            show_progress=False,
        )
    assert not (tmp_path / "out").exists()
