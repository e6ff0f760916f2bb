"""Limits of every numeric option and run-config value (issue 28, class 3): a value out of range is refused
with one line naming the option, by the command line and the run config (exit 2) and by the stage functions
(FacepipeError) alike; worker counts are capped by the CPUs; huge embeddings are normalised safely."""

from __future__ import annotations

import os
import re

import click
import numpy as np
import pytest
from click.testing import CliRunner

from facepipe.cli import AutoOr, main
from facepipe.common import FacepipeError, usable_cpus
from facepipe.config import ConfigError, load_config
from facepipe.limits import usable_workers
from facepipe.settings import ClusterSettings, TrainSettings, config_problems

PHOTO = np.zeros((64, 64, 3), dtype=np.uint8)
PROBE_TRAIN = ["probe", "train", "e.csv", "--labels", "m.csv", "--target", "bald"]

OUT_OF_RANGE = [  # the reproductions, and one of each kind more
    (["detect", "photos", "--size", "1000000"], "--size"),
    (["detect", "photos", "--min-neighbors", "1000000000000"], "--min-neighbors"),
    (["detect", "photos", "--min-size", "1000000000000"], "--min-size"),
    (["detect", "photos", "--dlib-threshold", "1e9"], "--dlib-threshold"),
    (["embed", "crops", "--batch-size", "100000000"], "--batch-size"),
    (["cluster", "e.csv", "--seed", "-1"], "--seed"),
    (["cluster", "e.csv", "--seed", str(2**64)], "--seed"),
    (["cluster", "e.csv", "--n-init", "1000000000"], "--n-init"),
    (["cluster", "e.csv", "--k-range", "2:1000000000"], "--k-range"),
    (["train-cvae", "--seed", "-3"], "--seed"),
    (["train-cvae", "--learning-rate", "1e10"], "--learning-rate"),
    (["train-cvae", "--beta", "1e300"], "--beta"),
    (["train-cvae", "--identity-weight", "1e300"], "--identity-weight"),
    (["generate", "--all", "--samples", "10000000"], "--samples"),
    (["generate", "--all", "--seed", str(2**64)], "--seed"),
    (["generate", "--cluster", str(2**64)], "--cluster"),
    ([*PROBE_TRAIN, "--seed", "-1"], "--seed"),
    ([*PROBE_TRAIN, "--cs", "0.1,nan"], "--cs"),
    (["assign", "photo.jpg", "--threshold", "9"], "--threshold"),
    (["run", "photos", "-o", "run", "--k", "100000"], "--k"),
]


@pytest.mark.fast
@pytest.mark.parametrize("args, option", OUT_OF_RANGE, ids=[" ".join(a) for a, _ in OUT_OF_RANGE])
def test_an_option_out_of_range_is_a_usage_error_naming_it(args, option):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert option in result.output.splitlines()[-1], result.output


def numeric_options(group: click.Group, prefix: str = ""):
    """(command, option) for every option of every command whose value is a number (or auto or a number)."""
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from numeric_options(command, f"{prefix}{name} ")
            continue
        for param in command.params:
            kind = param.type.inner if isinstance(param.type, AutoOr) else param.type
            if isinstance(kind, (click.types.IntParamType, click.types.FloatParamType)):
                yield f"{prefix}{name}", param, kind


@pytest.mark.fast
def test_every_numeric_option_has_a_range():
    """Every number has both bounds, but worker counts, which the CPUs cap instead."""
    found = list(numeric_options(main))
    assert len(found) > 40
    unbounded = [
        f"{command} {param.opts[0]}"
        for command, param, kind in found
        if not isinstance(kind, (click.IntRange, click.FloatRange))
        or kind.min is None
        or (kind.max is None and param.name != "workers")
    ]
    assert not unbounded, unbounded


@pytest.mark.fast
def test_run_config_values_get_the_options_limits():
    values = {
        "detect.size": "1000000",
        "detect.min_neighbors": "1000000000000",
        "cluster.seed": "-1",
        "cluster.n_init": "1000000000",
        "train_cvae.learning_rate": "1e10",
        "train_cvae.beta": "1e300",
        "train_cvae.seed": str(2**64),
        "generate.samples": "10000000",
        "probe.seed": "-1",
        "embed.batch_size": "0",
    }
    problems = config_problems(load_config(None, [f"{key}={value}" for key, value in values.items()]))
    for key in values:
        section, option = key.split(".")
        assert any(problem.startswith(f"[{section}] {option} = ") for problem in problems), (key, problems)
    assert len(problems) == len(values)
    result = CliRunner().invoke(main, ["run", "photos", "-o", "run", "--set", "cluster.n_init=1000000000"])
    assert result.exit_code == 2 and "[cluster] n_init" in result.output


@pytest.mark.fast
def test_run_refuses_a_config_value_out_of_range_before_any_work(tmp_path):
    """The Python ``run`` checks the config's numbers as the command line does, before a stage starts."""
    from facepipe.run import run

    for override, named in (
        ("cluster.n_init=1000000000", "[cluster] n_init"),
        ("detect.workers=0", "[detect] workers"),
        ("train_cvae.beta=1e300", "[train_cvae] beta"),
        ("probe.seed=-1", "[probe] seed"),
    ):
        with pytest.raises(FacepipeError, match=re.escape(named)):
            run(["photos"], tmp_path / "run", load_config(None, [override]), show_progress=False)
    assert not (tmp_path / "run").exists()


def stage_calls(tmp_path):
    """A call of each stage function with one value out of range, and the option its error must name."""
    import facepipe
    from facepipe.cluster import cluster
    from facepipe.cvae import train_cvae
    from facepipe.detect import DetectorParams, detect
    from facepipe.embed import embed
    from facepipe.export import export
    from facepipe.generate import generate
    from facepipe.probe import train

    out = tmp_path / "out"
    return [
        (lambda: detect(["photos"], out, DetectorParams(size=10**6)), "--size"),
        (lambda: detect(["photos"], out, DetectorParams(min_neighbors=10**12)), "--min-neighbors"),
        (lambda: detect(["photos"], out, workers=0), "--workers"),
        (lambda: embed("crops", out / "e.csv", batch_size=0), "--batch-size"),
        (lambda: cluster("e.csv", out, ClusterSettings(seed=-1)), "--seed"),
        (lambda: cluster("e.csv", out, ClusterSettings(n_init=10**9)), "--n-init"),
        (lambda: generate("weights", out_dir=out, samples=10**7), "--samples"),
        (
            lambda: train_cvae("c.csv", TrainSettings(learning_rate=1e10), weights_dir=out, show_progress=False),
            "--learning-rate",
        ),
        (lambda: train_cvae("c.csv", TrainSettings(beta=1e300), weights_dir=out, show_progress=False), "--beta"),
        (lambda: train_cvae("c.csv", TrainSettings(seed=2**64), weights_dir=out, show_progress=False), "--seed"),
        (lambda: train("e.csv", "m.csv", "bald", out / "p.json", seed=-1), "--seed"),
        (lambda: train("e.csv", "m.csv", "bald", out / "p.json", Cs=[float("inf")]), "--cs"),
        (lambda: facepipe.find_faces(PHOTO, detector="haar", scale_factor=1.0), "--scale-factor"),
        (lambda: facepipe.find_faces(PHOTO, min_neighbors=-3), "--min-neighbors"),
        (lambda: facepipe.find_faces(PHOTO, detector="mtcnn"), "--detector"),
        (lambda: detect(["photos"], out, DetectorParams(crop_format="gif")), "--crop-format"),
        (lambda: cluster("e.csv", out, ClusterSettings(method="spectral")), "--method"),
        (lambda: cluster("e.csv", out, ClusterSettings(k=0)), "--k"),
        (lambda: cluster("e.csv", out, ClusterSettings(k_range="40:2")), "--k-range"),
        (lambda: embed("crops", out / "e.csv", precision="fp8"), "--precision"),
        (lambda: export("c.csv", out, mode="move"), "--mode"),
        (lambda: facepipe.group_faces(np.eye(3, dtype=np.float32), threshold=9), "--threshold"),
    ]


@pytest.mark.fast
def test_stage_functions_refuse_the_same_values(tmp_path):
    """A Python caller gets the command line's limits, as a FacepipeError naming the option, before anything
    is read or written."""
    for call, option in stage_calls(tmp_path):
        with pytest.raises(FacepipeError, match=option):
            call()
    assert not (tmp_path / "out").exists()


@pytest.mark.fast
def test_workers_are_capped_by_the_cpus_this_process_may_use():
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert usable_cpus() == cpus
    assert usable_workers(100_000) == cpus and usable_workers(1) == 1 and usable_workers(0) == 0


def test_detect_with_a_hundred_thousand_workers_starts_as_many_as_there_are_cpus(tmp_path, data_dir):
    photos = sorted((data_dir("dlib_johns") / "images").rglob("*.jpg"))[:2]
    assert len(photos) == 2
    result = CliRunner().invoke(
        main,
        [
            "detect",
            *map(str, photos),
            "-o",
            str(tmp_path / "crops"),
            "--detector",
            "haar",
            "--min-neighbors",
            "5",
            "--workers",
            "100000",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "detect: 2 images" in result.output


@pytest.mark.fast
def test_unit_rows_survive_squares_that_overflow_or_underflow():
    from facepipe.models import unit_rows

    vectors = np.random.default_rng(0).normal(size=(6, 128)).astype(np.float32)
    expected = unit_rows(vectors)
    assert np.allclose(np.linalg.norm(expected, axis=1), 1, atol=1e-6)
    for scale in (1e30, 1e-30):
        scaled = vectors * np.float32(scale)
        assert np.allclose(unit_rows(scaled), expected, atol=1e-6), scale
        assert np.allclose(unit_rows(scaled, out=scaled), expected, atol=1e-6) and np.allclose(
            scaled, expected, atol=1e-6
        )
    zeros = np.zeros((2, 4), dtype=np.float32)
    assert not unit_rows(zeros).any()


@pytest.fixture(scope="module")
def johns_dlib_embeddings(tmp_path_factory, data_dir):
    """The dlib_johns face chips (5 people) embedded as they are with dlib-resnet128."""
    from facepipe.embed import embed

    output = tmp_path_factory.mktemp("johns_dlib") / "image_features.csv"
    embed(data_dir("dlib_johns") / "images", output, model="dlib-resnet128", workers=1, show_progress=False)
    return output


def test_embeddings_scaled_by_1e30_group_as_the_unscaled_ones(tmp_path, johns_dlib_embeddings):
    """Before: the squares overflowed float32, every vector became zeros and all faces one group (exit 0)."""
    import pandas as pd

    from facepipe.cluster import cluster
    from facepipe.formats import CLUSTER_RESULTS_CSV, Embeddings, read_embeddings, write_embeddings

    embeddings = read_embeddings(johns_dlib_embeddings)
    plain = cluster(johns_dlib_embeddings, tmp_path / "plain", samples_dir=None, show_progress=False)
    assert plain.k > 1
    expected = pd.read_csv(tmp_path / "plain" / CLUSTER_RESULTS_CSV)["cluster"]
    for scale in (1e30, 1e-30):
        scaled = tmp_path / f"scaled_{scale:g}.npz"
        write_embeddings(
            scaled, Embeddings(embeddings.names, embeddings.vectors * np.float32(scale), embeddings.meta)
        )
        out = tmp_path / f"out_{scale:g}"
        summary = cluster(scaled, out, samples_dir=None, show_progress=False)
        assert summary.k == plain.k, scale
        assert pd.read_csv(out / CLUSTER_RESULTS_CSV)["cluster"].equals(expected), scale
    with pytest.raises(FacepipeError, match="too large to compare without normalisation"):
        cluster(
            tmp_path / "scaled_1e+30.npz",
            tmp_path / "raw",
            ClusterSettings(normalize=False, threshold=0.5),
            samples_dir=None,
            show_progress=False,
        )


@pytest.mark.fast
def test_auto_in_any_case_is_the_word_auto_everywhere():
    """``Auto`` / `` AUTO `` in a run config or an option is "auto", as one helper decides (common.is_auto), and
    the checked config and the settings hold it as "auto"; a setting that takes no "auto" refuses it up front."""
    from facepipe.config import checked_config
    from facepipe.grouping import same_person_distance
    from facepipe.identity import identity_weight_for

    config = load_config(None, ["cluster.k=Auto", 'train_cvae.identity_weight="AUTO"', "embed.device=Auto"])
    assert config_problems(config) == []
    checked = checked_config(config)
    assert (checked["cluster"]["k"], checked["train_cvae"]["identity_weight"], checked["embed"]["device"]) == (
        "auto",
        "auto",
        "auto",
    )
    assert TrainSettings.from_config(config["train_cvae"]).identity_weight == "auto"
    assert ClusterSettings(k=" AUTO ", threshold="Auto") == ClusterSettings()
    assert identity_weight_for(" AUTO ", None) == identity_weight_for("auto", None) == 0.0
    assert same_person_distance("Auto", "dlib-resnet128", True) == same_person_distance(
        "auto", "dlib-resnet128", True
    )
    assert config_problems(load_config(None, ["cluster.k=automatic"]))
    refused = config_problems(load_config(None, ["train_cvae.epochs=Auto", "detect.detector=Auto"]))
    assert [problem.split(" = ")[0] for problem in refused] == ["[detect] detector", "[train_cvae] epochs"]
    with pytest.raises(ConfigError, match=r"\[train_cvae\] epochs = 'Auto'"):
        checked_config(load_config(None, ["train_cvae.epochs=Auto"]))
