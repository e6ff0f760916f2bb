"""Stage 1: find every face in every image (by default the Haar cascade and dlib's HOG detector on every photo,
dlib's CNN too where HOG found none; see ``facepipe.detectors``) and save square crops."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from facepipe import __version__
from facepipe.common import FacepipeError, file_sha256, progress, remove_own_temporaries, worker_pool
from facepipe.detectors import (
    CNN,
    COMBINED,
    COMBINED_CNN_UPSAMPLE,
    COMBINED_HAAR_MAX_SIDE,
    COMBINED_HOG_MAX_SIDE,
    HAAR,
    HOG,
    CnnFinder,
    CombinedFinder,
    FaceFinder,
    HaarFinder,
    HogFinder,
    ScaledFinder,
    detection_rules,
    find_faces,
    too_small_to_search,
)
from facepipe.engine import DEFAULT_ENGINE, RAY, check_engine, ray_nodes_phrase, ray_session
from facepipe.formats import (
    DETECT_PARAMS_JSON,
    DETECTION_COLUMNS,
    DETECTION_NUMBER_RULES,
    DETECTIONS_CSV,
    ERROR_COLUMNS,
    ERRORS_CSV,
    SOURCE_COLUMNS,
    SOURCES_CSV,
    checked_fields,
    json_object,
    read_csv,
    read_json,
    well_formed_rows,
    write_csv_atomic,
    write_json_atomic,
)
from facepipe.images import (
    NOT_UTF8_REASON,
    ImageReadError,
    collect_images,
    load_image_rgb,
    output_outside_inputs,
    resize_square,
    save_image_atomic,
)
from facepipe.limits import usable_workers
from facepipe.locks import locks_output
from facepipe.owned import inside_or_none
from facepipe.settings import DetectorParams, DetectWork


@dataclass
class DetectRun:
    """How a detect run works, apart from what it finds: the engine and its workers, the photo size limit,
    progress and checkpoints; ``nodes`` counts the photos each Ray node detected."""

    engine: str = DEFAULT_ENGINE
    ray_address: str | None = None
    workers: int = DetectWork.workers
    max_pixels: int = DetectWork.max_pixels
    show_progress: bool = True
    checkpoint_seconds: float = 10.0
    nodes: Counter = field(default_factory=Counter)


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
    removed: int = 0  # photos of an earlier run no longer among the inputs: their rows and crops removed
    nodes: dict = field(default_factory=dict)  # Ray engine: photos detected now per node id

    def line(self) -> str:
        removed = f", {self.removed} no longer among the inputs removed" if self.removed else ""
        return (
            f"detect: {self.images} images, {self.faces} faces, {self.errors} errors "
            f"({self.processed_now} processed now{ray_nodes_phrase(self.nodes)}, {self.skipped} already done"
            f"{removed}) -> {self.out_dir} in {self.seconds:.1f}s"
        )


def check_params(params: DetectorParams) -> None:
    """Refuse a cascade that cannot be loaded, before anything is read or written (the spec checked the
    other settings when ``params`` was built)."""
    if params.detector in (HAAR, COMBINED):
        HaarFinder(params.cascade, params.scale_factor, params.min_neighbors, params.min_size)  # loads the cascade


def recorded_params(out_dir: str | os.PathLike) -> DetectorParams:
    """The parameters that ``detect.json`` in ``out_dir`` records, each of its type and usable (``check_params``)."""
    path = Path(out_dir) / DETECT_PARAMS_JSON
    kinds = {f.name: type(f.default) for f in fields(DetectorParams)}
    recorded = checked_fields(json_object(read_json(path), "params", path), path, kinds)
    try:
        params = DetectorParams(**{k: v for k, v in recorded.items() if k in kinds})
        check_params(params)
    except FacepipeError as error:
        raise FacepipeError(f"{path}: {error}") from None
    return params


def crop_name(source: Path, face_index: int, crop_format: str) -> str:
    """A crop file name that is readable, unique per source path, and the same on every run."""
    stem = unicodedata.normalize("NFKD", source.stem).encode("ascii", "ignore").decode("ascii")
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:60] or "image"
    digest = hashlib.sha1(str(source).encode("utf-8")).hexdigest()[:10]
    return f"{stem}_{digest}_{face_index}.{crop_format}"


_CROP_NAME = re.compile(r"[A-Za-z0-9_-]+_[0-9a-f]{10}_[0-9]+\.(jpg|png)")
_OUTPUT_NAMES = {DETECTIONS_CSV, SOURCES_CSV, ERRORS_CSV, DETECT_PARAMS_JSON}


def _is_output_name(name: str) -> bool:
    """A name detect writes into its folder: its CSVs and JSON, or a crop's (``crop_name``)."""
    return name in _OUTPUT_NAMES or _CROP_NAME.fullmatch(name) is not None


def _is_own_crop(row: dict, params: DetectorParams) -> bool:
    """True when a detections.csv row names the crop detect makes of that photo's face (``crop_name``): a
    row naming any other file (by hand, ``../x`` or an absolute path) is never trusted, read or removed."""
    try:
        return row["crop"] == crop_name(Path(str(row["source"])), int(row["face_index"]), params.crop_format)
    except (TypeError, ValueError, OverflowError):
        return False


def square_crop(image: np.ndarray, box: Sequence[int], margin: float, size: int) -> np.ndarray:
    """Cut a square around ``box`` (x, y, w, h) grown by ``margin`` per side, resized to ``size``; beyond the
    photo's edge it is black, as in dlib's own face chips (the embedding stays dlib's: benchmarks/README.md)."""
    import cv2

    x, y, w, h = (int(v) for v in box)
    side = int(round(max(w, h) * (1.0 + 2.0 * margin)))
    cx, cy = x + w / 2.0, y + h / 2.0
    left, top = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    height, width = image.shape[:2]
    pad = max(0, -left, -top, left + side - width, top + side - height)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        left, top = left + pad, top + pad
    return resize_square(image[top : top + side, left : left + side], size)


def face_finder(params: DetectorParams) -> FaceFinder:
    """The detector ``params`` name, built with their settings."""
    if params.detector == CNN:
        return ScaledFinder(CnnFinder(params.dlib_upsample, params.dlib_threshold), params.cnn_max_side)
    if params.detector == HOG:
        return HogFinder(params.dlib_upsample, params.dlib_threshold)
    haar = HaarFinder(params.cascade, params.scale_factor, params.min_neighbors, params.min_size)
    if params.detector == HAAR:
        return haar
    return CombinedFinder(
        ScaledFinder(haar, COMBINED_HAAR_MAX_SIDE),
        ScaledFinder(HogFinder(params.dlib_upsample, params.dlib_threshold), COMBINED_HOG_MAX_SIDE),
        ScaledFinder(CnnFinder(COMBINED_CNN_UPSAMPLE, params.dlib_threshold), params.cnn_max_side),
    )


class PhotoDetector:
    """What each worker of either engine runs: detect the faces of one photo and save their crops into
    ``out_dir``, giving its sources.csv row and its detection rows. With ``parent``, the pid of the detect
    process, it exits at once instead of writing more crops once that process is gone (killed)."""

    def __init__(self, params: DetectorParams, out_dir: Path, max_pixels: int, parent: int | None = None):
        import cv2

        cv2.setNumThreads(1)  # one photo per worker process: the workers are the parallelism
        if params.detector in (CNN, COMBINED):
            import torch

            torch.set_num_threads(1)  # and so for the CNN's convolutions
        self.finder = face_finder(params)
        self.params, self.out_dir, self.max_pixels, self.parent = params, out_dir, max_pixels, parent

    def _stop_if_orphaned(self) -> None:
        if self.parent is None:
            return
        try:
            os.kill(self.parent, 0)
        except ProcessLookupError:
            os._exit(1)

    def __call__(self, source: Path) -> tuple[dict, list[dict]]:
        params = self.params
        try:
            rgb = load_image_rgb(source, self.max_pixels)
        except ImageReadError as error:
            return {"source": str(source), "status": "error", "faces": 0, "reason": str(error)}, []
        height, width = rgb.shape[:2]
        too_small = too_small_to_search(rgb, params.max_side)
        if too_small:
            return {"source": str(source), "status": "error", "faces": 0, "reason": too_small}, []
        rows = []
        faces = find_faces(rgb, self.finder, params.max_side)
        self._stop_if_orphaned()
        for index, face in enumerate(faces[:1] if params.largest_only else faces):
            name = crop_name(source, index, params.crop_format)
            digest = save_image_atomic(self.out_dir / name, square_crop(rgb, face.box, params.margin, params.size))
            x, y, w, h = (int(v) for v in face.box)
            rows.append(
                dict(
                    crop=name,
                    source=str(source),
                    face_index=index,
                    x=x,
                    y=y,
                    w=w,
                    h=h,
                    source_width=width,
                    source_height=height,
                    detector=face.detector,
                    score=float(face.score),
                    sha256=digest,
                )
            )
        return {"source": str(source), "status": "ok", "faces": len(rows), "reason": ""}, rows


class PhotoBatchDetector:
    """The Ray engine's worker: a batch of photo paths (column ``source``) to their sources.csv rows and
    detection rows (columns ``source_row`` and ``detections``, as JSON)."""

    def __init__(self, params: DetectorParams, out_dir: Path, max_pixels: int):
        self.detect_photo = PhotoDetector(params, out_dir, max_pixels)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [self.detect_photo(Path(str(source))) for source in batch["source"]]
        return {
            "source_row": np.array([json.dumps(row) for row, _ in results], dtype=object),
            "detections": np.array([json.dumps(rows) for _, rows in results], dtype=object),
        }


RAY_BATCH_PHOTOS = 32  # photos per Ray task: few enough tasks to cost little, enough to share the work evenly
_worker_detector: list[PhotoDetector] = []  # the local engine's worker process: its one PhotoDetector


def _init_worker(params: DetectorParams, out_dir: Path, max_pixels: int, parent: int) -> None:
    _worker_detector[:] = [PhotoDetector(params, out_dir, max_pixels, parent)]


def _process_source(source: Path) -> tuple[dict, list[dict]]:
    return _worker_detector[0](source)


def _load_previous(out_dir: Path, params: DetectorParams, force: bool) -> tuple[list[dict], list[dict]]:
    """Rows of an earlier run into ``out_dir`` that can be kept (none with ``force``): a source counts as done
    only with a well-formed sources.csv row and, for each face it had, one detection row whose crop is on disk
    with the sha256 recorded there (a crop truncated or changed since is made again).
    Anything else (rows of a run killed between its two files, a damaged sources.csv) is redone."""
    params_file = out_dir / DETECT_PARAMS_JSON
    if force or not params_file.is_file():
        return [], []
    recorded = read_json(params_file)
    previous = json_object(recorded, "params", params_file)
    if previous != asdict(params):
        changed = sorted(k for k in set(previous) | set(asdict(params)) if previous.get(k) != asdict(params).get(k))
        raise FacepipeError(
            f"{out_dir} holds detections made with other parameters ({', '.join(changed)} differ); "
            "rerun with --force to redo them, or choose another output folder"
        )
    if recorded.get("rules") != detection_rules(params.detector):  # read_json gives an object or raises
        raise FacepipeError(
            f"{out_dir} holds detections made under other detection rules "
            f"(facepipe {recorded.get('facepipe_version') or 'unknown'}; "
            f"this one is {__version__} and its {params.detector} finds faces differently): rerun with --force "
            "to redo them, or choose another output folder"
        )
    try:
        sources = read_csv(out_dir / SOURCES_CSV, SOURCE_COLUMNS, "sources CSV")
        detections = read_csv(out_dir / DETECTIONS_CSV, DETECTION_COLUMNS, "detections CSV")
    except FacepipeError:  # missing or damaged: those photos are simply detected again
        return [], []
    well_formed = (
        well_formed_rows(sources, {"faces": {"whole": True, "low": 0}})
        & sources["status"].isin(["ok", "error"]).to_numpy()
        & sources["source"].notna().to_numpy()
    )
    sources = sources[well_formed].drop_duplicates("source", keep="last")
    sources = sources.assign(
        faces=pd.to_numeric(sources["faces"]).astype(int),
        reason=sources["reason"].astype("string").fillna("").astype(str),
    )
    detections = detections[well_formed_rows(detections, DETECTION_NUMBER_RULES)].drop_duplicates("crop", keep="last")
    detections = detections.assign(
        **{  # the kept numbers as a fresh run writes them (a bad cell made them text)
            column: pd.to_numeric(detections[column]).astype(np.int64 if rule.get("whole") else np.float64)
            for column, rule in DETECTION_NUMBER_RULES.items()
        }
    )
    intact = [
        _is_own_crop(row, params) and _crop_intact(out_dir / str(row["crop"]), row["sha256"])
        for row in detections.to_dict("records")
    ]
    detections = detections[np.asarray(intact, dtype=bool)]  # a bool mask even when empty
    rows_per_source = detections.groupby("source").size()
    complete = sources["faces"] == sources["source"].map(rows_per_source).fillna(0).astype(int)
    sources = sources[complete]
    detections = detections[detections["source"].isin(set(sources["source"]))]
    return sources.to_dict("records"), detections.to_dict("records")


def _refuse_foreign_tables(out_dir: Path) -> None:
    """Refuse a folder holding a detections.csv, sources.csv or errors.csv but no detect.json: detect writes
    detect.json before them, so they are not facepipe's (they would be overwritten), --force or not."""
    if (out_dir / DETECT_PARAMS_JSON).exists():
        return
    for name in (DETECTIONS_CSV, SOURCES_CSV, ERRORS_CSV):
        if os.path.lexists(out_dir / name):
            raise FacepipeError(
                f"{out_dir} holds a {name} that facepipe did not write (there is no "
                f"{DETECT_PARAMS_JSON}): move it away or choose another output folder"
            )


def _crop_intact(path: Path, digest) -> bool:
    """The crop ``path`` is on disk with the sha256 ``digest`` its detection row records."""
    return isinstance(digest, str) and path.is_file() and file_sha256(path) == digest


def _drop_removed_sources(out_dir: Path, sources: list[dict], detections: list[dict], wanted: set[str]):
    """Keep only the rows of photos among this run's inputs; delete the crops of those no longer there (each
    a plain file of ``out_dir`` under the name detect gives it: ``_load_previous`` keeps no other row).
    Returns (sources, detections, how many photos were dropped)."""
    gone = {row["source"] for row in sources} - wanted
    for row in detections:
        crop = inside_or_none(out_dir, str(row["crop"])) if row["source"] in gone else None
        if crop is not None and crop.parent == out_dir and crop.is_file() and not crop.is_symlink():
            crop.unlink()
    return (
        [row for row in sources if row["source"] not in gone],
        [row for row in detections if row["source"] not in gone],
        len(gone),
    )


def _write_outputs(out_dir: Path, params: DetectorParams, sources: list[dict], detections: list[dict]) -> None:
    source_frame = pd.DataFrame(sources, columns=SOURCE_COLUMNS).sort_values("source", kind="stable")
    detection_frame = pd.DataFrame(detections, columns=DETECTION_COLUMNS).sort_values(
        ["source", "face_index"], kind="stable"
    )
    errors = source_frame[source_frame["status"] == "error"].rename(columns={"source": "path"})[ERROR_COLUMNS]
    write_json_atomic(
        out_dir / DETECT_PARAMS_JSON,
        {"params": asdict(params), "rules": detection_rules(params.detector), "facepipe_version": __version__},
    )
    write_csv_atomic(detection_frame, out_dir / DETECTIONS_CSV)
    write_csv_atomic(errors, out_dir / ERRORS_CSV)
    # sources.csv last: a source counts as done only once its crops and rows are on disk.
    write_csv_atomic(source_frame, out_dir / SOURCES_CSV)


@contextlib.contextmanager
def _local_results(todo: list[Path], params: DetectorParams, out_dir: Path, workers: int, max_pixels: int):
    """The local engine: (sources.csv row, detection rows) of each photo of ``todo``, in order, from
    ``workers`` processes."""
    settings = (params, out_dir, max_pixels, os.getpid())
    if workers <= 1:
        _init_worker(*settings)
        yield map(_process_source, todo)
        return
    with worker_pool(workers, _init_worker, settings) as pool:
        yield pool.imap(_process_source, todo, chunksize=4)


def _ray_results(todo: list[Path], params: DetectorParams, out_dir: Path, max_pixels: int, nodes: Counter):
    """The Ray engine: the same rows as ``_local_results``, from an actor per CPU of the cluster, in the order
    they finish (``nodes`` counts the photos each node detected)."""
    from facepipe.engine import ray_map

    for batch in ray_map(
        {"source": [str(p) for p in todo]},
        PhotoBatchDetector,
        (params, out_dir, max_pixels),
        batch_size=RAY_BATCH_PHOTOS,
        nodes=nodes,
    ):
        yield from zip(map(json.loads, batch["source_row"]), map(json.loads, batch["detections"]))


def _detect_todo(
    todo: list[Path],
    params: DetectorParams,
    out_dir: Path,
    sources: list[dict],
    detections: list[dict],
    run: DetectRun,
) -> None:
    """Detect the photos ``todo`` with the engine ``run`` names, appending their rows to ``sources`` and
    ``detections`` and writing the CSVs every ``run.checkpoint_seconds`` (and on any exit, Ctrl-C included)."""
    with contextlib.ExitStack() as stack:
        if run.engine == RAY:
            stack.enter_context(ray_session(run.ray_address))
            results = _ray_results(todo, params, out_dir, run.max_pixels, run.nodes)
        else:
            results = stack.enter_context(_local_results(todo, params, out_dir, run.workers, run.max_pixels))
        last_checkpoint = time.monotonic()
        try:
            for source_row, rows in progress(
                results, desc="detect", total=len(todo), unit="img", enabled=run.show_progress
            ):
                sources.append(source_row)
                detections.extend(rows)
                if time.monotonic() - last_checkpoint > run.checkpoint_seconds:
                    _write_outputs(out_dir, params, sources, detections)
                    last_checkpoint = time.monotonic()
        except BaseException:
            _write_outputs(out_dir, params, sources, detections)  # keep what is done, e.g. after Ctrl-C
            raise


@locks_output(lambda args: output_outside_inputs(args["out_dir"], args["inputs"]))
def detect(
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike = "temp",
    params: DetectorParams | None = None,
    *,
    workers: int = DetectWork.workers,
    max_pixels: int = DetectWork.max_pixels,
    engine: str = DEFAULT_ENGINE,
    ray_address: str | None = None,
    keep_others: bool = False,
    force: bool = False,
    show_progress: bool = True,
    checkpoint_seconds: float = 10.0,
) -> DetectSummary:
    """Detect faces in every image under ``inputs`` and save crops plus CSVs into ``out_dir``.

    Resumable: photos already done (in ``out_dir/sources.csv``, their crops on disk) are skipped unless
    ``force``; photos that failed are tried again. The folder holds the faces of exactly these ``inputs``:
    rows and crops of photos no longer among them are removed (with ``keep_others``, as ``assign`` adds
    photos, they are kept). Photos over ``max_pixels`` and folders that
    cannot be listed are recorded in errors.csv. With ``workers`` > 1 the worker processes are started by a
    fork server (a fork of a process that already ran dlib's CNN would hang), so a script that calls this
    needs the ``if __name__ == "__main__":`` guard. The CSVs are rewritten atomically every few seconds, so a
    killed run loses at most that much work. ``engine`` "ray" detects on the Ray cluster at ``ray_address``
    (else a local one) with an actor per CPU, into the same files (see ``facepipe.engine``).
    """
    started = time.monotonic()
    params = params or DetectorParams()
    check_params(params)
    DetectWork(workers=workers, max_pixels=max_pixels)  # checks them
    check_engine(engine, ray_address)
    run = DetectRun(engine, ray_address, usable_workers(workers), max_pixels, show_progress, checkpoint_seconds)
    out_dir = Path(os.path.abspath(out_dir))
    _refuse_foreign_tables(out_dir)
    remove_own_temporaries(out_dir, _is_output_name)
    unlisted: list[dict] = []
    images = collect_images(inputs, unlisted)
    if not images and not (unlisted and all(row["reason"] == NOT_UTF8_REASON for row in unlisted)):
        found = f" ({unlisted[0]['path']}: {unlisted[0]['reason']})" if unlisted else ""
        raise FacepipeError(f"no images found in the given inputs{found}")

    kept_sources, kept_detections = _load_previous(out_dir, params, force)
    done_before = [row for row in kept_sources if row["status"] == "ok"]  # failed photos are tried again
    wanted = {str(p) for p in images} | ({row["source"] for row in done_before} if keep_others else set())
    sources, detections, removed = _drop_removed_sources(out_dir, done_before, kept_detections, wanted)
    done = {row["source"] for row in sources}
    sources += [{"source": row["path"], "status": "error", "faces": 0, "reason": row["reason"]} for row in unlisted]
    todo = [p for p in images if str(p) not in done]
    if todo:
        _detect_todo(todo, params, out_dir, sources, detections, run)
        remove_own_temporaries(out_dir, _is_output_name)  # of a worker that died while writing a crop
    _write_outputs(out_dir, params, sources, detections)
    return DetectSummary(
        images=len(sources),
        faces=sum(int(row["faces"]) for row in sources),
        errors=sum(row["status"] == "error" for row in sources),
        processed_now=len(todo),
        skipped=len(images) - len(todo),
        out_dir=out_dir,
        seconds=time.monotonic() - started,
        removed=removed,
        nodes=dict(run.nodes),
    )
