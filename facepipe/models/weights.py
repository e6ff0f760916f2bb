"""Finding model weight files, and downloading them (checked, atomically) when they are missing.

Search order for a file: ``--weights PATH`` (a file, or a folder holding it), then
``$FACEPIPE_WEIGHTS_DIR``, then ``weights/`` under the current folder, then the user cache folder
(``$XDG_CACHE_HOME/facepipe``, by default ``~/.cache/facepipe``). A download goes to
``$FACEPIPE_WEIGHTS_DIR`` when it is set, otherwise to the user cache folder.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from facepipe.common import FacepipeError, atomic_path, progress

VGGFACE2_RESNET50_FILE = "rcmalli_vggface_tf_notop_resnet50.h5"
VGGFACE2_RESNET50_URL = "https://github.com/rcmalli/keras-vggface/releases/download/v2.0/" + VGGFACE2_RESNET50_FILE
DOWNLOAD_TIMEOUT_S = 60
CHUNK_BYTES = 1 << 20


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/facepipe``, or ``~/.cache/facepipe``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "facepipe"


def weights_search_dirs() -> list[Path]:
    """The folders searched for a weights file, in order (``--weights`` comes before all of them)."""
    folders = []
    if os.environ.get("FACEPIPE_WEIGHTS_DIR"):
        folders.append(Path(os.environ["FACEPIPE_WEIGHTS_DIR"]).expanduser())
    folders.append(Path.cwd() / "weights")
    folders.append(user_cache_dir())
    return folders


def download_dir() -> Path:
    """Where a missing weights file is downloaded to: ``$FACEPIPE_WEIGHTS_DIR`` if set, else the user cache."""
    if os.environ.get("FACEPIPE_WEIGHTS_DIR"):
        return Path(os.environ["FACEPIPE_WEIGHTS_DIR"]).expanduser()
    return user_cache_dir()


def locate_weights(file_name: str, weights: str | os.PathLike | None = None) -> Path | None:
    """The weights file to use, or None when no searched folder holds ``file_name``.

    An explicit ``weights`` path must exist (a file, or a folder containing ``file_name``):
    a mistyped ``--weights`` is an error, never a silent download.
    """
    if weights is not None:
        given = Path(weights).expanduser()
        if given.is_dir():
            given = given / file_name
        if not given.is_file():
            raise FacepipeError(f"--weights {weights}: no such file")
        return given
    for folder in weights_search_dirs():
        candidate = folder / file_name
        if candidate.is_file():
            return candidate
    return None


def _where_to_put(file_name: str) -> str:
    places = ", ".join(str(folder) for folder in weights_search_dirs())
    return f"put {file_name} in one of: {places} (or pass --weights PATH)"


def download_weights(
    url: str,
    target: str | os.PathLike,
    *,
    check: Callable[[Path], object] | None = None,
    sha256: str | None = None,
    show_progress: bool = True,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Download ``url`` to ``target`` through a temporary file beside it, moved into place only once checked.

    The check is: as many bytes as the server announced, ``sha256`` when given, then ``check(tmp)``
    (which raises on a bad file). On any failure the temporary file is removed and nothing appears
    at ``target``; the error is a FacepipeError.
    """
    target = Path(target)
    try:
        with atomic_path(target) as tmp:
            digest = hashlib.sha256()
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                announced = response.headers.get("Content-Length")
                total = int(announced) if announced and announced.isdigit() else None
                received = 0
                with progress(desc=f"downloading {target.name}", total=total, unit="B", enabled=show_progress) as bar:
                    bar.unit_scale = True
                    for piece in iter(lambda: response.read(CHUNK_BYTES), b""):
                        out.write(piece)
                        digest.update(piece)
                        received += len(piece)
                        bar.update(len(piece))
            if total is not None and received != total:
                raise FacepipeError(f"download of {url} stopped after {received} of {total} bytes")
            if sha256 is not None and digest.hexdigest() != sha256.lower():
                raise FacepipeError(f"download of {url} has sha256 {digest.hexdigest()}, expected {sha256.lower()}")
            if check is not None:
                check(tmp)
    except FacepipeError as error:
        raise FacepipeError(f"{error}; nothing was saved to {target}") from error
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise FacepipeError(f"could not download {url}: {reason}") from error
    return target


def ensure_weights(
    file_name: str,
    url: str,
    *,
    weights: str | os.PathLike | None = None,
    download: bool = True,
    check: Callable[[Path], object] | None = None,
    sha256: str | None = None,
    show_progress: bool = True,
    alternative: str = "",
) -> Path:
    """Locate ``file_name`` (see the module docstring) or download it from ``url``; return its path.

    ``alternative`` is appended to the error when the file is missing and cannot be fetched
    (e.g. which other model works without it).
    """
    found = locate_weights(file_name, weights)
    if found is not None:
        return found
    hint = f"{_where_to_put(file_name)}{'; ' + alternative if alternative else ''}"
    if not download:
        raise FacepipeError(f"weights file {file_name} not found and downloading is off: {hint}")
    target = download_dir() / file_name
    try:
        return download_weights(url, target, check=check, sha256=sha256, show_progress=show_progress)
    except FacepipeError as error:
        raise FacepipeError(f"{error}. To run without downloading, {hint}") from error


def ensure_vggface2_weights(
    weights: str | os.PathLike | None = None,
    download: bool = True,
    url: str = VGGFACE2_RESNET50_URL,
    sha256: str | None = None,
    show_progress: bool = True,
) -> Path:
    """The keras-vggface ResNet-50 (notop) HDF5 file: found, or downloaded and checked to load."""
    from facepipe.models.vggface2 import read_keras_weights

    return ensure_weights(
        VGGFACE2_RESNET50_FILE,
        url,
        weights=weights,
        download=download,
        check=read_keras_weights,
        sha256=sha256,
        show_progress=show_progress,
        alternative="or use --model dlib-resnet128, which needs no download",
    )
