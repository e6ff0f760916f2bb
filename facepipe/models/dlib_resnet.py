"""dlib's 128-d face recognition ResNet (offline: the weights ship in the PyPI package face-recognition-models).

Each crop goes through dlib's own recipe: 5-point landmarks inside a face box, a 150x150 chip aligned on
them (``dlib.get_face_chip``, padding 0.25, as in dlib's examples), then the ResNet, which runs in
PyTorch with the weights read from dlib's .dat file (``dlib_network.read_dlib_resnet``). Where the face lies
in the crop is told by ``face_margin``: crops from ``facepipe detect`` are squares of side
``box * (1 + 2 * margin)`` centred on the Haar box, so the face box is their central square of side
``size / (1 + 2 * margin)``. For crops of unknown origin (``face_margin=None``, e.g. a folder of ready
face chips) dlib's HOG frontal face detector looks for the face in the crop (at full size, then
upsampled once), and the central box for detect's default margin 0.2 is used where it finds none.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Sequence

import numpy as np

from facepipe.common import FacepipeError, file_sha256, resolve_device
from facepipe.models import DLIB_CHIP_PADDING, DLIB_CROP_MODES, DLIB_MAX_CHIP_PADDING, DLIB_RESNET128, model_file

if TYPE_CHECKING:  # torch is imported where the network runs: embed's aligning workers never load it
    import torch

    from facepipe.models.dlib_network import DlibResNet

RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
CHIP_SIZE = 150
FALLBACK_MARGIN = 0.2  # detect's default margin, for crops whose face the HOG detector cannot find


def central_face_box(height: int, width: int, margin: float) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the face box inside a detect crop grown by ``margin`` per side."""
    side_h, side_w = height / (1.0 + 2.0 * margin), width / (1.0 + 2.0 * margin)
    left, top = (width - side_w) / 2.0, (height - side_h) / 2.0
    return int(round(left)), int(round(top)), int(round(left + side_w)) - 1, int(round(top + side_h)) - 1


def chip_to_image(landmarks, size: int, padding: float) -> np.ndarray:
    """The 2x3 affine map from pixel (column, row) of dlib's ``get_face_chip(size, padding)`` to the pixel of
    the image it samples, as dlib's extract_image_chip does: the chip's corners are the corners of the chip
    rectangle, turned by its angle about its centre."""
    import dlib

    details = dlib.get_face_chip_details(landmarks, size=size, padding=padding)
    rect = details.rect
    centre_x, centre_y = (rect.left() + rect.right()) / 2.0, (rect.top() + rect.bottom()) / 2.0
    step_x, step_y = (rect.right() - rect.left()) / (size - 1), (rect.bottom() - rect.top()) / (size - 1)
    cos, sin = np.cos(details.angle), np.sin(details.angle)
    left, top = rect.left() - centre_x, rect.top() - centre_y
    return np.array(
        [
            [cos * step_x, -sin * step_y, centre_x + cos * left - sin * top],
            [sin * step_x, cos * step_y, centre_y + sin * left + cos * top],
        ]
    )


class CropLandmarks:
    """dlib's 5 face landmarks of a crop, found inside the face box that ``face_margin`` tells (see the module
    docstring); callable: uint8 RGB crop -> ``dlib.full_object_detection``."""

    def __init__(self, face_margin: float | None = None):
        import dlib

        self.face_margin = face_margin
        self._predictor = dlib.shape_predictor(str(model_file(LANDMARKS_FILE)))
        self._detector = dlib.get_frontal_face_detector() if face_margin is None else None

    def face_box(self, rgb: np.ndarray):
        """The dlib.rectangle where the face of a crop is taken to be."""
        import dlib

        if self._detector is not None:
            for upsample in (0, 1):  # faces fill most of a crop: try at full size first, then upsampled
                found = self._detector(rgb, upsample)
                if len(found):
                    return max(found, key=lambda r: r.area())
        margin = FALLBACK_MARGIN if self.face_margin is None else self.face_margin
        return dlib.rectangle(*central_face_box(*rgb.shape[:2], margin))

    def __call__(self, rgb: np.ndarray):
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        return self._predictor(rgb, self.face_box(rgb))


class DlibResNet128Embedder:
    """dlib face descriptors (128-d; dlib's same-person threshold is a Euclidean distance of 0.6).

    Alignment is dlib's own (landmarks, ``get_face_chip``); the network runs in PyTorch (``read_dlib_resnet``),
    about 10x faster than dlib's CPU build and on CUDA too, with the same numbers (tests check the parity).
    """

    name = DLIB_RESNET128
    dim = 128

    def __init__(
        self,
        face_margin: float | None = None,
        device: str = "auto",
        batch_size: int = 32,
        crop: str = "aligned",
        padding: float = DLIB_CHIP_PADDING,
        mirror: bool = False,
    ):
        if crop not in DLIB_CROP_MODES:
            raise FacepipeError(f"unknown dlib crop {crop!r}: use {' or '.join(DLIB_CROP_MODES)}")
        if not 0 <= padding <= DLIB_MAX_CHIP_PADDING:
            raise FacepipeError(
                f"dlib chip padding must lie between 0 and {DLIB_MAX_CHIP_PADDING:g}, got {padding:g}"
            )
        if crop == "whole" and padding != DLIB_CHIP_PADDING:
            raise FacepipeError("the chip padding applies to the aligned crop only, not to the whole crop")
        self.crop = crop
        self.padding = float(padding)
        self.mirror = bool(mirror)
        if face_margin is not None and not 0 <= face_margin <= 2:
            raise FacepipeError("face margin must lie between 0 and 2")
        if batch_size < 1:
            raise FacepipeError(f"batch size must be at least 1, got {batch_size}")
        self.face_margin = face_margin
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self._resnet_path = model_file(RESNET_FILE)
        landmarks_path = model_file(LANDMARKS_FILE)
        self.landmarks = CropLandmarks(face_margin)
        self._sha256 = {RESNET_FILE: file_sha256(self._resnet_path), LANDMARKS_FILE: file_sha256(landmarks_path)}

    @functools.cached_property
    def network(self) -> DlibResNet:
        """The network, built on first use: a Ray engine's facepipe process only describes the model."""
        import torch

        from facepipe.models.dlib_network import read_dlib_resnet

        with torch.inference_mode(False):  # first used under inference mode, but the identity term trains through it
            return read_dlib_resnet(self._resnet_path).eval().to(self.device)

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """The 150x150 chip of a crop: aligned on its 5 landmarks by dlib with ``padding`` (a larger one keeps
        more of the head around the face, e.g. the scalp), or (crop "whole") the whole crop edge-padded to a
        square and resized."""
        import dlib

        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        if self.crop == "whole":
            return _whole_chip(rgb)
        return dlib.get_face_chip(rgb, self.landmarks(rgb), size=CHIP_SIZE, padding=self.padding)

    def chip_grid(self, rgb: np.ndarray) -> np.ndarray:
        """Where ``align`` samples each chip pixel of this crop, as a ``F.grid_sample`` grid (150, 150, 2)
        (align_corners=False), so that any rescaled copy of the crop, e.g. a generated face, can be aligned
        differentiably as this crop is (``embed_aligned``)."""
        height, width = rgb.shape[:2]
        if self.crop == "whole":  # the centred square around the crop, edge-padded (grid_sample's border)
            side = max(height, width)
            steps = (np.arange(CHIP_SIZE) + 0.5) * side / CHIP_SIZE - 0.5
            x, y = np.meshgrid(steps - (side - width) // 2, steps - (side - height) // 2)
        else:
            affine = chip_to_image(self.landmarks(rgb), CHIP_SIZE, self.padding)
            column, row = np.meshgrid(np.arange(CHIP_SIZE), np.arange(CHIP_SIZE))
            x, y = (affine @ np.stack([column, row, np.ones_like(row)]).reshape(3, -1)).reshape(
                2, CHIP_SIZE, CHIP_SIZE
            )
        return np.stack([2.0 * (x + 0.5) / width - 1.0, 2.0 * (y + 0.5) / height - 1.0], axis=-1).astype(np.float32)

    def embed_aligned(self, images: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        """Differentiable embedding of RGB images (n, 3, H, W) in [0, 1], each aligned by its ``chip_grid``
        (bilinear) -> (n, 128); gradients flow to the images."""
        import torch.nn.functional as F

        chips = F.grid_sample(
            images.float() * 255.0, grids, mode="bilinear", padding_mode="border", align_corners=False
        )
        return self.network(chips.permute(0, 2, 3, 1))

    def embed_prepared(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """Aligned 150x150 uint8 RGB chips -> float32 (n, 128); with ``mirror``, the mean of each chip's
        vector and its mirror image's (a test-time flip: a face's two views, as on a person's other photos)."""
        vectors = self._network_vectors(chips)
        if self.mirror:
            vectors = (vectors + self._network_vectors([chip[:, ::-1] for chip in chips])) / 2
        return vectors

    def _network_vectors(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """The network's vector of each chip, ``batch_size`` at a time."""
        import torch

        outputs = [np.zeros((0, self.dim), dtype=np.float32)]
        with torch.inference_mode():
            for start in range(0, len(chips), self.batch_size):
                batch = list(chips[start : start + self.batch_size])
                # A lone chip runs twice over: oneDNN convolves a batch of one with another kernel whose last bits
                # differ, and a face's embedding must not depend on how the crops were batched (local or Ray).
                stacked = torch.from_numpy(np.stack(batch * 2 if len(batch) == 1 else batch)).to(self.device)
                outputs.append(self.network(stacked)[: len(batch)].float().cpu().numpy())
        return np.concatenate(outputs)

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """HxWx3 uint8 RGB face crops -> float32 (n, 128)."""
        return self.embed_prepared([self.prepare(rgb) for rgb in crops])

    def describe(self) -> dict:
        """Sidecar fields: which files, which alignment, where the face box came from."""
        if self.crop == "whole":
            chip = f"the whole crop, edge-padded to a centred square, resized bilinearly to {CHIP_SIZE}"
        else:
            chip = f"{LANDMARKS_FILE} landmarks; dlib.get_face_chip size {CHIP_SIZE} padding {self.padding:g}"
        face_box = (
            f"central square of a detect crop with margin {self.face_margin}"
            if self.face_margin is not None
            else f"largest face of dlib's HOG frontal detector (upsample 0, then 1), else the central box for margin {FALLBACK_MARGIN}"
        )
        return {
            "model": self.name,
            "dimension": self.dim,
            "architecture": "dlib dnn_face_recognition_ex ResNet, run in PyTorch with the weights of the .dat file",
            "preprocessing": (
                f"RGB uint8; face box: {face_box}; {chip}; (pixel - dlib's RGB means) / 256"
                + ("; the mean of the chip's vector and its mirror image's" if self.mirror else "")
            ),
            "weights_file": RESNET_FILE,
            "weights_sha256": self._sha256[RESNET_FILE],
            "landmarks_sha256": self._sha256[LANDMARKS_FILE],
            "face_margin": self.face_margin,
            "crop": self.crop,
            "chip_padding": self.padding if self.crop == "aligned" else None,
            "mirror": self.mirror,
            "precision": "fp32",
        }


def _whole_chip(rgb: np.ndarray) -> np.ndarray:
    """The whole image edge-padded to a centred square and resized to the chip size."""
    import cv2

    height, width = rgb.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    square = cv2.copyMakeBorder(rgb, top, side - height - top, left, side - width - left, cv2.BORDER_REPLICATE)
    return cv2.resize(square, (CHIP_SIZE, CHIP_SIZE), interpolation=cv2.INTER_LINEAR)
