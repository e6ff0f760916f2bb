"""Where detect and embed do their work: ``local`` (this process and its worker processes, the default) or
``ray`` (Ray Data stages on a Ray cluster: ``pip install -e '.[ray]'``).

The engines differ only in who computes; the stage itself (what is already done, checkpoints, the output
files) stays in the facepipe process, so both write the same files and resume the same way. Under Ray every
node must see the photos, the output folder and the weights at the same paths (one machine, or a shared file
system) and have facepipe installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections import Counter
from typing import Iterator, Sequence

import numpy as np

from facepipe.common import FacepipeError

LOCAL, RAY = "local", "ray"
ENGINES = (LOCAL, RAY)
DEFAULT_ENGINE = LOCAL
NODE_COLUMN = "node"  # every batch a Ray worker returns says which node computed it
ERROR_COLUMN = "facepipe_error"  # or, alone, why it could not
MAX_BLOCKS = 4096  # a Ray task per batch (actors share the work evenly) up to this many tasks


def check_engine(engine: str, ray_address: str | None = None) -> None:
    """Refuse an unknown engine, a Ray address without Ray, Ray when it is not installed, and a Ray address
    where nothing answers: before any work."""
    if engine not in ENGINES:
        raise FacepipeError(f"unknown engine {engine!r}: use {' or '.join(ENGINES)}")
    if engine == LOCAL:
        if ray_address:
            raise FacepipeError("--ray-address needs --engine ray")
        return
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise FacepipeError(
            "the ray engine needs Ray Data: pip install -e '.[ray]' (or pip install 'ray[data]')"
        ) from None
    _check_reachable(ray_address)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Ray's C++ core prints start-up lines on file descriptor 2: keep them, and show them only on failure."""
    with tempfile.TemporaryFile(mode="w+b") as captured:
        saved = os.dup(2)
        sys.stderr.flush()
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Connected to Ray for the block: to the cluster at ``address`` ("auto": the one this machine is part
    of), or else to a local cluster started here with this machine's CPUs and stopped afterwards. An existing
    connection (a caller's ``ray.init``) is used as it is and left open."""
    check_engine(RAY, address)
    import ray
    import ray.data

    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # else every actor start logs an "E" line
    logging.getLogger("ray").setLevel(logging.WARNING)
    try:
        with _quiet_stderr():
            ray.init(
                address=address or None,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
                configure_logging=False,
            )
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise FacepipeError(f"could not connect to {where}: {error}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """A clear error at once when nothing listens at a ``host:port`` address (Ray itself retries for minutes)."""
    import socket

    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise FacepipeError(f"--ray-address {address!r} is not host:port (e.g. 10.0.0.5:6379) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise FacepipeError(
            f"no Ray cluster answers at {address} ({error.strerror or error}); start one there "
            "with `ray start --head`, or leave out --ray-address to start one here"
        ) from None


class _NodeTagged:
    """A stage's batch worker, built once per Ray actor, whose output batches also say the actor's node. A
    FacepipeError (bad weights...) comes back as a batch of its message: Ray's wrappers would lose it."""

    def __init__(self, worker: type, args: tuple):
        self.worker = worker(*args)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ray

        try:
            result = self.worker(batch)
        except FacepipeError as error:
            return {ERROR_COLUMN: np.array([str(error)], dtype=object)}
        rows = len(next(iter(result.values()))) if result else 0
        result[NODE_COLUMN] = np.full(rows, ray.get_runtime_context().get_node_id())
        return result


def cluster_gpus() -> int:
    """The GPUs of the connected Ray cluster."""
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def ray_map(
    items: dict[str, Sequence],
    worker: type,
    args: tuple = (),
    *,
    batch_size: int,
    gpus: bool = False,
    nodes: Counter | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Run ``worker(*args)`` (a class whose instances turn a batch, a dict of numpy columns, into another) over
    ``items`` (columns of equal length) as a Ray Data ``map_batches`` stage with a pool of actors: one per GPU
    of the cluster with ``gpus``, else one per CPU, so each loads its model once. Yields the output batches as
    they finish, in no set order; ``nodes`` counts the rows each node computed. Ray retries the batches of an
    actor that died, on a new one. Call it inside ``ray_session``."""
    import ray
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its "execution finished" and "no progress bar" lines
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the stage shows its own
    context.print_on_execution_start = False
    actors = cluster_gpus() if gpus else int(ray.cluster_resources().get("CPU", 1))
    rows = len(next(iter(items.values())))
    batch_size = max(1, min(batch_size, -(-rows // (4 * max(1, actors)))))  # a small job still feeds every actor
    dataset = ray.data.from_items(
        [{key: items[key][i] for key in items} for i in range(rows)],
        override_num_blocks=max(1, min(-(-rows // batch_size), MAX_BLOCKS)),
    )
    mapped = dataset.map_batches(
        _NodeTagged,
        fn_constructor_args=(worker, args),
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=max(1, actors)),
        num_cpus=1,
        num_gpus=1 if gpus else 0,
    )
    for batch in mapped.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
        if ERROR_COLUMN in batch:
            raise FacepipeError(f"a Ray worker failed: {batch[ERROR_COLUMN][0]}")
        if nodes is not None:
            nodes.update(batch[NODE_COLUMN].tolist())
        yield batch


def ray_nodes_phrase(nodes: dict) -> str:
    """ ", on 2 Ray nodes (700 + 724)" for a stage's summary line; empty for the local engine."""
    if not nodes:
        return ""
    counts = sorted(nodes.values(), reverse=True)
    return f", on {len(counts)} Ray node{'s' if len(counts) > 1 else ''} ({' + '.join(map(str, counts))})"
