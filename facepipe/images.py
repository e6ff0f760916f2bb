"""Finding image files and decoding them into 8-bit RGB arrays, whatever their mode."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from facepipe.common import FacepipeError, atomic_path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


class ImageReadError(Exception):
    """An image file that cannot be decoded; ``str(error)`` is the reason recorded for it."""


def is_image_path(path: str | os.PathLike) -> bool:
    """True when the file name has one of the supported image extensions (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _read_path_list(list_file: Path) -> list[Path]:
    paths = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = Path(line).expanduser()
        paths.append(entry if entry.is_absolute() else list_file.parent / entry)
    return paths


def collect_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand folders (recursively), image files and text files listing paths into a sorted list of images.

    Paths are made absolute; duplicates are dropped. A missing input is an error; a listed path
    that is missing is kept, so the stage that reads it records it as an error.
    """
    found: set[Path] = set()
    for raw in inputs:
        item = Path(raw).expanduser()
        if item.is_dir():
            for root, dirs, files in os.walk(item):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found.update(Path(os.path.abspath(os.path.join(root, f))) for f in files if is_image_path(f) and not f.startswith("."))
        elif item.is_file() and is_image_path(item):
            found.add(Path(os.path.abspath(item)))
        elif item.is_file():
            for listed in _read_path_list(item):
                if listed.is_dir():
                    found.update(collect_images([listed]))
                else:
                    found.add(Path(os.path.abspath(listed)))
        else:
            raise FacepipeError(f"input not found: {raw}")
    return sorted(found)


def _to_rgb8(image) -> np.ndarray:
    """Convert a decoded PIL image of any mode (L, LA, P, RGBA, CMYK, I;16, I, F...) to uint8 RGB."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode ``path`` into an HxWx3 uint8 RGB array, EXIF orientation applied.

    Raises ``ImageReadError`` with a one-line reason for empty, truncated, corrupt or non-image files.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError("empty file (0 bytes)")
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = _to_rgb8(image)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError("file not found") from None
    except UnidentifiedImageError:
        raise ImageReadError("not an image file (unrecognised format)") from None
    except Image.DecompressionBombError as error:
        raise ImageReadError(f"refused as a decompression bomb: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"corrupt or truncated image: {error}") from None
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageReadError("image has no pixels")
    return rgb


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an image to ``size`` x ``size``: area interpolation to shrink, bicubic to enlarge."""
    import cv2

    if rgb.shape[:2] == (size, size):
        return rgb
    interpolation = cv2.INTER_AREA if rgb.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(rgb, (size, size), interpolation=interpolation)


def save_image_atomic(path: str | os.PathLike, rgb: np.ndarray, quality: int = 95) -> None:
    """Write an RGB uint8 array as an image (format from the extension), atomically."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format=Image.registered_extensions()[path.suffix.lower()], quality=quality)
