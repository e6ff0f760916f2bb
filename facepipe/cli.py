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
