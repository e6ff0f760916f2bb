"""dlib's face recognition ResNet in PyTorch, built from the weights of its .dat file (``read_dlib_resnet``);
``dlib_resnet`` aligns the chips it embeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facepipe.common import FacepipeError
from facepipe.models.dlib_dat import DatReader


def _add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: tensors of different shapes are added where they overlap (top-left), zeros elsewhere."""
    channels, rows, cols = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:]))

    def grow(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, cols - t.shape[3], 0, rows - t.shape[2], 0, channels - t.shape[1]))

    return grow(a) + grow(b)


class DlibResNet(nn.Module):
    """dlib's face recognition ResNet (dnn_face_recognition_ex.cpp) in PyTorch: 150x150 RGB chip -> 128-d."""

    # (filters, downsampling) of the 14 residual blocks, input to output
    BLOCKS = (
        [(32, False)] * 3
        + [(64, True)]
        + [(64, False)] * 3
        + [(128, True)]
        + [(128, False)] * 2
        + [(256, True)]
        + [(256, False)] * 2
        + [(256, True)]
    )

    def __init__(
        self, convs: list[tuple[np.ndarray, np.ndarray, int, int]], projection: np.ndarray, means: list[float]
    ):
        super().__init__()
        self.convs = nn.ModuleList()
        for weight, bias, stride, padding in convs:
            conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2:], stride=stride, padding=padding)
            conv.weight.data = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
            conv.bias.data = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
            self.convs.append(conv)
        self.register_buffer("projection", torch.from_numpy(np.ascontiguousarray(projection, dtype=np.float32)))
        self.register_buffer("means", torch.tensor(means, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        """uint8 RGB chips (n, 150, 150, 3) -> (n, 128)."""
        x = (chips.permute(0, 3, 1, 2).float() - self.means) / 256.0  # dlib's input_rgb_image
        x = F.max_pool2d(F.relu(self.convs[0](x)), 3, 2)
        for index, (_, down) in enumerate(self.BLOCKS):
            first, second = self.convs[1 + 2 * index], self.convs[2 + 2 * index]
            residual = second(F.relu(first(x)))
            x = F.relu(_add_zero_padded(residual, F.avg_pool2d(x, 2, 2) if down else x))
        return x.mean(dim=(2, 3)) @ self.projection


def read_dlib_resnet(path: Path) -> DlibResNet:
    """Build dlib's face recognition ResNet in PyTorch from its .dat file (dlib's binary serialization).

    The file lists the layers from the input outwards: 29 convolutions each followed by an affine
    (a frozen batch norm, folded here into the convolution), then the 256x128 fc_no_bias matrix.
    """
    try:
        return _read_dlib_resnet(DatReader(path.read_bytes(), path, "dlib's ResNet"))
    except (IndexError, ValueError) as error:
        raise FacepipeError(f"{path} is damaged or not dlib's face recognition ResNet ({error})") from None


def _read_dlib_resnet(reader: DatReader) -> DlibResNet:
    reader.seek_after(b"input_rgb_image_sized")
    means = [reader.float() for _ in range(3)]
    convs = [reader.conv() for _ in range(1 + 2 * len(DlibResNet.BLOCKS))]
    reader.seek_after(b"fc_2")
    outputs, inputs = reader.int(), reader.int()
    projection = reader.tensor().reshape(inputs, outputs)
    return DlibResNet(convs, projection, means)
