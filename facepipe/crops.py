"""The face crops of a clustering, as train-cvae, generate and the identity term read them: which ones
(``read_training_inputs``: the grouped crops, and their folder), decoded once at the CVAE's size, and
aligned on dlib's 5 landmarks (``--align dlib5``) so that the eyes and mouth of every crop of a person fall
on the same pixels and their mean is sharp.

The alignment is dlib's ``get_face_chip`` (the one embed's dlib-resnet128 uses) with a larger padding,
the default ``align_padding``, that keeps the whole head; beyond the crop's edge its border pixels are repeated.
Each crop's landmarks are recorded (``alignment.csv``), so a rerun and generate align it the same way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from facepipe.common import FacepipeError, progress
from facepipe.formats import (
    CLUSTER_SIDECAR_FIELDS,
    DETECT_PARAMS_JSON,
    UNKNOWN_CLUSTER,
    checked_fields,
    json_object,
    path_in_sidecar,
    read_cluster_results,
    read_json,
)
from facepipe.images import ImageReadError, load_image_rgb, resize_square
from facepipe.settings import TrainSettings, check_settings


def detect_margin(crops_dir: str | Path) -> float | None:
    """The margin detect grew each face box by, from the crops folder's ``detect.json``; None if not known."""
    params_file = Path(crops_dir) / DETECT_PARAMS_JSON
    if not params_file.is_file():
        return None
    params = json_object(read_json(params_file), "params", params_file)
    margin = checked_fields(params, params_file, {"margin": float}).get("margin")
    return None if margin is None else float(margin)


def check_alignment(alignment: str, padding: float) -> None:
    """A clear error for an unknown alignment or a padding out of range."""
    check_settings(TrainSettings, align=alignment, align_padding=padding)


def align_face(rgb: np.ndarray, landmarks: np.ndarray, size: int, padding: float) -> np.ndarray:
    """The uint8 (size, size, 3) face of ``rgb`` aligned on its 5 dlib landmarks (5, 2) as dlib's
    ``get_face_chip(size, padding)`` samples it, area-averaged where the crop has more pixels than the
    result, with the crop's border repeated outside it."""
    import cv2
    import dlib

    from facepipe.models.dlib_resnet import chip_to_image

    points = np.asarray(landmarks, dtype=np.int64).reshape(5, 2)
    shape = dlib.full_object_detection(
        dlib.rectangle(*points.min(axis=0).tolist(), *points.max(axis=0).tolist()),
        [dlib.point(int(x), int(y)) for x, y in points],
    )
    scale = max(1, int(np.ceil(np.linalg.norm(chip_to_image(shape, size, padding)[:, 0]))))
    affine = chip_to_image(shape, size * scale, padding)
    face = cv2.warpAffine(
        np.ascontiguousarray(rgb),
        affine,
        (size * scale, size * scale),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return face if scale == 1 else cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)


class CropAligner:
    """Aligns crops by name, finding each crop's landmarks once (dlib's 5-point predictor inside the face box
    that detect's margin tells) or taking them from ``known`` (a read ``alignment.csv``); ``landmarks`` holds
    every crop's landmarks for ``formats.write_alignment``."""

    def __init__(
        self,
        crops_dir: str | Path,
        padding: float = TrainSettings.align_padding,
        known: dict[str, np.ndarray] | None = None,
    ):
        check_alignment(TrainSettings.align, padding)
        self.padding = float(padding)
        self.landmarks = dict(known or {})
        self._margin = detect_margin(crops_dir)
        self._finder = None

    def __call__(self, name: str, rgb: np.ndarray, size: int) -> np.ndarray:
        if name not in self.landmarks:
            if self._finder is None:
                from facepipe.models.dlib_resnet import CropLandmarks

                self._finder = CropLandmarks(self._margin)
            shape = self._finder(rgb)
            self.landmarks[name] = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.int64)
        return align_face(rgb, self.landmarks[name], size, self.padding)


def load_crops(
    names: Sequence[str],
    crops_dir: str | Path,
    size: int,
    show_progress: bool = True,
    aligner: CropAligner | None = None,
) -> np.ndarray:
    """Decode the named crops once into a uint8 array (n, size, size, 3): aligned by ``aligner``, else resized
    whole; a missing or broken crop is an error."""
    crops_dir = Path(crops_dir)
    images = np.empty((len(names), size, size, 3), dtype=np.uint8)
    problems = []
    for index, name in enumerate(progress(names, desc="loading crops", unit="crop", enabled=show_progress)):
        try:
            rgb = load_image_rgb(crops_dir / name)
        except ImageReadError as error:
            problems.append(f"{name} ({error})")
            continue
        images[index] = resize_square(rgb, size) if aligner is None else aligner(name, rgb, size)
    if problems:
        raise FacepipeError(
            f"{len(problems)} of {len(names)} crops in {crops_dir} could not be read, e.g. {'; '.join(problems[:3])}"
        )
    return images


FACE_LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"
MASK_WORK_SIDE = 200  # the pixel mean is enlarged to this side for dlib's 68-point predictor
FOREHEAD_LIFT = 0.45  # the brows raised by this share of the brow-to-chin height: the mask takes in the forehead
MASK_FEATHER = 1 / 40  # the mask's edge blurred by a Gaussian of this share of the side
NEUTRAL_GREY = 128
_FACE_PREDICTOR = None  # dlib's 68-point shape predictor, loaded on first use


def face_mask(mean_face: np.ndarray, padding: float) -> np.ndarray:
    """A soft mask (S, S) in [0, 1] of the face in a landmark-aligned pixel mean (uint8 (S, S, 3), aligned with
    ``padding``): the convex hull of the jaw line and of the brows raised over the forehead, from dlib's 68
    landmarks found on that mean (where the 5-point alignment put the face), its edge feathered."""
    import cv2
    import dlib

    from facepipe.models import model_file

    global _FACE_PREDICTOR
    if _FACE_PREDICTOR is None:
        _FACE_PREDICTOR = dlib.shape_predictor(str(model_file(FACE_LANDMARKS_68)))
    side = mean_face.shape[0]
    work = cv2.resize(
        np.ascontiguousarray(mean_face), (MASK_WORK_SIDE, MASK_WORK_SIDE), interpolation=cv2.INTER_CUBIC
    )
    low, high = padding / (2 * padding + 1) * MASK_WORK_SIDE, (padding + 1) / (2 * padding + 1) * MASK_WORK_SIDE
    grow = 0.1 * (high - low)  # the landmark template, grown a little: the face box dlib's predictor expects
    box = dlib.rectangle(int(low - grow), int(low - grow), int(high + grow), int(high + grow))
    points = np.array([[p.x, p.y] for p in _FACE_PREDICTOR(work, box).parts()], dtype=np.float64)
    jaw, brows = points[:17], points[17:27]
    forehead = brows - [0.0, FOREHEAD_LIFT * (points[8, 1] - points[27, 1])]
    hull = cv2.convexHull((np.concatenate([jaw, forehead]) * side / MASK_WORK_SIDE).astype(np.float32))
    mask = np.zeros((side, side), np.float32)
    cv2.fillConvexPoly(mask, np.round(hull).astype(np.int32), 1.0, lineType=cv2.LINE_AA)
    return cv2.GaussianBlur(mask, (0, 0), side * MASK_FEATHER)


def masked_faces(
    images: np.ndarray, labels: np.ndarray, wanted: Sequence, padding: float, reference: np.ndarray | None = None
) -> np.ndarray:
    """The aligned crops (uint8 (n, S, S, 3)) of each label in ``wanted`` laid over neutral grey through their
    label's ``face_mask``, found on the pixel mean of that label's crops (those of the rows ``reference`` only,
    when given: train-cvae's training crops)."""
    reference = np.arange(len(images)) if reference is None else reference
    means = cluster_pixel_means(images[reference], labels[reference], wanted)
    out = images.copy()
    for label, mean in zip(wanted, means):
        mask = face_mask((mean + 0.5).astype(np.uint8), padding)[None, :, :, None]
        rows = labels == label
        out[rows] = (mask * images[rows] + (1.0 - mask) * NEUTRAL_GREY + 0.5).astype(np.uint8)
    return out


def cluster_pixel_means(images: np.ndarray, labels: np.ndarray, wanted: Sequence, median: bool = False) -> np.ndarray:
    """Pixel-wise mean (or ``median``) of the crops (n, S, S, 3) of each label in ``wanted`` -> float64
    (len(wanted), S, S, 3)."""
    statistic = np.median if median else np.mean
    return np.stack([statistic(images[labels == label].astype(np.float64), axis=0) for label in wanted])


def grouped_crops(names: Sequence[str], cluster_of: Sequence[int]) -> tuple[list[str], np.ndarray]:
    """The crops ``names`` and their cluster ids without those in the unknown group (UNKNOWN_CLUSTER)."""
    cluster_of = np.asarray(cluster_of)
    grouped = cluster_of != UNKNOWN_CLUSTER
    return [name for name, keep in zip(names, grouped) if keep], cluster_of[grouped]


@dataclass
class TrainingInputs:
    """The crops to train on: names, cluster ids (never UNKNOWN_CLUSTER), and the folder holding them."""

    names: list[str]
    clusters: np.ndarray
    crops_dir: Path
    cluster_results: Path

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name, cluster in zip(self.names, self.clusters):
            digest.update(f"{name}\t{int(cluster)}\n".encode("utf-8"))
        return digest.hexdigest()[:16]


def read_training_inputs(cluster_results: str | Path, crops_dir: str | Path | None = None) -> TrainingInputs:
    """Read the grouped crops of ``cluster_results.csv`` and find its crops folder (``crops_dir``, else the
    sidecar's ``crops_dir``); crops in the unknown group (UNKNOWN_CLUSTER) are left out."""
    cluster_results = Path(cluster_results)
    frame = read_cluster_results(cluster_results)
    if frame.empty:
        raise FacepipeError(f"{cluster_results} lists no crops")
    clusters = frame["cluster"].to_numpy()
    if crops_dir is None:
        crops_dir = path_in_sidecar(
            cluster_results,
            "crops_dir",
            CLUSTER_SIDECAR_FIELDS,
            "no --crops-dir given and {sidecar} does not name the crops folder",
        )
    crops_dir = Path(crops_dir)
    if not crops_dir.is_dir():
        raise FacepipeError(f"crops folder not found: {crops_dir}")
    names = frame["name"].tolist()
    grouped_names, grouped_clusters = grouped_crops(names, clusters)
    if not grouped_names:
        raise FacepipeError(
            f"{cluster_results}: all {len(names)} crops are in the unknown group "
            f"(cluster {UNKNOWN_CLUSTER}), so there is no group to train on or generate"
        )
    return TrainingInputs(
        names=grouped_names,
        clusters=grouped_clusters,
        crops_dir=crops_dir.resolve(),
        cluster_results=cluster_results.resolve(),
    )
