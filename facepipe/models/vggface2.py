"""VGGFace2 ResNet-50 (keras-vggface 0.6 ``RESNET50(include_top=False, pooling='avg')``) in PyTorch.

The network is rebuilt layer for layer from keras-vggface's definition and its weights are read
straight from the Keras-2 HDF5 file (``rcmalli_vggface_tf_notop_resnet50.h5``) with h5py, by layer
name, so no TensorFlow is needed. What has to match Keras exactly, and does here:

- Keras kernels are HWIO; PyTorch wants OIHW.
- BatchNormalization uses Keras's epsilon 1e-3. At load time every BN is folded into the conv
  before it (scale into the kernel, shift into a bias): the same function, fewer passes over memory.
- TensorFlow's 'same' padding puts the odd pixel at the bottom/right (the 7x7 stride-2 stem pads
  2 before and 3 after on 224 px); it is padded explicitly.
- The stride of a downsampling block sits on its first 1x1 conv (and the 1x1 projection), as in
  the Caffe ResNet that VGGFace2 was trained with, not on the 3x3.
- Input: ``preprocess_input(version=2)``: RGB 0..255 to BGR, minus 91.4953, 103.8827, 131.0912.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facepipe.common import FacepipeError, file_sha256, resolve_device
from facepipe.models import PRECISIONS, VGGFACE2_RESNET50

INPUT_SIZE = 224
EMBEDDING_DIM = 2048
BN_EPSILON = 1e-3
# keras_vggface.utils.preprocess_input(version=2): per-channel means in B, G, R order.
BGR_MEANS = (91.4953, 103.8827, 131.0912)
PREPROCESSING = (
    f"resize to {INPUT_SIZE}x{INPUT_SIZE} (area when shrinking, bilinear when enlarging; none if already that size), "
    "RGB 0..255 float32 -> BGR, subtract (91.4953, 103.8827, 131.0912) from (B, G, R) "
    "(keras_vggface.utils.preprocess_input version=2)"
)
# (stage, number of blocks, filters (reduce, 3x3, increase), stride of the first block)
STAGES = (
    (2, 3, (64, 64, 256), 1),
    (3, 4, (128, 128, 512), 2),
    (4, 6, (256, 256, 1024), 2),
    (5, 3, (512, 512, 2048), 2),
)


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding along one axis: (before, after), the extra pixel going after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvBN(nn.Module):
    """A bias-free Keras Conv2D followed by BatchNormalization, held as one conv with a bias.

    ``same=True`` reproduces TensorFlow's 'same' padding, ``same=False`` is Keras's 'valid'.
    """

    def __init__(
        self, keras_name: str, in_channels: int, out_channels: int, kernel: int, stride: int = 1, same: bool = False
    ):
        super().__init__()
        self.keras_name = keras_name
        self.kernel = kernel
        self.stride = stride
        # Stride 1 with an odd kernel pads symmetrically: the conv can do it itself.
        self.explicit_pad = same and not (stride == 1 and kernel % 2 == 1)
        padding = kernel // 2 if same and not self.explicit_pad else 0
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.explicit_pad:
            top, bottom = tf_same_padding(x.shape[-2], self.kernel, self.stride)
            left, right = tf_same_padding(x.shape[-1], self.kernel, self.stride)
            x = F.pad(x, (left, right, top, bottom))
        return self.conv(x)


class Bottleneck(nn.Module):
    """keras-vggface's ``resnet_conv_block`` (with projection) or ``resnet_identity_block``."""

    def __init__(self, stage: int, block: int, in_channels: int, filters: tuple[int, int, int], stride: int):
        super().__init__()
        reduce, middle, increase = filters
        prefix = f"conv{stage}_{block}"
        self.reduce = ConvBN(f"{prefix}_1x1_reduce", in_channels, reduce, 1, stride=stride)
        self.middle = ConvBN(f"{prefix}_3x3", reduce, middle, 3, same=True)
        self.increase = ConvBN(f"{prefix}_1x1_increase", middle, increase, 1)
        self.proj = ConvBN(f"{prefix}_1x1_proj", in_channels, increase, 1, stride=stride) if block == 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place: the ReLUs and the residual add write into the convolutions' outputs instead of new tensors,
        # which on CPU cost as much as the arithmetic (bf16: 58 -> 74 crops/s on 2 cores, the same bits).
        shortcut = x if self.proj is None else self.proj(x)
        y = F.relu_(self.reduce(x))
        y = F.relu_(self.middle(y))
        y = self.increase(y)
        y += shortcut
        return F.relu_(y)


class VGGFace2ResNet50(nn.Module):
    """The network: preprocessed BGR NCHW float input -> (n, 2048) average-pooled features."""

    def __init__(self):
        super().__init__()
        self.stem = ConvBN("conv1/7x7_s2", 3, 64, 7, stride=2, same=True)
        blocks = []
        in_channels = 64
        for stage, count, filters, stride in STAGES:
            for block in range(1, count + 1):
                blocks.append(Bottleneck(stage, block, in_channels, filters, stride if block == 1 else 1))
                in_channels = filters[2]
        self.blocks = nn.Sequential(*blocks)

    def conv_bns(self) -> list[ConvBN]:
        return [m for m in self.modules() if isinstance(m, ConvBN)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.stem(x))
        x = F.max_pool2d(x, 3, stride=2)  # Keras MaxPooling2D((3, 3), strides=(2, 2)), 'valid'
        x = self.blocks(x).float()  # pool in float32 whatever the precision of the convolutions
        x = F.avg_pool2d(x, 7)  # AveragePooling2D((7, 7), name='avg_pool'), 'valid'
        return x.mean(dim=(2, 3))  # GlobalAveragePooling2D (pooling='avg')


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_keras_weights(path: str | os.PathLike, model: VGGFace2ResNet50 | None = None) -> VGGFace2ResNet50:
    """Load a Keras-2 HDF5 weights file into ``model`` (a new one by default), BN folded into the convs.

    Every expected layer must be present with the expected shapes and readable data, so this is
    also the completeness check for a downloaded file; anything wrong raises FacepipeError.
    """
    import h5py

    path = Path(path)
    model = model if model is not None else VGGFace2ResNet50()
    try:
        with h5py.File(path, "r") as handle:
            root = handle["model_weights"] if "model_weights" in handle else handle
            if "layer_names" not in root.attrs:
                raise FacepipeError(f"{path} is not a Keras weights file (no 'layer_names' attribute)")
            layer_names = {_text(name) for name in root.attrs["layer_names"]}
            for unit in model.conv_bns():
                _load_conv_bn(unit, root, layer_names, path)
    except FacepipeError:
        raise
    except (OSError, KeyError, ValueError) as error:
        raise FacepipeError(f"{path} is not a complete VGGFace2 ResNet-50 weights file: {error}") from error
    return model.eval()


def _layer_weights(root, layer: str, layer_names: set[str], path: Path) -> dict[str, np.ndarray]:
    """The arrays of one Keras layer keyed by their short name (kernel, gamma, moving_mean, ...)."""
    if layer not in layer_names or layer not in root:
        raise FacepipeError(f"{path} has no layer {layer!r}: not the VGGFace2 ResNet-50 (notop) weights file")
    group = root[layer]
    arrays = {}
    for weight_name in group.attrs["weight_names"]:
        weight_name = _text(weight_name)
        short = weight_name.rsplit("/", 1)[-1].split(":")[0]
        arrays[short] = np.asarray(group[weight_name], dtype=np.float32)
    return arrays


def _load_conv_bn(unit: ConvBN, root, layer_names: set[str], path: Path) -> None:
    conv = _layer_weights(root, unit.keras_name, layer_names, path)
    bn = _layer_weights(root, unit.keras_name + "/bn", layer_names, path)
    out_channels, in_channels, kh, kw = unit.conv.weight.shape
    expected = {"kernel": (kh, kw, in_channels, out_channels)}
    expected.update({name: (out_channels,) for name in ("gamma", "beta", "moving_mean", "moving_variance")})
    for name, shape in expected.items():
        found = conv.get(name) if name == "kernel" else bn.get(name)
        if found is None:
            raise FacepipeError(f"{path}: layer {unit.keras_name!r} lacks its {name} weights")
        if found.shape != shape:
            raise FacepipeError(f"{path}: {unit.keras_name!r} {name} has shape {found.shape}, expected {shape}")
        if not np.isfinite(found).all():
            raise FacepipeError(f"{path}: {unit.keras_name!r} {name} holds NaN or infinite values")
    # Fold in float64 so that folding adds no rounding beyond the final cast.
    scale = bn["gamma"].astype(np.float64) / np.sqrt(bn["moving_variance"].astype(np.float64) + BN_EPSILON)
    kernel = conv["kernel"].astype(np.float64).transpose(3, 2, 0, 1) * scale[:, None, None, None]  # HWIO -> OIHW
    bias = bn["beta"] - bn["moving_mean"] * scale
    with torch.no_grad():
        unit.conv.weight.copy_(torch.from_numpy(kernel.astype(np.float32)))
        unit.conv.bias.copy_(torch.from_numpy(bias.astype(np.float32)))


def preprocess_input(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
    """keras-vggface ``preprocess_input(version=2)`` on (n, H, W, 3) RGB 0..255 -> (n, 3, H, W) float32 BGR minus means.

    The result is NHWC in memory (``channels_last``), which is what the convolutions want on CPU.
    """
    x = torch.as_tensor(batch).to(torch.float32)
    x = x.flip(-1) - torch.tensor(BGR_MEANS, dtype=torch.float32, device=x.device)
    return x.permute(0, 3, 1, 2)


def resize_crop(crop: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """A uint8 HxWx3 RGB crop at ``size`` x ``size``: area interpolation to shrink, bilinear to enlarge."""
    import cv2

    crop = np.asarray(crop)
    if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB crop, got dtype {crop.dtype} and shape {crop.shape}")
    if crop.shape[:2] == (size, size):
        return crop
    shrinking = crop.shape[0] * crop.shape[1] > size * size
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def freeze_for_cpu(model: VGGFace2ResNet50, dtype: torch.dtype) -> torch.jit.ScriptModule:
    """``model`` as a frozen TorchScript graph for CPU inference at ``INPUT_SIZE`` (any batch size).

    Freezing lets oneDNN pre-pack every kernel once and fuse conv + add + ReLU, about 1.45x the eager
    fp32 throughput on a 2-core AVX-512 CPU with the same outputs (1.8e-7 relative difference on the
    fixture crops). The tracer's warnings are expected: the 'same' padding is computed from the input
    size, which is always ``INPUT_SIZE`` here, and torch.jit is deprecated in favour of torch.compile,
    whose compile takes about a minute per process on CPU.
    """
    example = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model.eval(), example)))


CPU_CHUNK = 8


class VGGFace2ResNet50Embedder:
    """The ``Embedder`` for ``vggface2-resnet50``: uint8 RGB crops of any size -> float32 (n, 2048).

    ``weights_path`` is the HDF5 file (find or fetch it with ``facepipe.models.weights.ensure_vggface2_weights``).
    ``precision="bf16"`` holds the (BN-folded) weights in bfloat16 and runs the convolutions in bfloat16
    (CPU or CUDA): the same casts autocast would make, without re-casting the weights on every call
    (measured faster on CPU); preprocessing, pooling and outputs stay float32. On CPU the network runs as
    a frozen graph (``freeze_for_cpu``).
    """

    name = VGGFACE2_RESNET50
    dim = EMBEDDING_DIM

    def __init__(
        self, weights_path: str | os.PathLike, device: str = "auto", precision: str = "fp32", batch_size: int = 32
    ):
        if precision not in PRECISIONS:
            raise FacepipeError(f"unknown precision {precision!r}: use {' or '.join(PRECISIONS)}")
        if batch_size < 1:
            raise FacepipeError(f"batch size must be at least 1, got {batch_size}")
        self.weights_path = Path(weights_path)
        if not self.weights_path.is_file():
            raise FacepipeError(f"VGGFace2 weights file not found: {self.weights_path}")
        self.device = resolve_device(device)
        self.precision = precision
        self.batch_size = batch_size
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self._sha256: str | None = None

    @functools.cached_property
    def model(self) -> torch.nn.Module:
        """The network, built on first use: a Ray engine's facepipe process only describes the model."""
        with torch.inference_mode(False):  # built as it was before the first embed, not as an inference tensor
            model = read_keras_weights(self.weights_path)
            model = model.to(self.device, dtype=self.dtype, memory_format=torch.channels_last)
            return freeze_for_cpu(model, self.dtype) if self.device == "cpu" else model

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Embed HxWx3 uint8 RGB crops -> float32 (n, 2048), in batches of ``batch_size`` (of at most
        CPU_CHUNK on the CPU)."""
        return self.embed_prepared([self.prepare(crop) for crop in crops])

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """The crop at the network's 224 x 224 (``resize_crop``)."""
        return resize_crop(rgb)

    def embed_prepared(self, resized: Sequence[np.ndarray]) -> np.ndarray:
        """Embed crops resized by ``prepare`` -> float32 (n, 2048), as ``embed``."""
        outputs = [np.zeros((0, self.dim), dtype=np.float32)]
        # On CPU the network runs 8 crops at a time whatever the batch: their activations stay in cache (2 cores,
        # bf16: 118 crops/s at 8, 72 at 32; fp32: 35 and 30), and a crop's embedding does not depend on its batch.
        step = min(self.batch_size, CPU_CHUNK) if self.device == "cpu" else self.batch_size
        with torch.inference_mode():
            for start in range(0, len(resized), step):
                batch = np.stack(resized[start : start + step])
                x = preprocess_input(torch.from_numpy(batch).to(self.device))
                x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
                outputs.append(self.model(x).float().cpu().numpy())
        return np.concatenate(outputs)

    @property
    def weights_sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.weights_path)
        return self._sha256

    def describe(self) -> dict:
        """Fields for the embeddings sidecar JSON."""
        return {
            "model": self.name,
            "dimension": self.dim,
            "architecture": "keras-vggface 0.6 RESNET50(include_top=False, pooling='avg'), ported to PyTorch",
            "preprocessing": PREPROCESSING,
            "weights_file": self.weights_path.name,
            "weights_sha256": self.weights_sha256,
            "precision": self.precision,
        }
