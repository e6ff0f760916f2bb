"""detect: real photos, awkward files, resume after a kill."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from facepipe.cli import EXIT_PARTIAL, main
from facepipe.common import FacepipeError
from facepipe.detect import DetectorParams, detect, square_crop
from facepipe.detectors import (
    CNN,
    COMBINED_CNN_SMALL_SIDE,
    HAAR,
    HOG,
    CombinedFinder,
    Face,
    box_iou,
    find_faces,
    merge_faces,
)
from facepipe.formats import DETECTIONS_CSV, ERRORS_CSV, SOURCES_CSV


def read_outputs(folder: Path):
    return (pd.read_csv(folder / DETECTIONS_CSV), pd.read_csv(folder / SOURCES_CSV), pd.read_csv(folder / ERRORS_CSV))


def annotated_recall(annotations: pd.DataFrame, detections: pd.DataFrame) -> float:
    """The share of annotated face boxes (faces.csv) that a detected face overlaps at IoU >= 0.3."""
    found = {
        name: rows[["x", "y", "w", "h"]].to_numpy()
        for name, rows in detections.groupby(detections["source"].map(lambda p: Path(p).name))
    }
    hits = [
        any(box_iou(box, face) >= 0.3 for face in found.get(Path(relpath).name, []))
        for relpath, *box in annotations[["relpath", "left", "top", "width", "height"]].itertuples(index=False)
    ]
    return float(np.mean(hits))


def test_group_photos_give_every_face_and_faceless_photos_none(data_dir, tmp_path):
    images = data_dir("group_photos") / "images"
    summary = detect([images], tmp_path, workers=2, show_progress=False)
    detections, sources, errors = read_outputs(tmp_path)
    faces = dict(zip(sources["source"].map(lambda p: Path(p).name), sources["faces"]))
    recall = annotated_recall(pd.read_csv(data_dir("group_photos") / "faces.csv"), detections)
    print(f"annotated faces of the group photos found: {recall:.3f}")
    assert recall >= 0.95  # dlib's boxes of all 43 faces of its 9 group photos, faces of 37 px among them
    assert faces["dlib_bald_guys.jpg"] >= 20
    assert faces["facenet_multiface.jpg"] >= 2
    assert faces["dlib_2008_007676.jpg"] >= 2
    for faceless in [
        "dlib_dogs.jpg",
        "insightface_mask_black.jpg",
        "insightface_mask_blue.jpg",
        "insightface_mask_green.jpg",
        "insightface_mask_white.jpg",
    ]:
        assert faces[faceless] == 0, faceless
    assert summary.faces == len(detections) == sources["faces"].sum()
    assert len(errors) == 0
    crops = sorted(p.name for p in tmp_path.glob("*.jpg"))
    assert crops == sorted(detections["crop"])
    with Image.open(tmp_path / crops[0]) as crop:
        assert crop.size == (224, 224)
    bald = detections[detections["source"].str.endswith("dlib_bald_guys.jpg")]
    assert sorted(bald["face_index"]) == list(range(len(bald)))  # every face, not just the last


def test_largest_only_keeps_one_face_per_photo(data_dir, tmp_path):
    photo = data_dir("group_photos") / "images" / "facenet_multiface.jpg"
    detect([photo], tmp_path, DetectorParams(largest_only=True), show_progress=False)
    detections = pd.read_csv(tmp_path / DETECTIONS_CSV)
    assert len(detections) == 1


def test_lfw_detection_rate_rises_as_min_neighbors_falls(data_dir, lfw_crops, tmp_path):
    """The rates printed here are the ones in docs/commands.md (detection rate at minNeighbors 45 and 5)."""
    summary_45 = detect(
        [data_dir("lfw") / "images"], tmp_path, DetectorParams(detector="haar"), workers=2, show_progress=False
    )
    sources_45 = pd.read_csv(tmp_path / SOURCES_CSV)
    sources_5 = pd.read_csv(lfw_crops / SOURCES_CSV)
    rate_45 = (sources_45["faces"] > 0).mean()
    rate_5 = (sources_5["faces"] > 0).mean()
    print(
        f"LFW detection rate: minNeighbors=45 {rate_45:.3f}, minNeighbors=5 {rate_5:.3f} of {len(sources_5)} photos"
    )
    assert summary_45.images == len(sources_5) == 1424
    assert rate_5 > 0.95
    assert 0.2 < rate_45 < rate_5


@pytest.mark.fast
def test_square_crop_is_black_beyond_the_photo():
    image = np.full((100, 80, 3), 7, dtype=np.uint8)
    crop = square_crop(image, (0, 0, 40, 50), margin=0.2, size=70)  # a 70 px square from (-15, -10)
    assert crop.shape == (70, 70, 3)
    assert (crop[:10] == 0).all() and (crop[:, :15] == 0).all()  # beyond the top and left edges: black, as dlib pads
    assert (crop[10:, 15:] == 7).all()


class Listed:
    """A finder that returns the given faces and counts its calls."""

    def __init__(self, *faces: Face):
        self.faces, self.calls = list(faces), 0

    def find(self, rgb):
        self.calls += 1
        return self.faces


@pytest.mark.fast
def test_overlapping_boxes_of_two_detectors_are_one_face_naming_both():
    merged = merge_faces(
        [
            [Face((10, 10, 50, 50), HAAR, 50.0), Face((200, 10, 50, 50), HAAR, 46.0)],
            [Face((14, 16, 40, 40), HOG, 1.2), Face((100, 100, 40, 40), HOG, 0.4)],
        ]
    )
    assert merged == [
        Face((10, 10, 50, 50), "haar+dlib-hog", 50.0),
        Face((200, 10, 50, 50), HAAR, 46.0),
        Face((100, 100, 40, 40), HOG, 0.4),
    ]


@pytest.mark.fast
@pytest.mark.parametrize(
    "haar_found, hog_found, side, cnn_runs",
    [
        (0, 0, 400, True),
        (1, 0, 400, True),
        (1, 1, 400, False),
        (0, 2, 400, False),
        (1, 1, COMBINED_CNN_SMALL_SIDE, True),
        (0, 2, 150, True),
    ],
)
def test_the_combined_mode_asks_the_cnn_where_hog_found_no_face_or_the_photo_is_small(
    haar_found, hog_found, side, cnn_runs
):
    haar = Listed(*[Face((2, 0, 44, 44), HAAR, 50.0)][:haar_found])
    hog = Listed(*[Face((60 * i, 0, 40, 40), HOG, 1.0) for i in range(hog_found)])
    cnn = Listed(Face((300, 300, 50, 50), CNN, 1.1), Face((0, 2, 40, 40), CNN, 1.0))
    combined = CombinedFinder(haar, hog, cnn).find(np.zeros((side - 40, side, 3), np.uint8))
    assert haar.calls == hog.calls == 1 and cnn.calls == int(cnn_runs)
    faces = {face.box: face.detector for face in combined}
    if cnn_runs and not hog_found:  # the CNN's face on Haar's is not a second one
        assert faces == ({(2, 0, 44, 44): "haar+dlib-cnn"} if haar_found else {(0, 2, 40, 40): CNN}) | {
            (300, 300, 50, 50): CNN
        }
    elif cnn_runs:  # a small photo: the CNN's face on HOG's is not a second one
        assert faces[(300, 300, 50, 50)] == CNN and len(faces) == max(haar_found, hog_found) + 1
    else:
        assert len(faces) == max(haar_found, hog_found) and HOG in "+".join(faces.values())


def test_a_face_at_the_photo_edge_embeds_as_dlib_embeds_it(data_dir):
    """face_recognition's partial-face photo: the face's crop runs past the photo's edge; padded black there, its
    embedding stays that of dlib's own descriptor of the face in the whole photo (repeated edge pixels: 0.32 away)."""
    import dlib

    from facepipe.detectors import HogFinder
    from facepipe.images import load_image_rgb
    from facepipe.models.dlib_resnet import LANDMARKS_FILE, RESNET_FILE, DlibResNet128Embedder, model_file

    rgb = load_image_rgb(data_dir("group_photos") / "images" / "face_recognition_obama_partial_face.jpg")
    (face,) = find_faces(rgb, HogFinder(1, 0.0), 640)
    x, y, w, h = face.box
    assert x + w * 1.2 > rgb.shape[1] or x - w * 0.2 < 0  # the crop's margin leaves the photo
    shape = dlib.shape_predictor(str(model_file(LANDMARKS_FILE)))(rgb, dlib.rectangle(x, y, x + w - 1, y + h - 1))
    own = np.asarray(dlib.face_recognition_model_v1(str(model_file(RESNET_FILE))).compute_face_descriptor(rgb, shape))
    crop = square_crop(rgb, face.box, margin=0.2, size=224)
    (ours,) = DlibResNet128Embedder(face_margin=0.2, device="cpu").embed([crop])
    distance = float(np.linalg.norm(ours - own))
    print(f"distance to dlib's own descriptor: {distance:.3f}")
    assert distance < 0.15  # the same face to dlib: its same-person rule is 0.6, facepipe's 0.37


def make_awkward_folder(root: Path, portrait: Path) -> dict[str, str]:
    """Write every kind of file the tool promises to handle; return name -> expected outcome."""
    base = Image.open(portrait).convert("RGB")
    base.thumbnail((600, 600))
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    expected = {}

    base.save(root / "a" / "same.jpg", quality=92)
    base.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "b" / "same.jpg", quality=92)
    expected["a/same.jpg"] = expected["b/same.jpg"] = "face"

    rgba = base.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(root / "rgba.PNG")
    expected["rgba.PNG"] = "face"

    gray16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(root / "sixteen_bit.png")
    assert Image.open(root / "sixteen_bit.png").mode.startswith("I")
    expected["sixteen_bit.png"] = "face"

    base.convert("L").save(root / "gray.jpeg")
    expected["gray.jpeg"] = "face"

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored pixels are turned the other way
    base.transpose(Image.Transpose.ROTATE_90).save(root / "rotated.jpg", exif=exif.tobytes())
    expected["rotated.jpg"] = "face"

    base.save(root / "Zoë 北京 café.jpg")
    expected["Zoë 北京 café.jpg"] = "face"

    full = (root / "a" / "same.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(full[: len(full) // 3])
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("this is not a picture\n")
    expected.update({"truncated.jpg": "error", "empty.jpg": "error", "notes.jpg": "error"})
    return expected


def test_awkward_files_each_end_as_promised(data_dir, tmp_path):
    portrait = data_dir("group_photos") / "images" / "facenet_angelina_jolie.jpg"
    inputs = tmp_path / "in"
    expected = make_awkward_folder(inputs, portrait)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["detect", str(inputs), "-o", str(out), "-q"])
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert "errors" in result.output and "3 errors" in result.output

    detections, sources, errors = read_outputs(out)
    relative = lambda p: Path(p).relative_to(inputs.absolute()).as_posix()  # noqa: E731
    outcome = {
        relative(s): ("error" if status == "error" else "face" if faces > 0 else "none")
        for s, status, faces in zip(sources["source"], sources["status"], sources["faces"])
    }
    assert outcome == expected
    assert sorted(errors["path"].map(relative)) == ["empty.jpg", "notes.jpg", "truncated.jpg"]
    assert errors["reason"].str.len().min() > 5

    rotated = detections[detections["source"].str.endswith("rotated.jpg")].iloc[0]
    assert rotated["source_width"] < rotated["source_height"]  # EXIF rotation applied: portrait again

    crops = list(out.glob("*.jpg"))
    assert len(crops) == len(detections) == len(set(detections["crop"]))
    same = detections[detections["source"].str.endswith("same.jpg")]
    assert same["source"].nunique() == 2 and same["crop"].nunique() == len(same)
    digests = {hashlib.sha1((out / c).read_bytes()).hexdigest() for c in same["crop"]}
    assert len(digests) == len(same)  # the flipped copy was not overwritten by the original


def test_rerun_skips_done_sources_and_force_redoes_them(data_dir, tmp_path):
    images = sorted((data_dir("lfw") / "images" / "George_W_Bush").glob("*.jpg"))[:6]
    first = detect(images[:3], tmp_path, show_progress=False)
    second = detect(images, tmp_path, show_progress=False)
    assert first.processed_now == 3 and second.processed_now == 3 and second.skipped == 3
    forced = detect(images, tmp_path, force=True, show_progress=False)
    assert forced.processed_now == 6
    with pytest.raises(FacepipeError, match="other parameters"):
        detect(images, tmp_path, DetectorParams(min_neighbors=3), show_progress=False)


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.suffix != ".json"}


def test_killed_run_resumes_to_the_same_result(data_dir, tmp_path):
    images = data_dir("lfw") / "images"
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in sorted(images.glob("A*"))) + "\n")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    detect([listing], whole, DetectorParams(min_neighbors=5), show_progress=False)

    code = (
        "import sys; from facepipe.detect import detect, DetectorParams; "
        "detect([sys.argv[1]], sys.argv[2], DetectorParams(min_neighbors=5), "
        "show_progress=False, checkpoint_seconds=0.05)"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(listing), str(killed)])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        sources = killed / SOURCES_CSV
        if sources.is_file() and len(sources.read_text().splitlines()) > 20:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = len(pd.read_csv(killed / SOURCES_CSV))
    total = len(pd.read_csv(whole / SOURCES_CSV))
    assert 20 <= partial < total, "the run was not interrupted part-way"

    resumed = detect([listing], killed, DetectorParams(min_neighbors=5), show_progress=False)
    assert resumed.skipped == partial
    assert folder_digest(killed) == folder_digest(whole)
    assert not [p for p in os.listdir(killed) if ".tmp" in p]  # stale temporaries of the kill are gone
