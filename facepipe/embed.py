"""Stage 2: turn face crops into embedding vectors (one row per crop) with a face recognition network."""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from facepipe import __version__
from facepipe.common import FacepipeError, progress, remove_own_temporaries, worker_pool
from facepipe.crops import detect_margin
from facepipe.engine import DEFAULT_ENGINE, RAY, check_engine, ray_nodes_phrase, ray_session
from facepipe.formats import (
    DETECTIONS_CSV,
    EMBEDDINGS_CSV,
    ERROR_COLUMNS,
    Embeddings,
    UnmatchedSidecarError,
    embed_checkpoint_path,
    embed_errors_path,
    read_detections,
    read_embeddings,
    read_embeddings_checkpoint,
    sidecar_path,
    write_csv_atomic,
    write_embeddings,
    write_embeddings_checkpoint,
)
from facepipe.images import ImageReadError, collect_images, load_image_rgb
from facepipe.limits import usable_workers
from facepipe.locks import locks_output
from facepipe.models import Embedder
from facepipe.models.registry import load_embedder
from facepipe.settings import EmbedSettings

# Sidecar fields that must agree before an existing output's rows are reused.
IDENTITY_FIELDS = ("model", "dimension", "preprocessing", "weights_sha256", "precision", "crops_dir")


@dataclass
class EmbedSummary:
    """What an embed run did, over all crops asked for."""

    crops: int
    embedded: int
    embedded_now: int
    skipped: int
    errors: int
    model: str
    dim: int
    output: Path
    errors_file: Path
    seconds: float
    nodes: dict = field(default_factory=dict)  # Ray engine: crops embedded now per node id

    def line(self) -> str:
        return (
            f"embed: {self.crops} crops, {self.embedded} embedded with {self.model} ({self.dim}-d), {self.errors} errors "
            f"({self.embedded_now} embedded now{ray_nodes_phrase(self.nodes)}, {self.skipped} already done) -> "
            f"{self.output} in {self.seconds:.1f}s"
        )


@dataclass
class CropList:
    """The crops to embed: their folder, their names relative to it, and the detect margin if known."""

    crops_dir: Path
    names: list[str]
    margin: float | None


def list_crops(crops: str | os.PathLike | Sequence[str | os.PathLike]) -> CropList:
    """Resolve ``crops``: a folder of crops (in its ``detections.csv`` order if present, else every image
    in it, recursively), or crop files / text files listing them (named relative to their common folder).
    """
    if isinstance(crops, (str, os.PathLike)) and Path(crops).is_dir():
        crops_dir = Path(os.path.abspath(crops))
        if (crops_dir / DETECTIONS_CSV).is_file():
            names = read_detections(crops_dir / DETECTIONS_CSV)["crop"].tolist()
        else:
            names = [p.relative_to(crops_dir).as_posix() for p in collect_images([crops_dir])]
    else:
        items = [crops] if isinstance(crops, (str, os.PathLike)) else list(crops)
        files = collect_images(items)
        if not files:
            raise FacepipeError("no crop images found in the given inputs")
        crops_dir = Path(os.path.commonpath([str(p.parent) for p in files]))
        names = [p.relative_to(crops_dir).as_posix() for p in files]
    if not names:
        raise FacepipeError(f"no crop images found in {crops_dir}")
    return CropList(crops_dir=crops_dir, names=names, margin=detect_margin(crops_dir))


def _decode(path: Path) -> tuple[np.ndarray | None, str]:
    try:
        return load_image_rgb(path), ""
    except ImageReadError as error:
        return None, str(error)


_pool_embedder: list[Embedder] = []  # a worker process's own embedder, whose network it never builds


def _init_pool_worker(settings: dict) -> None:
    _pool_embedder[:] = [load_embedder(**dict(settings, device="cpu"), show_progress=False)]


def _prepare(path: Path, embedder: Embedder | None = None) -> tuple[np.ndarray | None, str]:
    """A crop decoded and made ready for the network (``Embedder.prepare``), or None and why it is unreadable."""
    rgb, reason = _decode(path)
    return (None, reason) if rgb is None else ((embedder or _pool_embedder[0]).prepare(rgb), "")


def _prepared(
    paths: list[Path], embedder: Embedder, settings: dict, workers: int
) -> Iterator[tuple[np.ndarray | None, str]]:
    """``_prepare`` of each crop, in order: in ``workers`` processes when more than one, each with its own
    embedder of ``settings`` (``load_embedder``'s arguments), so that decoding and aligning run beside the
    network, which stays in this process."""
    if workers <= 1:
        yield from (_prepare(path, embedder) for path in paths)
        return
    with worker_pool(workers, _init_pool_worker, (settings,)) as pool:
        yield from pool.imap(_prepare, paths, chunksize=8)


def _check_same_settings(path: Path, previous: dict, meta: dict) -> None:
    if previous.get("model") != meta["model"]:
        raise FacepipeError(
            f"{path} holds {previous.get('model')} embeddings, not {meta['model']}; "
            "rerun with --force to replace them, or choose another output file"
        )
    changed = [f for f in IDENTITY_FIELDS if previous.get(f) != meta.get(f)]
    if changed:
        raise FacepipeError(
            f"{path} was made with other settings ({', '.join(changed)} differ); "
            "rerun with --force to replace it, or choose another output file"
        )


def _previous_rows(output: Path, meta: dict, force: bool) -> dict[str, np.ndarray]:
    """Vectors of earlier runs into ``output`` (finished, or a killed run's progress file) that can be kept."""
    checkpoint = embed_checkpoint_path(output)
    if force:
        checkpoint.unlink(missing_ok=True)
        return {}
    rows: dict[str, np.ndarray] = {}
    if checkpoint.is_file():
        progress_file = read_embeddings_checkpoint(checkpoint)
        _check_same_settings(checkpoint, progress_file.meta, meta)
        rows.update(zip(progress_file.names, progress_file.vectors))
    if output.is_file():
        try:
            if not sidecar_path(output).is_file():
                raise FacepipeError(
                    f"{output} exists but has no sidecar {sidecar_path(output).name}, so its model "
                    "is unknown; rerun with --force to replace it, or choose another output file"
                )
            previous = read_embeddings(output)
            _check_same_settings(output, previous.meta, meta)
        except UnmatchedSidecarError:  # never trusted: what the progress file holds is kept, the rest redone
            return rows
        except FacepipeError:
            if rows:  # a killed run was replacing this file (--force, or killed while writing it): go on with that
                return rows
            raise
        rows.update(zip(previous.names, previous.vectors))
    return rows


def _remove_own_temporaries(output: Path) -> None:
    """Delete the temporary files a killed run left beside ``output`` (only ours, never others')."""
    names = {
        path.name for path in (output, sidecar_path(output), embed_errors_path(output), embed_checkpoint_path(output))
    }
    remove_own_temporaries(output.parent, names.__contains__)


@dataclass
class _EmbedState:
    """The embeddings done so far (by crop name), the unreadable crops, and how to checkpoint them."""

    names: list[str]  # every crop, in output order
    done: dict[str, np.ndarray]
    meta: dict
    dim: int
    output: Path
    errors: list[dict] = field(default_factory=list)

    def in_order(self) -> Embeddings:
        names = [name for name in self.names if name in self.done]
        vectors = np.stack([self.done[n] for n in names]) if names else np.zeros((0, self.dim), np.float32)
        return Embeddings(names, vectors, self.meta)

    def checkpoint(self) -> None:
        write_embeddings_checkpoint(embed_checkpoint_path(self.output), self.in_order())
        write_csv_atomic(pd.DataFrame(self.errors, columns=ERROR_COLUMNS), embed_errors_path(self.output))


def _local_batches(
    paths: list[Path], todo: list[str], embedder: Embedder, settings: dict, workers: int, batch_size: int
) -> Iterator[tuple[list[str], np.ndarray, list[dict]]]:
    """The local engine: (names, their vectors, error rows of unreadable crops) for the crops ``todo`` (files
    ``paths``), a batch at a time, decoded and prepared in ``workers`` processes and embedded here."""
    names: list[str] = []
    images: list[np.ndarray] = []
    errors: list[dict] = []
    for index, (prepared, reason) in enumerate(_prepared(paths, embedder, settings, workers)):
        if prepared is None:
            errors.append({"path": str(paths[index]), "reason": reason})
        else:
            names.append(todo[index])
            images.append(prepared)
        if len(images) == batch_size or index == len(paths) - 1:
            vectors = embedder.embed_prepared(images) if images else np.zeros((0, embedder.dim), np.float32)
            yield names, vectors, errors
            names, images, errors = [], [], []


class CropBatchEmbedder:
    """The Ray engine's worker: loads the model once (``settings``: ``load_embedder``'s arguments); a batch of
    crop names (column ``name``, relative to ``crops_dir``) to their vectors (``vector``) and, for crops that
    could not be read, why (``error``; their vectors are zeros)."""

    def __init__(self, crops_dir: Path, settings: dict):
        self.crops_dir = crops_dir
        self.embedder = load_embedder(**settings, show_progress=False)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [str(name) for name in batch["name"]]
        decoded = [_decode(self.crops_dir / name) for name in names]
        vectors = np.zeros((len(names), self.embedder.dim), np.float32)
        readable = [i for i, (rgb, _) in enumerate(decoded) if rgb is not None]
        if readable:
            vectors[readable] = self.embedder.embed([decoded[i][0] for i in readable])
        return {
            "name": np.array(names, dtype=object),
            "vector": vectors,
            "error": np.array([reason for _, reason in decoded], dtype=object),
        }


def _ray_batches(
    crops_dir: Path, todo: list[str], settings: dict, batch_size: int, nodes: Counter
) -> Iterator[tuple[list[str], np.ndarray, list[dict]]]:
    """The Ray engine: what ``_local_batches`` gives, from an actor per GPU of the cluster (when it has any and
    ``settings`` allow CUDA), else per CPU, each loading the model once; ``nodes`` counts crops per node."""
    from facepipe.engine import cluster_gpus, ray_map

    gpus = settings["device"] != "cpu" and cluster_gpus() > 0
    if settings["device"].startswith("cuda") and not gpus:
        raise FacepipeError(f"--device {settings['device']} was asked for, but the Ray cluster has no GPU")
    settings = dict(settings, device="cuda" if gpus else "cpu")
    for batch in ray_map(
        {"name": todo}, CropBatchEmbedder, (crops_dir, settings), batch_size=batch_size, gpus=gpus, nodes=nodes
    ):
        failed = batch["error"] != ""
        names = [str(name) for name in batch["name"]]
        yield (
            [name for name, bad in zip(names, failed) if not bad],
            batch["vector"][~failed],
            [
                {"path": str(crops_dir / name), "reason": str(reason)}
                for name, reason, bad in zip(names, batch["error"], failed)
                if bad
            ],
        )


def _embed_missing(
    state: _EmbedState,
    batches: Iterator[tuple[list[str], np.ndarray, list[dict]]],
    total: int,
    desc: str,
    checkpoint_seconds: float,
    show_progress: bool,
) -> None:
    """Take the embedded ``batches`` into ``state`` (unreadable crops into ``state.errors``), checkpointing it
    every ``checkpoint_seconds``."""
    last_checkpoint = time.monotonic()
    with progress(desc=desc, total=total, unit="crop", enabled=show_progress) as bar:
        for names, vectors, errors in batches:
            state.done.update(zip(names, vectors))
            state.errors.extend(errors)
            bar.update(len(names) + len(errors))
            if time.monotonic() - last_checkpoint > checkpoint_seconds:
                state.checkpoint()
                last_checkpoint = time.monotonic()


@locks_output(lambda args: Path(os.path.abspath(args["output"])).parent)
def embed(
    crops: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike = EMBEDDINGS_CSV,
    *,
    model: str = EmbedSettings.model,
    weights: str | os.PathLike | None = EmbedSettings.weights,
    batch_size: int = EmbedSettings.batch_size,
    device: str = EmbedSettings.device,
    precision: str = EmbedSettings.precision,
    workers: int = EmbedSettings.workers,
    engine: str = DEFAULT_ENGINE,
    ray_address: str | None = None,
    force: bool = False,
    dlib_crop: str = EmbedSettings.dlib_crop,
    dlib_padding: float = EmbedSettings.dlib_padding,
    dlib_mirror: bool = EmbedSettings.dlib_mirror,
    show_progress: bool = True,
    checkpoint_seconds: float = 30.0,
) -> EmbedSummary:
    """Embed every crop in ``crops`` into ``output`` (CSV ``name, e0..`` or ``.npz``) plus its sidecar JSON.

    Resumable: crops already in ``output`` (same model and settings) are skipped unless ``force``;
    progress is saved atomically every ``checkpoint_seconds`` into ``<output>.partial.npz``, so a killed
    run loses at most that. Unreadable crops are listed in ``<output>.errors.csv`` and the run goes on.
    ``engine`` "ray" embeds on the Ray cluster at ``ray_address`` (else a local one), an actor per GPU or CPU
    each loading the model once, into the same files (see ``facepipe.engine``).
    """
    started = time.monotonic()
    settings = dict(
        model=model,
        weights=weights,
        batch_size=batch_size,
        device=device,
        precision=precision,
        dlib_crop=dlib_crop,
        dlib_padding=dlib_padding,
        dlib_mirror=dlib_mirror,
    )
    checked = EmbedSettings(workers=workers, **settings)
    check_engine(engine, ray_address)
    crop_list = list_crops(crops)
    output = Path(os.path.abspath(output))
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_own_temporaries(output)
    settings.update(
        model=checked.model, device=checked.device, precision=checked.precision, face_margin=crop_list.margin
    )
    # Under Ray the model runs in the actors: this one, on the CPU, only describes it (and fetches the weights).
    embedder = load_embedder(
        **dict(settings, device="cpu" if engine == RAY else checked.device), show_progress=show_progress
    )
    meta = dict(embedder.describe(), crops_dir=str(crop_list.crops_dir), facepipe_version=__version__)
    done = _previous_rows(output, meta, force)
    todo = [name for name in crop_list.names if name not in done]
    state = _EmbedState(crop_list.names, done, meta, embedder.dim, output)
    nodes: Counter = Counter()
    with contextlib.ExitStack() as stack:
        if engine == RAY:
            stack.enter_context(ray_session(ray_address))
            actor_settings = dict(
                settings, precision=meta["precision"], weights=getattr(embedder, "weights_path", None)
            )
            batches = _ray_batches(crop_list.crops_dir, todo, actor_settings, batch_size, nodes)
        else:
            batches = _local_batches(
                [crop_list.crops_dir / name for name in todo],
                todo,
                embedder,
                settings,
                usable_workers(workers),
                batch_size,
            )
        try:
            _embed_missing(state, batches, len(todo), f"embed ({embedder.name})", checkpoint_seconds, show_progress)
        except BaseException:
            state.checkpoint()  # keep what is done, e.g. after Ctrl-C
            raise
    return _finish(state, crop_list, embedder, len(todo), time.monotonic() - started, nodes)


def _finish(
    state: _EmbedState, crop_list: CropList, embedder: Embedder, todo: int, seconds: float, nodes: Counter
) -> EmbedSummary:
    """Write the embeddings and the errors of a finished run; its summary."""
    output = state.output
    errors = sorted(state.errors, key=lambda row: row["path"])  # the same file whatever order the engine gave
    write_csv_atomic(pd.DataFrame(errors, columns=ERROR_COLUMNS), embed_errors_path(output))
    result = state.in_order()
    if not result.names:
        embed_checkpoint_path(output).unlink(missing_ok=True)
        raise FacepipeError(
            f"none of the {len(crop_list.names)} crops could be read; see {embed_errors_path(output)}"
        )
    write_embeddings(output, result)
    embed_checkpoint_path(output).unlink(missing_ok=True)  # only now: it covers a kill during the line above
    return EmbedSummary(
        crops=len(crop_list.names),
        embedded=len(result.names),
        embedded_now=todo - len(state.errors),
        skipped=len(crop_list.names) - todo,
        errors=len(state.errors),
        model=embedder.name,
        dim=embedder.dim,
        output=output,
        errors_file=embed_errors_path(output),
        seconds=seconds,
        nodes=dict(nodes),
    )
