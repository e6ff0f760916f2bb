"""Stage 7: the whole chain from one config into one run folder, resumable, with a report.

Each stage's fingerprint is a hash of its options and of what it consumed (the input photos for detect,
the upstream stage's fingerprint for the others). ``state.json`` in the run folder records the fingerprint
each stage last completed with: a rerun skips the stages whose fingerprint did not change, reruns a
changed stage and, through the chained fingerprints, everything downstream of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from facepipe import __version__
from facepipe.common import FacepipeError
from facepipe.config import checked_config, load_config, save_config
from facepipe.detectors import detection_rules
from facepipe.engine import RAY, check_engine, ray_session
from facepipe.formats import (
    CLUSTER_RESULTS_CSV,
    EMBEDDINGS_CSV,
    RUN_CONFIG_TOML,
    RUN_CROPS_DIR,
    RUN_INFERENCE_DIR,
    RUN_LOG,
    RUN_PROBE_DIR,
    RUN_SAMPLES_DIR,
    RUN_STATE_JSON,
    RUN_SUMMARY_JSON,
    RUN_WEIGHTS_DIR,
    checked_fields,
    read_run_state,
    write_json_atomic,
)
from facepipe.identity import identity_weight_for
from facepipe.images import collect_images, output_outside_inputs
from facepipe.locks import locks_output
from facepipe.people import people_file_of
from facepipe.settings import STAGES, ClusterSettings, DetectorParams, DetectWork, TrainSettings

log = logging.getLogger("facepipe.run")


@dataclass
class StageRecord:
    """What happened to one stage in this run."""

    name: str
    status: str  # ran | resumed | skipped | not configured
    seconds: float = 0.0
    summary: str = ""
    details: dict = field(default_factory=dict)


@dataclass
class RunSummary:
    """The outcome of ``run``: one record per stage, plus where everything is."""

    out_dir: Path
    stages: list[StageRecord]
    partial: bool
    seconds: float

    def as_dict(self) -> dict:
        return {
            "out_dir": str(self.out_dir),
            "partial": self.partial,
            "seconds": round(self.seconds, 2),
            "facepipe_version": __version__,
            "stages": {
                s.name: {"status": s.status, "seconds": round(s.seconds, 2), "summary": s.summary, **s.details}
                for s in self.stages
            },
        }


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def _file_stamp(path: str) -> str | None:
    """Fingerprint a file the run reads (e.g. the labels manifest) by size and modification time."""
    if not path:
        return None
    stat = Path(path).stat()
    return f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}"


def _inputs_fingerprint(images: list[Path]) -> str:
    entries = []
    for image in images:
        try:
            stat = image.stat()
            entries.append((str(image), stat.st_size, stat.st_mtime_ns))
        except OSError:
            entries.append((str(image), None, None))
    return _digest(entries)


class _Runner:
    """Holds the run folder, its state file, and the stage-by-stage decisions."""

    def __init__(self, out_dir: Path, from_stage: str | None):
        self.state_file = out_dir / RUN_STATE_JSON
        self.state = read_run_state(self.state_file) if self.state_file.is_file() else {}
        self.forced_from = STAGES.index(from_stage) if from_stage else None
        self.records: list[StageRecord] = []

    def stage(self, name: str, fingerprint: str, action: Callable[[bool], tuple[str, dict]]) -> str:
        """Run ``action(force)`` unless ``name`` already completed with ``fingerprint``; returns the fingerprint."""
        previous = self.state.get(name, {})
        forced = self.forced_from is not None and STAGES.index(name) >= self.forced_from
        if not forced and previous.get("fingerprint") == fingerprint and previous.get("completed"):
            log.info("%s: skipped, inputs and options unchanged", name)
            self.records.append(
                StageRecord(
                    name,
                    "skipped",
                    previous.get("seconds", 0.0),
                    previous.get("summary", ""),
                    previous.get("details", {}),
                )
            )
            return fingerprint
        resuming = not forced and previous.get("fingerprint") == fingerprint
        force = forced or bool(previous) and not resuming
        log.info(
            "%s: %s",
            name,
            "resuming an interrupted run"
            if resuming
            else "forced"
            if forced
            else "options or inputs changed, redoing"
            if force
            else "running",
        )
        self.state[name] = {"fingerprint": fingerprint, "completed": False}
        write_json_atomic(self.state_file, self.state)
        started = time.perf_counter()
        summary, details = action(force)
        seconds = time.perf_counter() - started
        log.info("%s", summary)
        self.state[name] = {
            "fingerprint": fingerprint,
            "completed": True,
            "seconds": round(seconds, 2),
            "summary": summary,
            "details": details,
        }
        write_json_atomic(self.state_file, self.state)
        self.records.append(StageRecord(name, "resumed" if resuming else "ran", seconds, summary, details))
        return fingerprint


def run_state(folder: Path) -> dict | None:
    """The state.json of the run folder ``folder`` (None where it is none), checked before anything is written."""
    state_file = folder / RUN_STATE_JSON
    if not state_file.is_file():
        return None
    state = read_run_state(state_file)
    checked_fields(state.get("cluster", {}).get("details") or {}, state_file, {"assigned": int})
    return state


def note_assigned(folder: Path, state: dict | None, line: str, assigned: int) -> None:
    """In a run folder (its ``state``), the cluster stage's record says what assign added (its summary ``line``,
    and the faces it ``assigned``), which the report shows."""
    if state is None or "cluster" not in state:
        return
    record = state["cluster"]
    record["summary"] = f"{record.get('summary', '')}\n{line}".strip()
    record.setdefault("details", {})["assigned"] = record.get("details", {}).get("assigned", 0) + assigned
    write_json_atomic(folder / RUN_STATE_JSON, state)


class _RunLogHandler(logging.FileHandler):
    """``run.log``: a line that cannot be written (a full disk) is left out, not printed as a traceback; the error
    that stops the run is reported on stderr anyway."""

    def handleError(self, record: logging.LogRecord) -> None:
        return None


def _setup_logging(out_dir: Path, quiet: bool) -> list[logging.Handler]:
    """Log to ``run.log`` in the run folder, and to stderr unless ``quiet``."""
    to_file = _RunLogHandler(out_dir / RUN_LOG, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handlers: list[logging.Handler] = [to_file]
    if not quiet:
        to_console = logging.StreamHandler()
        to_console.setFormatter(logging.Formatter("%(message)s"))
        handlers.append(to_console)
    root = logging.getLogger("facepipe")
    root.setLevel(logging.INFO)
    for handler in handlers:
        root.addHandler(handler)
    return handlers


def _blank_to_none(value):
    return None if value == "" else value


@dataclass
class _RunFolder:
    """A run's folder, config and inputs; each stage method runs that stage there -> (summary line, details)."""

    out: Path
    config: dict
    inputs: list[str]
    labels: str | None
    show_progress: bool
    partial: bool = False  # some photos or crops could not be read
    sessions: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)  # the Ray connection, once made
    ray_connected: bool = False

    def engine_options(self) -> dict:
        """detect's and embed's engine settings, from [run]: they change where the work is done, not its results,
        so they are no part of any stage's fingerprint. With Ray, the first stage that asks connects, for both."""
        engine, address = self.config["run"]["engine"], _blank_to_none(self.config["run"]["ray_address"])
        if engine == RAY and not self.ray_connected:
            self.sessions.enter_context(ray_session(address))
            self.ray_connected = True
        return {"engine": engine, "ray_address": address}

    @property
    def crops(self) -> Path:
        return self.out / RUN_CROPS_DIR

    @property
    def features(self) -> Path:
        return self.out / EMBEDDINGS_CSV

    @property
    def results(self) -> Path:
        return self.out / CLUSTER_RESULTS_CSV

    def detect(self, force: bool) -> tuple[str, dict]:
        from facepipe.detect import detect

        work = DetectWork.from_config(self.config["detect"])
        summary = detect(
            self.inputs,
            self.crops,
            DetectorParams.from_config(self.config["detect"]),
            workers=work.workers,
            max_pixels=work.max_pixels,
            force=force,
            show_progress=self.show_progress,
            **self.engine_options(),
        )
        self.partial = self.partial or summary.errors > 0
        return summary.line(), {"images": summary.images, "faces": summary.faces, "errors": summary.errors}

    def embed(self, force: bool) -> tuple[str, dict]:
        from facepipe.embed import embed

        options = dict(self.config["embed"], weights=_blank_to_none(self.config["embed"]["weights"]))
        summary = embed(
            self.crops,
            self.features,
            force=force,
            show_progress=self.show_progress,
            **options,
            **self.engine_options(),
        )
        self.partial = self.partial or summary.errors > 0
        return summary.line(), {
            "crops": summary.crops,
            "embedded": summary.embedded,
            "errors": summary.errors,
            "model": summary.model,
            "dimension": summary.dim,
        }

    def cluster(self, force: bool) -> tuple[str, dict]:
        from facepipe.cluster import cluster

        summary = cluster(
            self.features,
            self.out,
            ClusterSettings.from_config(self.config["cluster"]),
            samples_dir=self.out / RUN_SAMPLES_DIR,
            labels=self.labels,
            force=force,
            show_progress=self.show_progress,
        )
        return summary.line(), summary.details()

    def train_cvae(self, force: bool) -> tuple[str, dict]:
        from facepipe.cvae import train_cvae

        summary = train_cvae(
            self.results,
            TrainSettings.from_config(self.config["train_cvae"]),
            crops_dir=self.crops,
            weights_dir=self.out / RUN_WEIGHTS_DIR,
            resume=not force,
            force=force,
            show_progress=self.show_progress,
        )
        return summary.line(), {
            "epochs": summary.last_epoch,
            "best_epoch": summary.best_epoch,
            "best_val_loss": summary.best_val_loss,
            "device": summary.device,
            "train_crops": summary.train_count,
            "val_crops": summary.val_count,
        }

    def generate(self, force: bool) -> tuple[str, dict]:
        from facepipe.generate import generate

        summary = generate(
            self.out / RUN_WEIGHTS_DIR,
            out_dir=self.out / RUN_INFERENCE_DIR,
            cluster_results=self.results,
            crops_dir=self.crops,
            embeddings=self.features,
            device=self.config["train_cvae"]["device"],
            show_progress=self.show_progress,
            **self.config["generate"],
        )
        return summary.line(), {"clusters": len(summary.clusters), "fidelity": summary.fidelity}

    def probe(self, force: bool) -> tuple[str, dict]:
        return _run_probes(
            self.features,
            self.labels,
            self.crops,
            self.out / RUN_PROBE_DIR,
            self.config["probe"],
            force,
            self.show_progress,
        )


def _run_stages(runner: "_Runner", folder: _RunFolder, images: list[Path]) -> None:
    """Each stage in order, skipped when its fingerprint (its options and what it reads) is unchanged."""
    config = folder.config
    with folder.sessions:  # a Ray cluster the two started is stopped before the stages that do not use it
        detected = _digest(
            config["detect"], detection_rules(config["detect"]["detector"]), _inputs_fingerprint(images)
        )
        fingerprint = runner.stage("detect", detected, folder.detect)
        fingerprint = embedded = runner.stage("embed", _digest(config["embed"], fingerprint), folder.embed)
    fingerprint = runner.stage(
        "cluster",
        _digest(
            config["cluster"],
            fingerprint,
            _file_stamp(folder.labels),
            _file_stamp(people_file_of(folder.out, config["cluster"]["people"])),
        ),
        folder.cluster,
    )
    fingerprint = runner.stage("train_cvae", _digest(config["train_cvae"], fingerprint), folder.train_cvae)
    runner.stage("generate", _digest(config["generate"], fingerprint), folder.generate)
    if folder.labels is not None and config["probe"]["targets"]:
        runner.stage("probe", _digest(config["probe"], embedded, _file_stamp(folder.labels)), folder.probe)
    else:
        runner.records.append(StageRecord("probe", "not configured", summary="no labels or no targets given"))


def _checked_inputs(inputs: Iterable[str | os.PathLike], config: dict) -> tuple[list[str], list[Path], str | None]:
    """The inputs made absolute, the photos they hold and the label manifest (the config is checked already):
    refused before any work."""
    identity_weight_for(config["train_cvae"]["identity_weight"], config["embed"]["model"])
    check_engine(config["run"]["engine"], _blank_to_none(config["run"]["ray_address"]))
    inputs = [str(Path(os.path.abspath(i))) for i in inputs]
    images = collect_images(inputs, problems=[])  # detect records the folders it cannot list
    if not images:
        raise FacepipeError("no images found in the given inputs")
    labels = _blank_to_none(config["run"]["labels"])
    if labels is not None:
        labels = os.path.abspath(labels)
        if not Path(labels).is_file():
            raise FacepipeError(f"label manifest not found: {labels}")
    return inputs, images, labels


@locks_output(lambda args: output_outside_inputs(args["out_dir"], args["inputs"]))
def run(
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: dict | None = None,
    *,
    from_stage: str | None = None,
    show_progress: bool = True,
) -> RunSummary:
    """Run detect -> embed -> cluster -> train-cvae -> generate (-> probe with labels) into ``out_dir``.

    ``config`` is a dict as returned by ``facepipe.config.load_config`` (defaults when ``None``); every value
    is checked (``config.checked_config``: a ``ConfigError`` lists those refused) before any stage runs.
    ``from_stage`` forces that stage and every later one to be redone.
    """
    from facepipe.report import write_report

    started = time.perf_counter()
    config = checked_config(config if config is not None else load_config())
    if from_stage is not None and from_stage not in STAGES:
        raise FacepipeError(f"--from must be one of {', '.join(STAGES)}")
    inputs, images, labels = _checked_inputs(inputs, config)
    out = Path(os.path.abspath(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / RUN_CONFIG_TOML)
    handlers = _setup_logging(out, quiet=not show_progress)
    log.info("facepipe %s run: %d images from %s -> %s", __version__, len(images), ", ".join(inputs), out)
    runner = _Runner(out, from_stage)
    folder = _RunFolder(out, config, inputs, labels, show_progress)
    try:
        _run_stages(runner, folder, images)
    except Exception as error:
        log.error("run failed: %s", error)
        raise
    finally:
        for handler in handlers:
            logging.getLogger("facepipe").removeHandler(handler)
            handler.close()

    summary = RunSummary(
        out_dir=out, stages=runner.records, partial=folder.partial, seconds=time.perf_counter() - started
    )
    data = summary.as_dict()
    data["versions"] = versions()
    write_json_atomic(out / RUN_SUMMARY_JSON, data)
    write_report(out, data, config)
    return summary


def _run_probes(
    features: Path, labels: str, crops: Path, out: Path, options: dict, force: bool, show_progress: bool
) -> tuple[str, dict]:
    from facepipe.probe import train as train_probe

    lines, details, failed = [], {}, {}
    for target in options["targets"]:
        try:
            summary = train_probe(
                features,
                labels,
                target,
                out / f"{target}.json",
                crops_dir=crops,
                holdout=options["holdout"],
                folds=options["folds"],
                seed=options["seed"],
                force=force,
                show_progress=show_progress,
            )
        except FacepipeError as error:  # e.g. the manifest has no such labels: the other targets still run
            log.warning("probe %s: %s", target, error)
            failed[target] = str(error)
            continue
        lines.extend(summary.lines())
        details[target] = summary.holdout["metrics"] if summary.holdout else None
    return "\n".join(lines), {"targets": details, "failed": failed}


def versions() -> dict:
    """Versions of facepipe, Python and the libraries whose behaviour shapes the results."""
    import importlib.metadata as metadata

    found = {"facepipe": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for package in ("torch", "opencv-python-headless", "numpy", "scikit-learn", "dlib-bin", "faiss-cpu"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found
