"""Stage 1: find every face in every image (by default the Haar cascade, then dlib's HOG detector where Haar found
none, then dlib's CNN where neither did; see ``facepipe.detectors``) and save square crops."""

from __future__ import annotations

import hashlib
import os
import re
import time
import unicodedata
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from facepipe import __version__
from facepipe.common import FacepipeError, progress, remove_stale_temporaries
from facepipe.formats import (
    DETECT_PARAMS_JSON,
    DETECTION_COLUMNS,
    DETECTIONS_CSV,
    ERROR_COLUMNS,
    ERRORS_CSV,
    SOURCE_COLUMNS,
    SOURCES_CSV,
    read_csv,
    read_json,
    write_csv_atomic,
    write_json_atomic,
)
from facepipe.detectors import (
    CNN,
    COMBINED_CNN_UPSAMPLE,
    DETECTORS,
    HAAR,
    COMBINED,
    HOG,
    CnnFinder,
    FaceFinder,
    FallbackFinder,
    HaarFinder,
    HogFinder,
    cascade_path,
    find_faces,
)
from facepipe.images import ImageReadError, collect_images, load_image_rgb, resize_square, save_image_atomic


@dataclass(frozen=True)
class DetectorParams:
    """Everything that decides which crops an image gives; stored in ``detect.json``."""

    detector: str = COMBINED
    max_side: int = 640
    cascade: str = "haarcascade_frontalface_alt.xml"
    scale_factor: float = 1.1
    min_neighbors: int = 45
    min_size: int = 30
    dlib_upsample: int = 1
    dlib_threshold: float = 0.0
    cnn_max_side: int = 512
    margin: float = 0.2
    size: int = 224
    largest_only: bool = False
    crop_format: str = "jpg"


@dataclass
class DetectSummary:
    """What a detect run did: counts over all sources in the output folder, and this run's share."""

    images: int
    faces: int
    errors: int
    processed_now: int
    skipped: int
    out_dir: Path
    seconds: float

    def line(self) -> str:
        return (
            f"detect: {self.images} images, {self.faces} faces, {self.errors} errors "
            f"({self.processed_now} processed now, {self.skipped} already done) -> {self.out_dir} in {self.seconds:.1f}s"
        )


def check_params(params: DetectorParams) -> None:
    """Refuse settings no detector can use, before anything is read or written."""
    if params.detector not in DETECTORS:
        raise FacepipeError(f"unknown detector {params.detector!r}: use {', '.join(DETECTORS)}")
    if params.crop_format not in ("jpg", "png"):
        raise FacepipeError("crop format must be jpg or png")
    if not 0 <= params.margin <= 2:
        raise FacepipeError("margin must lie between 0 and 2 (a fraction of the face box per side)")
    if min(params.max_side, params.cnn_max_side) < 64:
        raise FacepipeError("max side and CNN max side must be at least 64 pixels")
    if not 0 <= params.dlib_upsample <= 3:
        raise FacepipeError(f"dlib upsample must lie between 0 and 3, got {params.dlib_upsample}")
    if params.detector in (HAAR, COMBINED):
        cascade_path(params.cascade)


def crop_name(source: Path, face_index: int, crop_format: str) -> str:
    """A crop file name that is readable, unique per source path, and the same on every run."""
    stem = unicodedata.normalize("NFKD", source.stem).encode("ascii", "ignore").decode("ascii")
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:60] or "image"
    digest = hashlib.sha1(str(source).encode("utf-8")).hexdigest()[:10]
    return f"{stem}_{digest}_{face_index}.{crop_format}"


def square_crop(image: np.ndarray, box: Sequence[int], margin: float, size: int) -> np.ndarray:
    """Cut a square around ``box`` (x, y, w, h) grown by ``margin`` per side, edge-padded, resized to ``size``."""
    import cv2

    x, y, w, h = (int(v) for v in box)
    side = int(round(max(w, h) * (1.0 + 2.0 * margin)))
    cx, cy = x + w / 2.0, y + h / 2.0
    left, top = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    height, width = image.shape[:2]
    pad = max(0, -left, -top, left + side - width, top + side - height)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        left, top = left + pad, top + pad
    return resize_square(image[top : top + side, left : left + side], size)


_worker_state: dict = {}


def face_finder(params: DetectorParams) -> FaceFinder:
    """The detector ``params`` name, built with their settings."""
    if params.detector == CNN:
        return CnnFinder(params.dlib_upsample, params.dlib_threshold, params.cnn_max_side)
    if params.detector == HOG:
        return HogFinder(params.dlib_upsample, params.dlib_threshold)
    haar = HaarFinder(params.cascade, params.scale_factor, params.min_neighbors, params.min_size)
    if params.detector == HAAR:
        return haar
    return FallbackFinder(haar, HogFinder(params.dlib_upsample, params.dlib_threshold),
                          CnnFinder(COMBINED_CNN_UPSAMPLE, params.dlib_threshold, params.cnn_max_side))


def _init_worker(params: DetectorParams, out_dir: Path) -> None:
    import cv2

    cv2.setNumThreads(1)
    _worker_state.update(finder=face_finder(params), params=params, out_dir=out_dir)


def _process_source(source: Path) -> tuple[dict, list[dict]]:
    """Detect and save the crops of one image; returns its sources.csv row and its detection rows."""
    params: DetectorParams = _worker_state["params"]
    try:
        rgb = load_image_rgb(source)
    except ImageReadError as error:
        return {"source": str(source), "status": "error", "faces": 0, "reason": str(error)}, []
    height, width = rgb.shape[:2]
    rows = []
    faces = find_faces(rgb, _worker_state["finder"], params.max_side)
    for index, face in enumerate(faces[:1] if params.largest_only else faces):
        name = crop_name(source, index, params.crop_format)
        save_image_atomic(_worker_state["out_dir"] / name, square_crop(rgb, face.box, params.margin, params.size))
        x, y, w, h = face.box
        rows.append(dict(crop=name, source=str(source), face_index=index, x=x, y=y, w=w, h=h,
                         source_width=width, source_height=height, detector=face.detector, score=face.score))
    return {"source": str(source), "status": "ok", "faces": len(rows), "reason": ""}, rows


def _load_previous(out_dir: Path, params: DetectorParams, force: bool) -> tuple[list[dict], list[dict]]:
    """Rows of an earlier run into ``out_dir`` that can be kept (none with ``force``)."""
    params_file = out_dir / DETECT_PARAMS_JSON
    if force or not params_file.is_file():
        return [], []
    previous = read_json(params_file).get("params", {})
    if previous != asdict(params):
        changed = sorted(k for k in set(previous) | set(asdict(params)) if previous.get(k) != asdict(params).get(k))
        raise FacepipeError(
            f"{out_dir} holds detections made with other parameters ({', '.join(changed)} differ); "
            "rerun with --force to redo them, or choose another output folder"
        )
    sources = read_csv(out_dir / SOURCES_CSV, SOURCE_COLUMNS, "sources CSV") if (out_dir / SOURCES_CSV).is_file() else None
    detections = read_csv(out_dir / DETECTIONS_CSV, DETECTION_COLUMNS, "detections CSV") if (out_dir / DETECTIONS_CSV).is_file() else None
    if sources is None or detections is None:
        return [], []
    sources["reason"] = sources["reason"].astype("string").fillna("").astype(str)
    return sources.to_dict("records"), detections.to_dict("records")


def _write_outputs(out_dir: Path, params: DetectorParams, sources: list[dict], detections: list[dict]) -> None:
    source_frame = pd.DataFrame(sources, columns=SOURCE_COLUMNS).sort_values("source", kind="stable")
    detection_frame = pd.DataFrame(detections, columns=DETECTION_COLUMNS).sort_values(["source", "face_index"], kind="stable")
    errors = source_frame[source_frame["status"] == "error"].rename(columns={"source": "path"})[ERROR_COLUMNS]
    write_json_atomic(out_dir / DETECT_PARAMS_JSON, {"params": asdict(params), "facepipe_version": __version__})
    write_csv_atomic(detection_frame, out_dir / DETECTIONS_CSV)
    write_csv_atomic(errors, out_dir / ERRORS_CSV)
    # sources.csv last: a source counts as done only once its crops and rows are on disk.
    write_csv_atomic(source_frame, out_dir / SOURCES_CSV)


def detect(
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike = "temp",
    params: DetectorParams | None = None,
    *,
    workers: int = 2,
    force: bool = False,
    show_progress: bool = True,
    checkpoint_seconds: float = 10.0,
) -> DetectSummary:
    """Detect faces in every image under ``inputs`` and save crops plus CSVs into ``out_dir``.

    Resumable: sources already listed in ``out_dir/sources.csv`` are skipped unless ``force``. With
    ``workers`` > 1 the worker processes are started by a fork server (a fork of a process that already ran
    dlib's CNN would hang), so a script that calls this needs the ``if __name__ == "__main__":`` guard.
    The CSVs are rewritten atomically every few seconds, so a killed run loses at most that much work.
    """
    started = time.monotonic()
    params = params or DetectorParams()
    check_params(params)
    out_dir = Path(os.path.abspath(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    images = collect_images(inputs)
    if not images:
        raise FacepipeError("no images found in the given inputs")

    kept_sources, kept_detections = _load_previous(out_dir, params, force)
    wanted = {str(p) for p in images}
    done = {row["source"] for row in kept_sources}
    sources = list(kept_sources)
    detections = list(kept_detections)
    todo = [p for p in images if str(p) not in done]

    last_checkpoint = time.monotonic()
    if todo:
        # forkserver, not fork: a worker forked from a process whose dlib CNN already ran hangs on its thread pool
        context = get_context("forkserver" if os.name == "posix" else "spawn")
        pool = context.Pool(max(1, workers), initializer=_init_worker, initargs=(params, out_dir)) if workers > 1 else None
        if pool is None:
            _init_worker(params, out_dir)
        results = pool.imap(_process_source, todo, chunksize=4) if pool else map(_process_source, todo)
        try:
            for source_row, rows in progress(results, desc="detect", total=len(todo), unit="img", enabled=show_progress):
                sources.append(source_row)
                detections.extend(rows)
                if time.monotonic() - last_checkpoint > checkpoint_seconds:
                    _write_outputs(out_dir, params, sources, detections)
                    last_checkpoint = time.monotonic()
        except BaseException:
            _write_outputs(out_dir, params, sources, detections)  # keep what is done, e.g. after Ctrl-C
            raise
        finally:
            if pool is not None:
                pool.terminate()
    _write_outputs(out_dir, params, sources, detections)

    in_scope = [row for row in sources if row["source"] in wanted]
    return DetectSummary(
        images=len(in_scope),
        faces=sum(int(row["faces"]) for row in in_scope),
        errors=sum(row["status"] == "error" for row in in_scope),
        processed_now=len(todo),
        skipped=len(images) - len(todo),
        out_dir=out_dir,
        seconds=time.monotonic() - started,
    )
