"""Stage 2: turn face crops into embedding vectors (one row per crop) with a face recognition network."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from facepipe import __version__
from facepipe.common import FacepipeError, progress
from facepipe.formats import (
    DETECT_PARAMS_JSON,
    DETECTION_COLUMNS,
    DETECTIONS_CSV,
    EMBEDDINGS_CSV,
    ERROR_COLUMNS,
    Embeddings,
    embed_errors_path,
    read_csv,
    read_embeddings,
    read_json,
    sidecar_path,
    write_csv_atomic,
    write_embeddings,
)
from facepipe.images import ImageReadError, collect_images, load_image_rgb
from facepipe.models import Embedder

MODELS = ("vggface2-resnet50", "dlib-resnet128")
DEFAULT_MODEL = "vggface2-resnet50"
PRECISIONS = ("fp32", "bf16")
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

    def line(self) -> str:
        return (
            f"embed: {self.crops} crops, {self.embedded} embedded with {self.model} ({self.dim}-d), {self.errors} errors "
            f"({self.embedded_now} embedded now, {self.skipped} already done) -> {self.output} in {self.seconds:.1f}s"
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
            detections = read_csv(crops_dir / DETECTIONS_CSV, DETECTION_COLUMNS, "detections CSV")
            names = list(dict.fromkeys(detections["crop"].astype(str)))
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
    margin = None
    if (crops_dir / DETECT_PARAMS_JSON).is_file():
        margin = read_json(crops_dir / DETECT_PARAMS_JSON).get("params", {}).get("margin")
    return CropList(crops_dir=crops_dir, names=names, margin=None if margin is None else float(margin))


def load_embedder(
    model: str = DEFAULT_MODEL,
    *,
    weights: str | os.PathLike | None = None,
    batch_size: int = 32,
    device: str = "auto",
    precision: str = "fp32",
    face_margin: float | None = None,
) -> Embedder:
    """Build the named model. ``face_margin`` tells dlib where the face is in a detect crop (see dlib_resnet)."""
    if precision not in PRECISIONS:
        raise FacepipeError(f"unknown precision {precision!r}: use fp32 or bf16")
    if model == "dlib-resnet128":
        import dlib

        from facepipe.models.dlib_resnet import DlibResNet128Embedder

        if precision != "fp32":
            raise FacepipeError("dlib-resnet128 runs in fp32 only; drop --precision bf16")
        if device.startswith("cuda") and not dlib.DLIB_USE_CUDA:
            raise FacepipeError("this dlib build has no CUDA support: use --device cpu (or auto) with dlib-resnet128")
        return DlibResNet128Embedder(face_margin=face_margin, batch_size=batch_size)
    if model == "vggface2-resnet50":
        try:
            from facepipe.models.vggface2 import VGGFace2ResNet50Embedder
            from facepipe.weights import ensure_vggface2_weights
        except ImportError as error:
            raise FacepipeError(f"vggface2-resnet50 is not available in this installation ({error})") from None
        return VGGFace2ResNet50Embedder(ensure_vggface2_weights(weights), device=device, precision=precision,
                                        batch_size=batch_size)
    raise FacepipeError(f"unknown model {model!r}: choose one of {', '.join(MODELS)}")


def _decode(path: Path) -> tuple[np.ndarray | None, str]:
    try:
        return load_image_rgb(path), ""
    except ImageReadError as error:
        return None, str(error)


def _decoded(paths: list[Path], workers: int) -> Iterator[tuple[np.ndarray | None, str]]:
    """Decode crops in order, in ``workers`` processes when more than one."""
    if workers <= 1:
        yield from map(_decode, paths)
        return
    context = get_context("fork" if os.name == "posix" else "spawn")
    with context.Pool(workers) as pool:
        yield from pool.imap(_decode, paths, chunksize=8)


def _previous_rows(output: Path, meta: dict, force: bool) -> dict[str, np.ndarray]:
    """Vectors of an earlier run into ``output`` that can be kept, by crop name (none with ``force``)."""
    if force or not output.is_file():
        return {}
    if not sidecar_path(output).is_file():
        raise FacepipeError(f"{output} exists but has no sidecar {sidecar_path(output).name}, so its model is "
                            "unknown; rerun with --force to replace it, or choose another output file")
    previous = read_embeddings(output)
    if previous.model != meta["model"]:
        raise FacepipeError(f"{output} holds {previous.model} embeddings, not {meta['model']}; "
                            "rerun with --force to replace them, or choose another output file")
    changed = [f for f in IDENTITY_FIELDS if previous.meta.get(f) != meta.get(f)]
    if changed:
        raise FacepipeError(f"{output} was made with other settings ({', '.join(changed)} differ); "
                            "rerun with --force to replace it, or choose another output file")
    return dict(zip(previous.names, previous.vectors))


def _remove_own_temporaries(output: Path) -> None:
    """Delete the temporary files a killed run left beside ``output`` (only ours, never others')."""
    for name in (output.name, sidecar_path(output).name, embed_errors_path(output).name):
        for leftover in output.parent.glob(f".{name}.*.tmp*"):
            leftover.unlink(missing_ok=True)


def embed(
    crops: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike = EMBEDDINGS_CSV,
    *,
    model: str = DEFAULT_MODEL,
    weights: str | os.PathLike | None = None,
    batch_size: int = 32,
    device: str = "auto",
    precision: str = "fp32",
    workers: int = 2,
    force: bool = False,
    show_progress: bool = True,
    checkpoint_seconds: float = 30.0,
) -> EmbedSummary:
    """Embed every crop in ``crops`` into ``output`` (CSV ``name, e0..`` or ``.npz``) plus its sidecar JSON.

    Resumable: crops already in ``output`` (same model and settings) are skipped unless ``force``;
    the output is rewritten atomically every ``checkpoint_seconds``, so a killed run loses at most that.
    Unreadable crops are listed in ``<output>.errors.csv`` and the run goes on.
    """
    started = time.monotonic()
    if batch_size < 1:
        raise FacepipeError(f"batch size must be at least 1, got {batch_size}")
    crop_list = list_crops(crops)
    output = Path(os.path.abspath(output))
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_own_temporaries(output)
    embedder = load_embedder(model, weights=weights, batch_size=batch_size, device=device, precision=precision,
                             face_margin=crop_list.margin)
    meta = dict(embedder.describe(), crops_dir=str(crop_list.crops_dir), facepipe_version=__version__)
    done = _previous_rows(output, meta, force)
    todo = [name for name in crop_list.names if name not in done]
    skipped = len(crop_list.names) - len(todo)
    errors: list[dict] = []

    def checkpoint() -> None:
        names = [name for name in crop_list.names if name in done]
        if names:
            write_embeddings(output, Embeddings(names, np.stack([done[n] for n in names]), meta))
        write_csv_atomic(pd.DataFrame(errors, columns=ERROR_COLUMNS), embed_errors_path(output))

    last_checkpoint = time.monotonic()
    paths = [crop_list.crops_dir / name for name in todo]
    bar = progress(desc=f"embed ({embedder.name})", total=len(todo), unit="crop", enabled=show_progress)
    try:
        batch_names: list[str] = []
        batch_images: list[np.ndarray] = []
        for index, (rgb, reason) in enumerate(_decoded(paths, workers)):
            if rgb is None:
                errors.append({"path": str(paths[index]), "reason": reason})
                bar.update(1)
            else:
                batch_names.append(todo[index])
                batch_images.append(rgb)
            if len(batch_images) == batch_size or (index == len(paths) - 1 and batch_images):
                done.update(zip(batch_names, embedder.embed(batch_images)))
                bar.update(len(batch_names))
                batch_names, batch_images = [], []
                if time.monotonic() - last_checkpoint > checkpoint_seconds:
                    checkpoint()
                    last_checkpoint = time.monotonic()
    except BaseException:
        checkpoint()  # keep what is done, e.g. after Ctrl-C
        raise
    finally:
        bar.close()
    checkpoint()
    embedded = sum(name in done for name in crop_list.names)
    if embedded == 0:
        raise FacepipeError(f"none of the {len(crop_list.names)} crops could be read; "
                            f"see {embed_errors_path(output)}")
    return EmbedSummary(
        crops=len(crop_list.names),
        embedded=embedded,
        embedded_now=len(todo) - len(errors),
        skipped=skipped,
        errors=len(errors),
        model=embedder.name,
        dim=embedder.dim,
        output=output,
        errors_file=embed_errors_path(output),
        seconds=time.monotonic() - started,
    )

