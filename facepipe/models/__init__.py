"""Face embedding models. Each one turns RGB face crops into fixed-length vectors."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

# dlib-resnet128's aligned chip: dlib's own padding around the landmarks (face from brows to chin).
DLIB_CHIP_PADDING = 0.25


class Embedder(Protocol):
    """What the embed stage needs of a model."""

    name: str  # e.g. "vggface2-resnet50"
    dim: int  # length of one embedding

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Embed HxWx3 uint8 RGB face crops (any size; the model resizes) -> float32 array (n, dim)."""

    def describe(self) -> dict:
        """Fields for the embeddings sidecar JSON: model, dimension, preprocessing, weights sha256..."""
