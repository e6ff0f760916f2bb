"""The PyTorch port of dlib's MMOD CNN face detector gives dlib's own boxes and scores on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facepipe.common import FacepipeError
from facepipe.detectors import CnnFinder, box_iou, scaled_down
from facepipe.images import load_image_rgb
from facepipe.models import model_file
from facepipe.models.dlib_mmod import MMOD_FILE, default_mmod, read_dlib_mmod

MAX_SIDE = 320  # small enough for dlib's own CNN to run upsampled in seconds


def photos(data_dir) -> list[np.ndarray]:
    """Group photos (a face across the edge, several people, dogs and no person), an unaligned CelebA photo and
    a 150 px LFW photo, scaled down as detect does."""
    group = data_dir("group_photos") / "images"
    paths = [
        group / name
        for name in (
            "deepface_selfie-many-people.jpg",
            "dlib_2008_001009.jpg",
            "dlib_dogs.jpg",
            "facenet_multiface.jpg",
        )
    ]
    paths.append(sorted((data_dir("celeba_wild") / "images").rglob("*.jpg"))[0])
    paths.append(sorted((data_dir("lfw") / "images").rglob("*.jpg"))[0])
    return [scaled_down(load_image_rgb(path), MAX_SIDE)[0] for path in paths]


def xywh(box) -> tuple[int, int, int, int]:
    return box[0], box[1], box[2] - box[0] + 1, box[3] - box[1] + 1


@pytest.mark.parametrize("upsample", [0, 1])
def test_the_port_finds_dlibs_boxes_with_dlibs_scores(data_dir, upsample):
    import dlib

    torch.set_num_threads(1)
    reference = dlib.cnn_face_detection_model_v1(str(model_file(MMOD_FILE)))
    compared = 0
    for rgb in photos(data_dir):
        theirs = [
            (d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), d.confidence)
            for d in reference(rgb, upsample)
        ]
        ours = default_mmod().detect(rgb, upsample)
        assert len(ours) == len(theirs), (theirs, ours)  # no box more above the threshold, none fewer
        for box in theirs:
            best = max(ours, key=lambda other: box_iou(xywh(box), xywh(other)))
            assert box_iou(xywh(box), xywh(best)) >= 0.9, (box, ours)
            assert best[4] == pytest.approx(box[4], abs=1e-3)
        compared += len(theirs)
    assert compared >= 4 * (
        1 + upsample
    )  # the photos hold faces that dlib finds: the comparison is not of empty lists


def test_the_cnn_finder_keeps_its_faces_inside_the_photo(data_dir):
    rgb = photos(data_dir)[0]  # a face reaches beyond the photo's left edge
    raw = default_mmod().detect(rgb, 1)
    faces = CnnFinder(1, 0.0).find(rgb)
    assert min(box[0] for box in raw) < 0 and len(faces) == len(raw)
    height, width = rgb.shape[:2]
    assert all(x >= 0 and y >= 0 and x + w <= width and y + h <= height for (x, y, w, h) in (f.box for f in faces))


def test_a_damaged_model_file_is_one_clear_error(tmp_path):
    damaged = tmp_path / MMOD_FILE
    damaged.write_bytes(model_file(MMOD_FILE).read_bytes()[:5000])
    with pytest.raises(FacepipeError, match="damaged or not dlib's MMOD face detector|no layer"):
        read_dlib_mmod(damaged)
