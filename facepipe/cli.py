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
from facepipe.limits import Limit
from facepipe.settings import (
    GENERATE_CLUSTER,
    STAGES,
    XMP_NAMINGS,
    AssignSettings,
    ClusterSettings,
    DetectorParams,
    DetectWork,
    EmbedSettings,
    ExportSettings,
    GenerateSettings,
    ProbeSettings,
    ReviewSettings,
    RunSettings,
    Setting,
    SuggestSettings,
    TrainSettings,
    parse_k_range,
)

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
    """The click type of an option whose range is ``limit`` (its setting's, in ``facepipe.settings``)."""
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
        try:
            parse_k_range(value)
        except FacepipeError as error:
            self.fail(str(error), param, ctx)
        return value


class NumberList(click.ParamType):
    """Comma-separated numbers, each in ``limit`` (e.g. probe train --cs 0.01,0.1,1) -> a tuple of floats."""

    name = "numbers"

    def __init__(self, limit: Limit):
        self.limit = limit

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            values = tuple(float(v) for v in value.split(",") if v.strip())
        except ValueError:
            self.fail("a comma-separated list of numbers, e.g. 0.01,0.1,1", param, ctx)
        if not values or not all(self.limit.admits(v) for v in values):
            self.fail(f"each value must be {self.limit.describe()}", param, ctx)
        return values


def _click_type(spec: Setting) -> click.ParamType | None:
    """The click type of a setting's option (None: a flag)."""
    if spec.kind == "number":
        kind = limited(spec.limit)
        return AutoOr(kind) if spec.auto else kind
    return {
        "choice": lambda: click.Choice(spec.choices),
        "path": lambda: click.Path(dir_okay=False),
        "k_range": KRange,
        "numbers": lambda: NumberList(spec.limit),
        "text": lambda: click.STRING,
        "bool": lambda: None,
    }[spec.kind]()


def setting_option(kind: type, name: str, spelling: str = "", **overrides):
    """The click option of the setting ``name`` of the settings class ``kind`` (``facepipe.settings``): its
    spelling (``--`` and the name with dashes, unless ``spelling``), type, default and help all from the spec;
    ``overrides`` replace click arguments (``run``'s shortcuts have no default)."""
    spec = kind.spec()[name]
    flag = spelling or "--" + name.replace("_", "-")
    default = spec.default if spec.command_default is None else spec.command_default
    if spec.kind == "k_range":
        default = ":".join(map(str, default))
    arguments = dict(help=spec.help or None, default=default, show_default=default is not None)
    if spec.kind == "bool":
        declarations = [f"{flag}/--no-{flag[2:]}"] if default else [flag]
        arguments.update(is_flag=True, show_default=bool(default))
    else:
        declarations = [flag]
        arguments.update(type=_click_type(spec))
        if spec.kind == "numbers":
            arguments.update(show_default=False)
    arguments.update(overrides)
    return click.option(*declarations, name, **arguments)


def settings_options(kind: type, *names: str):
    """The options of the settings class ``kind``: those ``names``, else every setting with an option."""
    chosen = names or [name for name, spec in kind.spec().items() if spec.command]

    def decorator(command):
        for name in reversed(chosen):
            command = setting_option(kind, name)(command)
        return command

    return decorator


STAGE_NAMES = tuple(stage.replace("_", "-") for stage in STAGES)  # --from: the commands' names


def _stage_name(ctx, param, value: str | None) -> str | None:
    """--from: a command's name (train-cvae) -> the run's stage key (train_cvae)."""
    if value is None:
        return None
    if value not in STAGE_NAMES:
        raise click.BadParameter(f"{value!r} is not one of {', '.join(STAGE_NAMES)}")
    return value.replace("-", "_")


with_engine_options = settings_options(RunSettings, "engine", "ray_address")  # detect's and embed's
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
@click.option(
    "-o",
    "--out",
    "out_dir",
    default="temp",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the crops and the detections/sources/errors CSVs.",
)
@settings_options(DetectorParams)
@settings_options(DetectWork)
@with_engine_options
@force_option
@quiet_option
@reports_errors
def detect(inputs, out_dir, workers, max_pixels, engine, ray_address, force, quiet, **params):
    """Find every face in INPUTS (folders, images, or text files listing paths) and save square crops.

    Exit code 0: all images read; 3: done, but some images could not be read (listed in errors.csv).
    """
    from facepipe.detect import detect as run_detect

    summary = run_detect(
        inputs,
        out_dir,
        DetectorParams(**params),
        workers=workers,
        max_pixels=max_pixels,
        engine=engine,
        ray_address=ray_address,
        force=force,
        show_progress=not quiet,
    )
    click.echo(summary.line())
    if summary.errors:
        sys.exit(EXIT_PARTIAL)


@main.command()
@click.argument("crops", nargs=-1, required=True, type=click.Path())
@click.option(
    "-o",
    "--out",
    "output",
    default="image_features.csv",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Embeddings file: .csv (name, e0..) or .npz; a sidecar <file>.json describes the model.",
)
@settings_options(EmbedSettings)
@with_engine_options
@force_option
@quiet_option
@reports_errors
def embed(crops, output, engine, ray_address, force, quiet, **settings):
    """Embed face CROPS (a crops folder from detect, or crop files / text files listing them).

    Exit code 0: all crops embedded; 3: done, but some crops could not be read (listed in <output>.errors.csv).
    """
    from facepipe.embed import embed as run_embed

    summary = run_embed(
        crops[0] if len(crops) == 1 else list(crops),
        output,
        engine=engine,
        ray_address=ray_address,
        force=force,
        show_progress=not quiet,
        **settings,
    )
    click.echo(summary.line())
    if summary.errors:
        sys.exit(EXIT_PARTIAL)


@main.group()
def probe():
    """A linear probe (e.g. bald, male) on face embeddings: train, predict, evaluate."""


embeddings_argument = click.argument("embeddings_path", metavar="EMBEDDINGS", type=click.Path(dir_okay=False))
crops_dir_option = click.option(
    "--crops-dir",
    type=click.Path(file_okay=False),
    help="Folder with the detections.csv of the crops (default: the embeddings sidecar's crops_dir).",
)


@probe.command("train")
@embeddings_argument
@click.option(
    "--labels",
    "manifest_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Label manifest CSV (relpath or name, identity, and the 0/1 target column).",
)
@click.option("--target", required=True, help="The 0/1 manifest column to predict, e.g. bald or male.")
@click.option(
    "-o",
    "--out",
    default="probe.json",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Probe JSON to write.",
)
@click.option(
    "--group-column",
    default="identity",
    show_default=True,
    help="Manifest column naming the person; folds never split a person. 'none': each face its own person.",
)
@crops_dir_option
@settings_options(ProbeSettings)
@force_option
@quiet_option
@reports_errors
def probe_train(
    embeddings_path, manifest_path, target, out, group_column, crops_dir, holdout, folds, cs, seed, force, quiet
):
    """Train a class-weighted logistic-regression probe for TARGET on EMBEDDINGS (image_features.csv or .npz
    from embed), C and threshold chosen on identity folds."""
    from facepipe.probe import train

    summary = train(
        embeddings_path,
        manifest_path,
        target,
        out,
        group_column=None if group_column.lower() == "none" else group_column,
        crops_dir=crops_dir,
        holdout=holdout,
        folds=folds,
        Cs=cs,
        seed=seed,
        force=force,
        show_progress=not quiet,
    )
    for line in summary.lines():
        click.echo(line)


@probe.command("predict")
@embeddings_argument
@click.option(
    "--probe", "probe_path", required=True, type=click.Path(dir_okay=False), help="Probe JSON from `probe train`."
)
@click.option(
    "-o",
    "--out",
    default="predictions.csv",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="CSV: name, probability, label.",
)
@reports_errors
def probe_predict(embeddings_path, probe_path, out):
    """Score every embedding of EMBEDDINGS (of the same model as the probe's) with a saved probe."""
    from facepipe.probe import predict

    frame = predict(probe_path, embeddings_path, out)
    click.echo(f"probe predict: {len(frame)} faces, {int(frame['label'].sum())} predicted positive -> {out}")


@probe.command("evaluate")
@embeddings_argument
@click.option(
    "--probe", "probe_path", required=True, type=click.Path(dir_okay=False), help="Probe JSON from `probe train`."
)
@click.option(
    "--labels",
    "manifest_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Label manifest with the probe's target column.",
)
@click.option(
    "-o",
    "--out",
    "out_dir",
    default="probe_eval",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for metrics.json, pr_curve.png, confusion_matrix.png, predictions.csv.",
)
@crops_dir_option
@reports_errors
def probe_evaluate(embeddings_path, probe_path, manifest_path, out_dir, crops_dir):
    """Metrics of a saved probe on the labelled EMBEDDINGS, next to the dummy baselines; PR curve and confusion
    matrix."""
    from facepipe.probe import evaluate

    for line in evaluate(probe_path, embeddings_path, manifest_path, out_dir, crops_dir=crops_dir).lines():
        click.echo(line)


@main.command("train-cvae")
@click.argument("cluster_results", required=False, default="cluster_results.csv", type=click.Path(dir_okay=False))
@click.option(
    "--crops-dir",
    type=click.Path(file_okay=False),
    help="Folder of the crops (default: the crops_dir in the cluster results' sidecar JSON).",
)
@click.option(
    "-o",
    "--out",
    "weights_dir",
    default="weights",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for cvae_epoch_N.pt, cvae_best.pt, cvae_log.csv and alignment.csv.",
)
@settings_options(TrainSettings)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue from the last checkpoint in the --out folder to more --epochs than its run asked for "
    "(the same command rerun after a kill or a full disk continues without it).",
)
@force_option
@quiet_option
@reports_errors
def train_cvae(cluster_results, crops_dir, weights_dir, resume, force, quiet, **settings):
    """Train a conditional VAE on the crops of CLUSTER_RESULTS (cluster_results.csv from cluster; the cluster is
    the condition)."""
    from facepipe.cvae import train_cvae as run_train

    summary = run_train(
        cluster_results,
        TrainSettings(**settings),
        crops_dir=crops_dir,
        weights_dir=weights_dir,
        resume=resume,
        force=force,
        show_progress=not quiet,
    )
    click.echo(summary.line())


@main.command()
@click.option(
    "--cluster",
    "cluster_ids",
    multiple=True,
    type=limited(GENERATE_CLUSTER),
    help="Cluster id to generate (repeatable).",
)
@click.option("--all", "all_clusters", is_flag=True, help="Generate every cluster the model knows.")
@click.argument("checkpoint", required=False, default="weights", type=click.Path())
@click.option(
    "-o", "--out", "out_dir", default="inference_results", show_default=True, type=click.Path(file_okay=False)
)
@click.option(
    "--clusters",
    "cluster_results",
    type=click.Path(dir_okay=False),
    help="cluster_results.csv for the pixel means (default: the one the model was trained on).",
)
@click.option("--crops-dir", type=click.Path(file_okay=False), help="Crops folder (default: the training one).")
@click.option(
    "--embeddings",
    type=click.Path(dir_okay=False),
    help="Embeddings the clusters came from (default: named in the cluster results' sidecar).",
)
@settings_options(GenerateSettings)
@quiet_option
@reports_errors
def generate(
    cluster_ids, all_clusters, checkpoint, out_dir, cluster_results, crops_dir, embeddings, quiet, **settings
):
    """Decode each cluster's face at z = 0 (cluster_N.png) from CHECKPOINT (a checkpoint file, or a weights folder:
    its cvae_best.pt; default weights), beside its pixel mean (cluster_N_mean.png), random draws and a sheet."""
    from facepipe.generate import generate as run_generate

    if all_clusters == bool(cluster_ids):
        raise click.UsageError("give --cluster N (repeatable) or --all")
    summary = run_generate(
        checkpoint,
        out_dir=out_dir,
        clusters=None if all_clusters else list(cluster_ids),
        cluster_results=cluster_results,
        crops_dir=crops_dir,
        embeddings=embeddings,
        show_progress=not quiet,
        **settings,
    )
    click.echo(summary.line())


@main.command("run")
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option(
    "-o", "--out", "out_dir", type=click.Path(file_okay=False), help="Run folder (required unless --print-config)."
)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config (see --print-config).")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.OPTION=VALUE",
    help="Override one config option, e.g. --set cluster.k=5 (repeatable).",
)
@setting_option(EmbedSettings, "model", default=None, show_default=False, help="Same as --set embed.model=...")
@setting_option(
    ClusterSettings, "k", default=None, show_default=False, help="Same as --set cluster.k=... (a number or auto)."
)
@setting_option(RunSettings, "labels")
@setting_option(
    EmbedSettings, "device", default=None, show_default=False, help="Device for embed, train-cvae and generate."
)
@setting_option(
    RunSettings,
    "engine",
    default=None,
    show_default=False,
    help="Same as --set run.engine=... (detect and embed: local or ray).",
)
@setting_option(RunSettings, "ray_address", help="Same as --set run.ray_address=... (the Ray cluster to join).")
@click.option(
    "--from",
    "from_stage",
    metavar="[" + "|".join(STAGE_NAMES) + "]",
    callback=_stage_name,
    help="Redo this stage and every later one, even if nothing changed.",
)
@click.option("--print-config", is_flag=True, help="Print the config (defaults, or merged with --config) and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON on stdout.")
@quiet_option
@reports_errors
def run_command(
    inputs,
    out_dir,
    config_file,
    overrides,
    model,
    k,
    labels,
    device,
    engine,
    ray_address,
    from_stage,
    print_config,
    as_json,
    quiet,
):
    """Run the whole pipeline on INPUTS into one run folder, with report.html.

    Stages whose inputs and options did not change since the last run into the same folder are skipped.
    Exit code 0: done; 3: done, but some photos or crops could not be read; 1: failed.
    """
    import json

    from facepipe.config import config_to_toml, default_config_text, load_config
    from facepipe.formats import RUN_REPORT_HTML
    from facepipe.run import run

    config = load_config(config_file, overrides)
    shortcuts = {
        ("embed", "model"): model,
        ("cluster", "k"): k,
        ("run", "labels"): labels,
        ("embed", "device"): device,
        ("train_cvae", "device"): device,
        ("run", "engine"): engine,
        ("run", "ray_address"): ray_address,
    }
    for (section, option), value in shortcuts.items():
        if value is not None:
            config[section][option] = value
    if print_config:
        customised = config_file or overrides or any(v is not None for v in shortcuts.values())
        click.echo(config_to_toml(config) if customised else default_config_text())
        return
    if not inputs or not out_dir:
        raise click.UsageError("give INPUTS and --out RUN_DIR (or --print-config)")
    summary = run(inputs, out_dir, config, from_stage=from_stage, show_progress=not quiet)
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        click.echo(f"run: done in {summary.seconds:.1f}s -> {summary.out_dir / RUN_REPORT_HTML}")
    if summary.partial:
        sys.exit(EXIT_PARTIAL)


@main.command("cluster")
@click.argument("embeddings", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--out",
    "out_dir",
    default="clusters",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for cluster_results.csv, centroids.csv, k_selection.csv, the plots and metrics.",
)
@settings_options(ClusterSettings)
@click.option(
    "--samples-dir",
    type=click.Path(file_okay=False),
    help="Folder for the sample grids (cluster_N.jpg, overview.jpg); default: cluster_samples/ in --out.",
)
@click.option("--no-samples", is_flag=True, help="Do not draw sample grids.")
@click.option(
    "--crops-dir",
    type=click.Path(file_okay=False),
    help="Folder of the crops (default: the one named in the embeddings sidecar).",
)
@click.option(
    "--labels",
    type=click.Path(dir_okay=False),
    help="Manifest CSV (relpath or name, identity): report NMI, ARI, BCubed and pairwise F.",
)
@force_option
@quiet_option
@reports_errors
def cluster_command(embeddings, out_dir, samples_dir, no_samples, crops_dir, labels, force, quiet, **settings):
    """Group the face EMBEDDINGS (CSV or .npz from embed) by the same-person distance or k-means; faces matching
    no group go to unknown (-1); draw sample grids."""
    from facepipe.cluster import SAMPLES_IN_OUT, cluster

    summary = cluster(
        embeddings,
        out_dir,
        ClusterSettings(**settings),
        samples_dir=None if no_samples else samples_dir or SAMPLES_IN_OUT,
        crops_dir=crops_dir,
        labels=labels,
        force=force,
        show_progress=not quiet,
    )
    click.echo(summary.line())


@main.command("export")
@click.argument("cluster_results", required=False, default="cluster_results.csv", type=click.Path())
@click.option(
    "-o",
    "--out",
    "out_dir",
    default="people",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Target folder: a folder per group, unknown/, no_face/ and manifest.csv.",
)
@settings_options(ExportSettings, "mode", "crops")
@setting_option(
    ExportSettings,
    "xmp",
    flag_value=XMP_NAMINGS[0],
    type=None,
    help=f"Also tag each named face in its photo's XMP sidecar (MWG regions), {XMP_NAMINGS[0]} beside it.",
)
@setting_option(ExportSettings, "xmp", spelling="--xmp-name")
@quiet_option
@reports_errors
def export_command(cluster_results, out_dir, mode, crops, xmp, quiet):
    """Write the groups of CLUSTER_RESULTS (cluster_results.csv, or a cluster or run folder) as folders of
    photos; a rerun updates them without duplicating or losing files."""
    from facepipe.export import export

    click.echo(export(cluster_results, out_dir, mode=mode, crops=crops, xmp=xmp, show_progress=not quiet).line())


@main.command("assign")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--clusters",
    "cluster_results",
    default="cluster_results.csv",
    show_default=True,
    type=click.Path(),
    help="The clustering to add to (cluster_results.csv, or a cluster or run folder); updated in place.",
)
@setting_option(AssignSettings, "threshold")
@setting_option(
    EmbedSettings,
    "weights",
    help="vggface2-resnet50: the weights file, where the collection was embedded with --weights.",
)
@setting_option(AssignSettings, "workers")
@quiet_option
@reports_errors
def assign_command(inputs, cluster_results, threshold, weights, workers, quiet):
    """Detect and embed the new photos INPUTS as the clustering's photos were, and put each face into the
    existing group it matches, else unknown; group numbers and names do not change."""
    from facepipe.assign import assign

    click.echo(
        assign(
            inputs, cluster_results, threshold=threshold, weights=weights, workers=workers, show_progress=not quiet
        ).line()
    )


# issue 27: from groups to named people (suggest, review)
@main.command("suggest")
@click.argument("clusters", required=False, default=".", type=click.Path())
@click.option(
    "-o",
    "--out",
    default="suggestions.csv",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The suggestions CSV (kind, rank, group, other, face, distance).",
)
@settings_options(SuggestSettings)
@reports_errors
def suggest_command(clusters, out, people, outlier_distance):
    """Rank likely merges between groups, the nearest group of each unknown face and the faces far from their
    group, for the clustering CLUSTERS (a cluster or run folder, or its cluster_results.csv)."""
    from facepipe.suggest import suggest

    frame = suggest(clusters, out, people=people, outlier_distance=outlier_distance)
    counts = frame["kind"].value_counts()
    click.echo(
        f"suggest: {counts.get('merge', 0)} merges, {counts.get('unknown', 0)} unknown faces, "
        f"{counts.get('outlier', 0)} outliers -> {Path(out).resolve()}"
    )


@main.command("review")
@click.argument("folder", required=False, default=".", type=click.Path())
@settings_options(ReviewSettings)
@click.option("--no-browser", is_flag=True, help="Print the page's address only; do not open a browser.")
@reports_errors
def review_command(folder, port, no_browser):
    """Name, merge, split and correct the groups of FOLDER (a run or cluster folder) on a local web page, and
    answer the suggestions; every edit goes to the folder's people file. Stop with Ctrl-C."""
    from facepipe.review_page import review

    review(
        folder,
        port=port,
        open_browser=not no_browser,
        announce=lambda url: click.echo(f"review: {url}  (Ctrl-C to stop)"),
    )


@main.command("read-tags")
@click.argument("clusters", required=False, default=".", type=click.Path())
@click.option(
    "-o",
    "--out",
    default="face_tags.csv",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The faces the photos' tags name, as a label manifest (name, identity) for --labels.",
)
@click.option(
    "--people",
    "to_people",
    is_flag=True,
    help="Also name each group by its tagged faces in the folder's people file (names there are kept).",
)
@reports_errors
def read_tags_command(clusters, out, to_people):
    """Read the face names other tools wrote into the photos of CLUSTERS (MWG or Microsoft regions, in the
    photos or their XMP sidecars) as labels of the faces they cover."""
    from facepipe.xmp import read_face_tags

    tags, names = read_face_tags(clusters, out, to_people)
    click.echo(
        f"read-tags: {len(tags)} face(s) named by their photos' tags, {len(names)} group(s) -> {Path(out).resolve()}"
    )
