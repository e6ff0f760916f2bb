"""One advisory lock per output folder, held for a whole command, so that two commands never write one folder.

The lock is ``flock`` on ``FOLDER/.facepipe.lock``: the kernel drops it when its holder exits, however it exits
(kill -9 too), so a stale lock of a dead process is simply taken over. While held, the file names its holder
(pid, command, start time) for the message a second command prints; a free folder's lock file is empty. Locks
are re-entrant within a process: ``run`` holds its run folder and each stage it calls takes the same folder (or
a sub-folder) again.
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

_held: dict[Path, list] = {}  # folder -> [file descriptor, depth]


class FolderInUseError(FacepipeError):
    """Another facepipe command holds the lock on an output folder."""


def _holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"pid {data['pid']}: {data['command']}, since {data['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock on ``folder`` for the ``with`` body; refuse at once if another process holds it, naming
    that process. A folder made for it is removed again if the body left nothing in it."""
    folder = Path(os.path.abspath(folder))
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _held:
        _held[key][1] += 1
        try:
            yield folder
        finally:
            _held[key][1] -= 1
        return
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise FolderInUseError(f"{folder} is in use by another facepipe command ({holder}); wait for it to end "
                               "or stop it, or choose another output folder") from None
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    program = "facepipe" if program == "__main__.py" else program  # python -m facepipe
    record = {"pid": os.getpid(), "command": " ".join([program, *sys.argv[1:]])[:500],
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
    _held[key] = [fd, 1]
    try:
        yield folder
    finally:
        del _held[key]
        if created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:  # a command that wrote nothing
            (folder / LOCK_FILE).unlink()
            folder.rmdir()
        else:
            os.ftruncate(fd, 0)  # free: an empty lock file names no holder
        os.close(fd)  # releases the lock


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
