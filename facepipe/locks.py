"""One advisory lock per output folder, held for a whole command, so that two commands never write one folder.

The lock is ``flock`` on ``FOLDER/.facepipe.lock``: the kernel drops it when its holder exits, however it exits
(kill -9 too), so a stale lock of a dead process is simply taken over. While held, the file names its holder
(pid, command, start time) for the message a second command prints; a free folder's lock file is empty. A lock
also keeps other commands out of the folders below it (a run folder's temp/ while the run goes on). Locks are
re-entrant within a process: ``run`` holds its run folder and each stage it calls takes the same folder (or a
sub-folder) again.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from facepipe.common import FacepipeError
from facepipe.formats import LOCK_FILE

_held: dict[Path, int] = {}  # folder -> the file descriptor of its lock, while this process holds it


class FolderInUseError(FacepipeError):
    """Another facepipe command holds the lock on an output folder."""


def _in_use(folder: Path, fd: int) -> FolderInUseError:
    """The error for ``folder``, whose lock file ``fd`` names the process that holds it."""
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        holder = f"pid {data['pid']}: {data['command']}, since {data['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        holder = "holder unknown"
    return FolderInUseError(
        f"{folder} is in use by another facepipe command ({holder}); wait for it to end or "
        "stop it, or choose another output folder"
    )


def _refuse_if_held(lock_file: Path, folder: Path) -> None:
    """Raise FolderInUseError when another process holds ``lock_file`` (probed without waiting)."""
    try:
        fd = os.open(lock_file, os.O_RDWR)
    except OSError:
        return  # no lock file (or none we may open): nobody holds it through facepipe
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: two probes never stop each other
    except BlockingIOError:
        raise _in_use(folder, fd) from None
    finally:
        os.close(fd)  # also releases the probe


def _first_missing(folder: Path) -> Path | None:
    """The outermost folder of ``folder``'s path that does not exist yet (what mkdir -p makes), or None."""
    missing = None
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock on ``folder`` for the ``with`` body; refuse at once if another process holds it, or a
    folder above it (a run folder while its run is going on), naming that process. Folders made for it are
    removed again if the body left nothing in them."""
    folder = Path(os.path.abspath(folder))
    if folder.resolve() in _held:
        yield folder
        return
    for parent in folder.parents:
        if parent.resolve() not in _held:
            _refuse_if_held(parent / LOCK_FILE, parent)
    created = _first_missing(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        error = _in_use(folder, fd)
        os.close(fd)
        raise error from None
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    program = "facepipe" if program == "__main__.py" else program  # python -m facepipe
    record = {
        "pid": os.getpid(),
        "command": " ".join([program, *sys.argv[1:]])[:500],
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
    _held[key] = fd
    try:
        yield folder
    finally:
        del _held[key]
        try:
            _release(folder, fd, created)
        finally:
            os.close(fd)  # releases the lock


def _release(folder: Path, fd: int, created: Path | None) -> None:
    """Empty the lock file (free: it names no holder), or, where this command made the folder and wrote
    nothing into it, remove the lock file and the folders made for it."""
    with contextlib.suppress(OSError):
        if created is None or [p.name for p in folder.iterdir()] != [LOCK_FILE]:
            os.ftruncate(fd, 0)
            return
        (folder / LOCK_FILE).unlink()
        for empty in (folder, *folder.parents):
            empty.rmdir()
            if empty == created:
                break


def locks_output(folder_of: Callable[[dict], str | os.PathLike]):
    """Decorate a stage function so that it runs holding ``folder_lock(folder_of(its bound arguments))``."""

    def decorator(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with folder_lock(folder_of(bound.arguments)):
                return function(*args, **kwargs)

        return wrapper

    return decorator
