"""Finding image files and decoding them into 8-bit RGB arrays, whatever their mode."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

from facepipe.common import FacepipeError, write_bytes_atomic
from facepipe.formats import LOCK_FILE

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".heic", ".heif"})


class ImageReadError(Exception):
    """An image file that cannot be decoded; ``str(error)`` is the reason recorded for it."""


def is_image_path(path: str | os.PathLike) -> bool:
    """True when the file name has one of the supported image extensions (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


PATH_LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list", ".csv"})
DEFAULT_MAX_PIXELS = 120_000_000  # larger photos are refused unread (a 120 MP RGB decode takes about 1 GB)


def _read_path_list(list_file: Path) -> list[Path]:
    """The paths a text file lists, one a line (``#`` comments); a file that is not text is refused."""
    data = list_file.read_bytes()
    text = None
    if b"\0" not in data[:65536]:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            if list_file.suffix.lower() in PATH_LIST_EXTENSIONS:
                text = data.decode("latin-1")  # an older list file; every byte is a Latin-1 character
    if text is None:
        raise FacepipeError(
            f"{list_file} is neither an image facepipe reads ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
            "nor a text file listing paths (.txt, one path a line)"
        )
    paths = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = Path(line).expanduser()
        paths.append(entry if entry.is_absolute() else list_file.parent / entry)
    return paths


NOT_UTF8_REASON = "the file name is not valid UTF-8 (a CSV cannot name it); rename it, e.g. convmv -f latin1 -t utf8"


def printable_path(path: str | os.PathLike) -> str:
    """``path`` as valid UTF-8 text: bytes of a file name that are not UTF-8 shown as ``\\xe9`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _not_utf8(path: Path, problems: list[dict] | None) -> bool:
    """True (and ``path`` recorded in ``problems``, or refused) when its name is not UTF-8: no CSV could name it."""
    if printable_path(path) == str(path):
        return False
    reason = NOT_UTF8_REASON
    if problems is None:
        raise FacepipeError(f"{printable_path(path)}: {reason}")
    problems.append({"path": printable_path(path), "reason": reason})
    return True


def is_output_folder(folder: str | os.PathLike) -> bool:
    """True for a folder facepipe writes into (it holds facepipe's lock file): never read back as input."""
    return os.path.exists(os.path.join(folder, LOCK_FILE))


def _walk_images(folder: Path, found: set[Path], problems: list[dict] | None) -> None:
    """Add the images under ``folder`` to ``found``, leaving out hidden files and folders, and folders below it
    that are facepipe's own outputs (crops, exports, run folders), which would otherwise be read as photos."""

    def unreadable(error: OSError) -> None:
        if problems is None:
            raise error
        problems.append(
            {
                "path": printable_path(os.path.abspath(error.filename or folder)),
                "reason": f"cannot list this folder: {error.strerror or error}",
            }
        )

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = [d for d in dirs if not d.startswith(".") and not is_output_folder(os.path.join(root, d))]
        paths = (
            Path(os.path.abspath(os.path.join(root, f))) for f in files if is_image_path(f) and not f.startswith(".")
        )
        found.update(path for path in paths if not _not_utf8(path, problems))


def _one_path_per_file(paths: set[Path]) -> list[Path]:
    """``paths`` sorted, with each file once: of the paths that lead to one file (through a symlinked folder,
    say), the one without links if it is among them, else the first in sort order."""
    by_file: dict[str, Path] = {}
    for path in sorted(paths, key=lambda p: (os.path.realpath(p) != str(p), p)):
        by_file.setdefault(os.path.realpath(path), path)
    return sorted(by_file.values())


def output_outside_inputs(out_dir: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> str | os.PathLike:
    """``out_dir``, refused (before anything is written) when it is an input folder or the folder of an input
    photo: what is written there would be read back as photos. A folder inside an input folder is fine (facepipe
    skips its own output folders). ``inputs`` that are an iterator are left unread (and unchecked)."""
    if isinstance(inputs, (list, tuple, set)):
        out = os.path.realpath(out_dir)
        for item in map(lambda raw: Path(raw).expanduser(), inputs):
            folder = item if item.is_dir() else item.parent if item.is_file() and is_image_path(item) else None
            if folder is not None and os.path.realpath(folder) == out:
                what = "is the input folder" if folder is item else "holds the input photo"
                raise FacepipeError(
                    f"the output folder {printable_path(out_dir)} {what} {printable_path(item)}: "
                    "what facepipe writes there would be read back as photos; choose an output "
                    "folder outside the inputs (one inside an input folder is fine)"
                )
    return out_dir


def collect_images(inputs: Iterable[str | os.PathLike], problems: list[dict] | None = None) -> list[Path]:
    """Expand folders (recursively), image files and text files listing paths into a sorted list of images.

    Paths are made absolute; duplicates (also through links: by real path) are dropped; folders below an input
    folder that are facepipe's own outputs are skipped. A missing input is an error; a listed path that is
    missing is kept, so the stage that reads it records it as an error. A folder that cannot be listed, and a
    file whose name is not UTF-8, are appended to ``problems`` (rows ``path, reason``) where it is given, else
    raise (an OSError, a FacepipeError).
    """
    found: set[Path] = set()
    for raw in inputs:
        item = Path(raw).expanduser()
        if item.is_dir():
            _walk_images(item, found, problems)
        elif item.is_file() and is_image_path(item):
            if not _not_utf8(Path(os.path.abspath(item)), problems):
                found.add(Path(os.path.abspath(item)))
        elif item.is_file():
            for listed in _read_path_list(item):
                if listed.is_dir():
                    _walk_images(listed, found, problems)
                elif not _not_utf8(Path(os.path.abspath(listed)), problems):
                    found.add(Path(os.path.abspath(listed)))
        else:
            raise FacepipeError(f"input not found: {printable_path(raw)}")
    return _one_path_per_file(found)


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


def load_image_rgb(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` into an HxWx3 uint8 RGB array, EXIF orientation applied.

    Raises ``ImageReadError`` with a one-line reason for unreadable, empty, truncated, corrupt or non-image
    files, and for images of more than ``max_pixels`` pixels (checked from the header, before decoding).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if path.suffix.lower() in (".heic", ".heif"):
        import pillow_heif

        pillow_heif.register_heif_opener()  # phones' HEIC/HEIF photos, through libheif (EXIF orientation too)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError("empty file (0 bytes)")
        with warnings.catch_warnings():  # the pixel limit below is ours; Pillow's warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = max(max_pixels, Image.MAX_IMAGE_PIXELS or 0)  # Pillow refuses above twice it
            image = Image.open(path)
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageReadError(
                    f"too large: {width}x{height} = {width * height / 1e6:.0f} MP, above the limit "
                    f"of {max_pixels / 1e6:g} MP (--max-pixels)"
                )
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = _to_rgb8(image)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError("file not found") from None
    except PermissionError:
        raise ImageReadError("permission denied: the file cannot be read") from None
    except IsADirectoryError:
        raise ImageReadError("a folder, not an image file") from None
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


def save_image_atomic(path: str | os.PathLike, rgb: np.ndarray, quality: int = 95) -> str:
    """Write an RGB uint8 array as an image (format from the extension), atomically; returns the file's sha256."""
    from PIL import Image

    path = Path(path)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=Image.registered_extensions()[path.suffix.lower()], quality=quality)
    write_bytes_atomic(path, buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()
