"""The ``facepipe`` command line: a thin click layer that parses options and calls the stage functions."""

from __future__ import annotations

import functools
import sys

import click

from facepipe import __version__
from facepipe.common import FacepipeError

EXIT_PARTIAL = 3  # the stage finished, but some inputs could not be read (see its errors CSV)


def reports_errors(command):
    """Turn ``FacepipeError`` into a one-line message and exit code 1 instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FacepipeError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(1)

    return wrapper


device_option = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
    help="Where to run PyTorch: auto picks CUDA when present.",
)
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
@click.option("--cascade", default="haarcascade_frontalface_alt.xml", show_default=True,
              help="Haar cascade: a file name in cv2.data.haarcascades, or a path.")
@click.option("--scale-factor", default=1.1, show_default=True, type=click.FloatRange(1.01, 2.0))
@click.option("--min-neighbors", default=45, show_default=True, type=click.IntRange(0),
              help="Higher: fewer false positives, more missed faces.")
@click.option("--min-size", default=30, show_default=True, type=click.IntRange(1), help="Smallest face side, pixels.")
@click.option("--margin", default=0.2, show_default=True, type=click.FloatRange(0, 2),
              help="Extra room around the face box, as a fraction of its side, on each side.")
@click.option("--size", default=224, show_default=True, type=click.IntRange(16), help="Crop side in pixels.")
@click.option("--largest-only", is_flag=True, help="Keep only the largest face of each image.")
@click.option("--crop-format", type=click.Choice(["jpg", "png"]), default="jpg", show_default=True)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1), help="Worker processes.")
@force_option
@quiet_option
@reports_errors
def detect(inputs, out_dir, cascade, scale_factor, min_neighbors, min_size, margin, size, largest_only,
           crop_format, workers, force, quiet):
    """Find every face in INPUTS (folders, images, or text files listing paths) and save square crops.

    Exit code 0: all images read; 3: done, but some images could not be read (listed in errors.csv).
    """
    from facepipe.detect import DetectorParams, detect as run_detect

    params = DetectorParams(cascade=cascade, scale_factor=scale_factor, min_neighbors=min_neighbors,
                            min_size=min_size, margin=margin, size=size, largest_only=largest_only,
                            crop_format=crop_format)
    summary = run_detect(inputs, out_dir, params, workers=workers, force=force, show_progress=not quiet)
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
        raise click.BadParameter("a comma-separated list of numbers, e.g. 0.01,0.1,1") from None
    if not values or any(v <= 0 for v in values):
        raise click.BadParameter("values of C must be positive")
    return values


@probe.command("train")
@click.option("--embeddings", "embeddings_path", required=True, type=click.Path(dir_okay=False),
              help="image_features.csv or .npz (with its sidecar JSON) from `facepipe embed`.")
@click.option("--labels", "manifest_path", required=True, type=click.Path(dir_okay=False),
              help="Label manifest CSV (relpath or name, identity, and the 0/1 target column).")
@click.option("--target", required=True, help="The 0/1 manifest column to predict, e.g. bald or male.")
@click.option("--out", default="probe.json", show_default=True, type=click.Path(dir_okay=False),
              help="Probe JSON to write.")
@click.option("--group-column", default="identity", show_default=True,
              help="Manifest column naming the person; folds never split a person. 'none': each face its own person.")
@click.option("--crops-dir", type=click.Path(file_okay=False),
              help="Folder with the detections.csv of the crops (default: the embeddings sidecar's crops_dir).")
@click.option("--holdout", default=0.0, show_default=True, type=click.FloatRange(0, 0.9),
              help="Set aside this share of the identities, train on the rest and report metrics on them.")
@click.option("--folds", default=5, show_default=True, type=click.IntRange(2), help="Cross-validation folds.")
@click.option("--cs", "cs", default=None, help="Comma-separated values of C to search (default: 13 values 1e-4..100).")
@click.option("--seed", default=0, show_default=True, type=int)
@force_option
@quiet_option
@reports_errors
def probe_train(embeddings_path, manifest_path, target, out, group_column, crops_dir, holdout, folds, cs, seed,
                force, quiet):
    """Train a class-weighted logistic-regression probe for TARGET, C and threshold chosen on identity folds."""
    from facepipe.probe import DEFAULT_CS, train

    summary = train(embeddings_path, manifest_path, target, out,
                    group_column=None if group_column.lower() == "none" else group_column, crops_dir=crops_dir,
                    holdout=holdout, folds=folds, Cs=_parse_cs(cs) if cs else DEFAULT_CS, seed=seed, force=force,
                    show_progress=not quiet)
    for line in summary.lines():
        click.echo(line)


@probe.command("predict")
@click.option("--probe", "probe_path", required=True, type=click.Path(dir_okay=False), help="Probe JSON from `probe train`.")
@click.option("--embeddings", "embeddings_path", required=True, type=click.Path(dir_okay=False),
              help="Embeddings of the same model as the probe's.")
@click.option("--out", default="predictions.csv", show_default=True, type=click.Path(dir_okay=False),
              help="CSV: name, probability, label.")
@reports_errors
def probe_predict(probe_path, embeddings_path, out):
    """Score every embedding with a saved probe."""
    from facepipe.probe import predict

    frame = predict(probe_path, embeddings_path, out)
    click.echo(f"probe predict: {len(frame)} faces, {int(frame['label'].sum())} predicted positive -> {out}")


@probe.command("evaluate")
@click.option("--probe", "probe_path", required=True, type=click.Path(dir_okay=False), help="Probe JSON from `probe train`.")
@click.option("--embeddings", "embeddings_path", required=True, type=click.Path(dir_okay=False))
@click.option("--labels", "manifest_path", required=True, type=click.Path(dir_okay=False),
              help="Label manifest with the probe's target column.")
@click.option("--out-dir", default="probe_eval", show_default=True, type=click.Path(file_okay=False),
              help="Folder for metrics.json, pr_curve.png, confusion_matrix.png, predictions.csv.")
@click.option("--crops-dir", type=click.Path(file_okay=False),
              help="Folder with the detections.csv of the crops (default: the embeddings sidecar's crops_dir).")
@reports_errors
def probe_evaluate(probe_path, embeddings_path, manifest_path, out_dir, crops_dir):
    """Metrics of a saved probe on labelled embeddings, next to the dummy baselines; PR curve and confusion matrix."""
    from facepipe.probe import evaluate

    for line in evaluate(probe_path, embeddings_path, manifest_path, out_dir, crops_dir=crops_dir).lines():
        click.echo(line)
