"""What facepipe may remove or overwrite: only files it recorded writing, inside its own output folder.

Every stage that removes an output of an earlier run goes through here: the file must be recorded (in the
stage's sidecar or manifest, with the sha256 it wrote), its path must stay inside the output folder without
passing through a symbolic link, and it must still hold what was recorded; a file the user changed since is
left alone. Nothing is removed by a name pattern (only the temporaries of ``common.atomic_path``, of a
stage's own output names, are found by theirs: ``common.remove_own_temporaries``).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Iterable

from facepipe.common import FacepipeError, file_sha256


class OutsideFolderError(FacepipeError):
    """A path that leaves its output folder, or reaches into it through a symbolic link."""


def inside(folder: str | os.PathLike, relative: str) -> Path:
    """``folder / relative`` for a relative path that stays inside ``folder`` and passes through no symbolic
    link on the way (each folder below ``folder`` checked with lstat; the last part itself is not checked).
    Raises OutsideFolderError naming the path otherwise (a path read from a file never leaves its folder)."""
    text = str(relative)
    parts = [part for part in text.split(os.sep) if part not in ("", ".")]
    if os.path.isabs(text) or ".." in parts or not parts:
        raise OutsideFolderError(f"{text!r} is not a path inside {folder}: facepipe never reaches outside it")
    here = os.fspath(folder)
    for part in parts[:-1]:
        here = os.path.join(here, part)
        try:
            mode = os.lstat(here).st_mode
        except FileNotFoundError:
            break  # not made yet: what is made below it is inside
        if stat.S_ISLNK(mode) or not stat.S_ISDIR(mode):
            raise OutsideFolderError(
                f"{here} is a {'symbolic link' if stat.S_ISLNK(mode) else 'file'} inside "
                f"{folder}, not a folder: facepipe never writes through it; move it away"
            )
    return Path(folder, *parts)


def inside_or_none(folder: str | os.PathLike, relative: str) -> Path | None:
    """``inside(folder, relative)``, or None where that path is not inside."""
    try:
        return inside(folder, relative)
    except OutsideFolderError:
        return None


def holds_recorded(path: Path, digest: str) -> bool:
    """True when ``path`` is a plain file (not a link) whose sha256 is ``digest``."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        return file_sha256(path) == digest
    except OSError:
        return False


def remove_recorded(
    folder: str | os.PathLike, recorded: dict | None, keep: Iterable[str | os.PathLike] = ()
) -> tuple[list[Path], list[Path]]:
    """Remove the files an earlier run recorded writing into ``folder`` (``recorded``: path relative to
    ``folder`` -> sha256, as ``formats.output_hashes`` makes) that are not among ``keep``. A file is removed
    only when it is inside ``folder`` and still holds what was recorded; returns (removed, changed: those the
    user changed since, left alone)."""
    folder = Path(folder)
    kept = {os.path.abspath(path) for path in keep}
    removed, changed = [], []
    for relative, digest in recorded.items() if isinstance(recorded, dict) else ():
        path = inside_or_none(folder, relative)
        if path is None or os.path.abspath(path) in kept or not isinstance(digest, str):
            continue
        if not os.path.lexists(path):
            continue
        if holds_recorded(path, digest):
            path.unlink()
            removed.append(path)
        else:
            changed.append(path)
    return removed, changed


def recorded_in(folder: str | os.PathLike, recorded: dict | None, base: str | os.PathLike) -> dict[str, str]:
    """The entries of ``recorded`` (relative to ``base``) that lie in ``folder``, relative to ``folder``."""
    folder = os.path.abspath(folder)
    entries = {}
    for relative, digest in recorded.items() if isinstance(recorded, dict) else ():
        path = os.path.normpath(os.path.join(os.path.abspath(base), str(relative)))
        if os.path.dirname(path) == folder:
            entries[os.path.basename(path)] = digest
    return entries


def recorded_outputs(sidecar: str | os.PathLike) -> dict:
    """The ``outputs`` (relative path -> sha256) a stage's sidecar recorded; none when the sidecar is missing,
    damaged or records none (then nothing of the earlier run is removed)."""
    try:
        with open(sidecar, encoding="utf-8") as handle:
            outputs = json.load(handle).get("outputs")
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(k): v for k, v in outputs.items() if isinstance(v, str)} if isinstance(outputs, dict) else {}


def left_alone_phrase(changed: list) -> str:
    """The summary's words for the files of an earlier run that the user changed and facepipe left alone."""
    if not changed:
        return ""
    return (
        f"; {len(changed)} file(s) of an earlier run changed since facepipe wrote them, left alone "
        f"(e.g. {changed[0]})"
    )


def refuse_changed(folder: str | os.PathLike, recorded: dict | None, to_write: Iterable[str | os.PathLike]) -> None:
    """Refuse (FacepipeError) before anything is written when a file the stage is about to write is one an
    earlier run recorded writing into ``folder`` and the user changed since: it is theirs now."""
    wanted = {os.path.abspath(path) for path in to_write}
    for relative, digest in recorded.items() if isinstance(recorded, dict) else ():
        path = inside_or_none(folder, relative)
        if (
            path is not None
            and os.path.abspath(path) in wanted
            and os.path.lexists(path)
            and not holds_recorded(path, digest)
        ):
            raise FacepipeError(
                f"{path} was changed since facepipe wrote it: move it away and rerun (facepipe never "
                "overwrites or removes a file changed since it wrote it)"
            )
