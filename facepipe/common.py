"""Helpers every stage shares: errors, atomic writes, devices, seeds, progress bars."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import re
import signal
import stat
import sys
import tempfile
import threading
import warnings
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


class FacepipeError(Exception):
    """An error the user can fix (bad input, missing file); the CLI prints it without a traceback."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, expected_size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the body has written it, it is flushed to disk (fsync),
    checked to be non-empty (and ``expected_size`` bytes long, when given), and renamed onto ``path``. A file
    that is there keeps its permissions (a people file of the user's kept private stays private).

    If the body raises (disk full, say) or the process is killed, ``path`` keeps its old content and the
    temporary file is removed (or, after a kill, left with a ``.NAME.facepipe-XXXXXXXX.tmp`` name that no stage
    reads and ``remove_own_temporaries`` removes).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = temporary_affixes(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, _permissions_of(path))
        yield tmp_path
        _flush_to_disk(tmp_path, expected_size)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _permissions_of(path: Path) -> int:
    """The permissions the file written at ``path`` gets: those of the file there now, else the usual ones
    (mkstemp makes 0600)."""
    try:
        found = os.stat(path)
    except OSError:
        return 0o666 & ~_UMASK
    return stat.S_IMODE(found.st_mode) if stat.S_ISREG(found.st_mode) else 0o666 & ~_UMASK


def _flush_to_disk(path: Path, expected_size: int | None = None) -> None:
    """fsync ``path`` and check its size (a short write on a full disk must never be renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if size == 0 or (expected_size is not None and size != expected_size):
        raise OSError(errno.ENOSPC, f"short write ({size} of {expected_size or 'some'} bytes; disk full?)", str(path))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: all of it, flushed to disk, its size checked, then renamed."""
    try:
        with atomic_path(path, expected_size=len(data)) as tmp:
            with open(tmp, "wb") as handle:
                handle.write(data)
    except OSError as error:
        if error.filename:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from None  # the message names the file


TEMPORARY_MARK = "facepipe-"
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.facepipe-[a-z0-9_]{8}\.tmp(?P<suffix>.*)$")  # mkstemp's 8 characters


def temporary_affixes(path: Path) -> tuple[str, str]:
    """The prefix and suffix of the temporary file for ``path``: ``.NAME.facepipe-`` and ``.tmpSUFFIX`` (the
    output's suffix last, for writers that choose the format by it); mkstemp puts 8 characters between."""
    return f".{path.name}.{TEMPORARY_MARK}", ".tmp" + path.suffix


def remove_own_temporaries(folder: str | os.PathLike, is_output_name: Callable[[str], bool]) -> int:
    """Delete the temporaries a killed ``atomic_path`` left in ``folder`` for the output names a stage writes
    (``is_output_name``); no other file is touched (a user's ``.draft.tmp.txt`` stays). Returns how many."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    removed = 0
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        if match["suffix"] == Path(match["name"]).suffix and is_output_name(match["name"]):
            Path(entry.path).unlink(missing_ok=True)
            removed += 1
    return removed


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    write_bytes_atomic(path, text.encode("utf-8"))


OS_ERROR_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is used up",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.EEXIST: "a file is in the way where a folder is needed",
    errno.ENOTDIR: "a file is in the way where a folder is needed",
    errno.EISDIR: "it is a folder, not a file",
    errno.EMFILE: "too many open files (raise `ulimit -n`, or use fewer --workers)",
    errno.ENFILE: "too many open files on this system",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EIO: "an input/output error of the device",
}


def describe_os_error(error: OSError) -> str:
    """One line for an operating-system error: what failed, on which path, and that nothing was half-written."""
    reason = OS_ERROR_REASONS.get(error.errno, error.strerror or str(error))
    where = " -> ".join(str(f) for f in (error.filename, error.filename2) if f)
    return (
        f"{where + ': ' if where else ''}{reason}. Every file facepipe writes is written whole or not at all; "
        "fix this and rerun the same command to go on from what is done"
    )


def check_writable(folder: str | os.PathLike) -> None:
    """Refuse, before any work, a folder a command will write into but may not (read-only, permissions): a
    nameless temporary file is made and dropped there, so nothing is left behind."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise FacepipeError(
            f"cannot write into {folder}: {OS_ERROR_REASONS.get(error.errno, error.strerror)}; nothing was changed"
        ) from None


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one, else all of them)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def worker_context():
    """The multiprocessing context of facepipe's worker pools: forkserver on POSIX, not fork (a worker forked
    from a process whose thread pools already ran, dlib's CNN or OpenCV's, hangs on them), else spawn. The fork
    server is started ignoring Ctrl-C, and so are the workers it forks: Ctrl-C is the facepipe process's to
    handle (it keeps what is done and stops the pool), and no worker prints a KeyboardInterrupt traceback."""
    if os.name != "posix":
        return get_context("spawn")
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        from multiprocessing import forkserver

        # Ignored, and so inherited through exec: the server ignores it. Blocked as well, so that a Ctrl-C in
        # this moment waits (Linux never discards a blocked signal) for the handler restored below.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        ctrl_c = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            forkserver.ensure_running()  # no-op once running
        finally:
            signal.signal(signal.SIGINT, ctrl_c)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return get_context("forkserver")


@contextlib.contextmanager
def worker_pool(processes: int, initializer, initargs: tuple):
    """A pool of ``processes`` workers of ``worker_context``, terminated when the ``with`` body ends. Ctrl-C
    while the pool starts is held until every worker has started, then delivered: the pool is stopped whole,
    and no worker is left half-started (it would print a traceback once this process is gone)."""
    pressed: list[int] = []
    in_main_thread = threading.current_thread() is threading.main_thread()
    ctrl_c = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum)) if in_main_thread else None
    try:
        pool = worker_context().Pool(processes, initializer=initializer, initargs=initargs)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, ctrl_c)
    try:
        if pressed:
            signal.raise_signal(signal.SIGINT)  # to the handler that was there: KeyboardInterrupt, normally
        yield pool
    finally:
        pool.terminate()


def is_auto(value) -> bool:
    """True for the word "auto" of an option or config value, in any case and with spaces around it."""
    return isinstance(value, str) and value.strip().lower() == "auto"


def resolve_device(device: str = "auto") -> str:
    """Map ``auto|cpu|cuda`` (or ``cuda:N``) to a torch device string, with a clear error if CUDA is absent."""
    if device == "cpu":  # without importing torch: embed's aligning workers never load it
        return "cpu"
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FacepipeError(
                f"--device {device} was asked for, but PyTorch sees no CUDA device here; use --device cpu or auto."
            )
        return device
    raise FacepipeError(f"unknown device {device!r}: use auto, cpu or cuda")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.manual_seed(seed)


def _fixed_thread_runtimes(threads: int) -> None:
    """Turn off OpenMP's and MKL's dynamic adjustment of the thread count (each may run a parallel region or a
    matrix product on fewer threads than asked for, which then sums its partial results in another order) and
    ask both for ``threads``."""
    import ctypes

    import torch

    torch.set_num_threads(threads)  # ATen's, OpenMP's and MKL's thread count
    library = Path(torch.__file__).parent / "lib"
    for name, switch in (("libgomp.so.1", "omp_set_dynamic"), ("libtorch_cpu.so", "MKL_Set_Dynamic")):
        try:
            getattr(ctypes.CDLL(str(library / name)), switch)(0)
        except (
            OSError,
            AttributeError,
        ):  # another build of PyTorch (no bundled libgomp, no MKL): nothing to turn off
            pass


@contextlib.contextmanager
def reproducible_torch() -> Iterator[None]:
    """PyTorch's deterministic kernels (its own, oneDNN's and cuDNN's) on a fixed number of threads (the CPUs
    this process may use, not a number the machine's load could lower) inside the block, its settings restored
    after it (OpenMP's and MKL's dynamic thread adjustment stays off): some default kernels sum in an order that
    depends on how many threads ran them or how their threads happened to run (on a GPU, atomic adds), so
    another process starting beside a training could change the weights it ends with."""
    import torch

    flags = torch.backends.mkldnn, torch.backends.cudnn
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        flags[0].deterministic,
        flags[1].deterministic,
        flags[1].benchmark,
    )
    threads = torch.get_num_threads()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's deterministic workspace
    torch.use_deterministic_algorithms(True, warn_only=True)  # warn_only: ops with no such kernel still run
    flags[0].deterministic, flags[1].deterministic, flags[1].benchmark = True, True, False
    _fixed_thread_runtimes(usable_cpus())
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have a deterministic implementation")
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        flags[0].deterministic, flags[1].deterministic, flags[1].benchmark = before[2:]


def progress(iterable=None, *, desc: str, total: int | None = None, unit: str = "it", enabled: bool = True):
    """A tqdm progress bar on stderr, shown only when ``enabled`` (quiet runs and tests turn it off)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True)
