"""Faults a hostile user or a faulty machine brings (issue 18): a second command on a busy folder, kills between
two files, read-only folders, a full disk, bad configs and files, odd inputs, stale outputs. Each case is a
real command on real photos: it must end in one line (no traceback), the right exit code, and nothing lost or
half-written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import copy_lfw_photos
from PIL import Image

from facepipe.cli import main
from facepipe.common import FacepipeError
from facepipe.formats import (
    CLUSTER_RESULTS_CSV,
    DETECTIONS_CSV,
    ERRORS_CSV,
    LOCK_FILE,
    SOURCES_CSV,
    read_csv,
    read_embeddings,
    read_probe_json,
)
from facepipe.locks import FolderInUseError, folder_lock
from facepipe.settings import ClusterSettings

REPO = Path(__file__).resolve().parents[1]
PEOPLE = ["Kofi_Annan", "Jackie_Chan", "Hans_Blix"]
# Drops root's power to ignore file permissions, so that a read-only folder is read-only for the command too.
AS_PLAIN_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def facepipe(
    *args: str, cwd: Path | None = None, as_plain_user: bool = False, **kwargs
) -> subprocess.CompletedProcess:
    """Run the real command line in a child process (exit codes and stderr as a user sees them)."""
    prefix = AS_PLAIN_USER if as_plain_user else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "facepipe", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


def assert_one_line_error(result, *fragments: str, code: int = 1) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment.lower() in errors[0].lower(), errors[0]


@pytest.fixture(scope="module")
def photos(tmp_path_factory, data_dir):
    """Four LFW photos each of three people, copied so that tests may remove some."""
    return copy_lfw_photos(data_dir("lfw"), tmp_path_factory.mktemp("photos"), PEOPLE, 4)


@pytest.fixture(scope="module")
def detected(tmp_path_factory, photos):
    """The photos detected and embedded with dlib-resnet128: (crops folder, embeddings file)."""
    from facepipe.detect import DetectorParams, detect
    from facepipe.embed import embed

    work = tmp_path_factory.mktemp("detected")
    detect([photos], work / "crops", DetectorParams(min_neighbors=5), workers=1, show_progress=False)
    embed(work / "crops", work / "image_features.csv", model="dlib-resnet128", workers=1, show_progress=False)
    return work / "crops", work / "image_features.csv"


def hold_lock_in_child(folder: Path) -> subprocess.Popen:
    """A child process that holds ``folder``'s lock until it is killed; returns once it holds it."""
    code = (
        "import sys, time\nfrom facepipe.locks import folder_lock\n"
        "with folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


# --- 1. one lock per output folder ---------------------------------------------------------------------------


def test_a_second_command_on_a_busy_folder_stops_at_once_naming_the_holder(tmp_path, photos):
    run_dir = tmp_path / "run"
    child = hold_lock_in_child(run_dir)
    try:
        started = time.monotonic()
        result = facepipe("run", str(photos), "--out", str(run_dir), "--set", "cluster.k=3", "-q")
        assert time.monotonic() - started < 30  # at once: no stage ran
        assert_one_line_error(result, "in use by another facepipe command", f"pid {child.pid}")
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # the second wrote nothing
        result = facepipe("detect", str(photos), "-o", str(run_dir), "-q")
        assert_one_line_error(result, f"pid {child.pid}")
    finally:
        child.kill()
        child.wait()


def test_a_folder_inside_a_busy_run_folder_is_busy_too(tmp_path, photos):
    run_dir = tmp_path / "run"
    child = hold_lock_in_child(run_dir)
    try:
        result = facepipe("detect", str(photos), "-o", str(run_dir / "temp"), "-q")
        assert_one_line_error(result, "in use by another facepipe command", f"pid {child.pid}")
        assert not (run_dir / "temp").exists()
    finally:
        child.kill()
        child.wait()
    assert facepipe("detect", str(photos), "-o", str(run_dir / "temp"), "-q", "--min-neighbors", "5").returncode == 0


def test_two_real_detect_runs_on_one_folder(tmp_path, data_dir):
    out = tmp_path / "crops"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "facepipe",
            "detect",
            str(data_dir("lfw") / "images"),
            "-o",
            str(out),
            "-q",
            "--detector",
            "haar",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ((out / LOCK_FILE).is_file() and (out / LOCK_FILE).stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.1)
        second = facepipe("detect", str(data_dir("lfw") / "images"), "-o", str(out), "-q", "--detector", "haar")
        assert_one_line_error(second, "in use", f"pid {first.pid}")
    finally:
        first.kill()
        first.wait()


@pytest.mark.fast
def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    child = hold_lock_in_child(tmp_path / "out")
    with pytest.raises(FolderInUseError):
        with folder_lock(tmp_path / "out"):
            pass
    child.send_signal(signal.SIGKILL)
    child.wait()
    with folder_lock(tmp_path / "out"):
        with folder_lock(tmp_path / "out"):  # re-entrant within a process (run, then its stages)
            pass


# --- 2. outputs committed as one unit --------------------------------------------------------------------------


def test_a_cluster_killed_before_its_sidecar_is_never_taken_as_done(tmp_path, detected, monkeypatch):
    import facepipe.cluster as cluster_module

    _, embeddings = detected
    out = tmp_path / "clusters"
    cluster_module.cluster(embeddings, out, ClusterSettings(k=2), samples_dir=None, show_progress=False)
    of_k2 = (out / CLUSTER_RESULTS_CSV).read_bytes()
    real_write = cluster_module.write_json_atomic

    def killed_at_the_sidecar(path, data):
        if Path(path).name.endswith(".csv.json"):
            raise KeyboardInterrupt  # the kill lands after cluster_results.csv was replaced
        real_write(path, data)

    monkeypatch.setattr(cluster_module, "write_json_atomic", killed_at_the_sidecar)
    with pytest.raises(KeyboardInterrupt):
        cluster_module.cluster(embeddings, out, ClusterSettings(k=5), samples_dir=None, show_progress=False)
    monkeypatch.setattr(cluster_module, "write_json_atomic", real_write)
    assert (out / CLUSTER_RESULTS_CSV).read_bytes() != of_k2  # the killed run's file
    summary = cluster_module.cluster(embeddings, out, ClusterSettings(k=2), samples_dir=None, show_progress=False)
    assert not summary.skipped
    assert (out / CLUSTER_RESULTS_CSV).read_bytes() == of_k2
    assert len(read_csv(out / "centroids.csv")) == 2
    # an output changed after the run (by hand, another tool) no longer matches the sidecar's hash: redone
    (out / "centroids.csv").write_text("cluster,e0\n0,1\n")
    assert not cluster_module.cluster(
        embeddings, out, ClusterSettings(k=2), samples_dir=None, show_progress=False
    ).skipped
    assert cluster_module.cluster(
        embeddings, out, ClusterSettings(k=2), samples_dir=None, show_progress=False
    ).skipped


@pytest.mark.parametrize("damage", ["truncated", "older"])
def test_detect_reruns_on_a_damaged_or_older_sources_csv_without_duplicates(tmp_path, photos, damage):
    out = tmp_path / "crops"
    first = facepipe("detect", str(photos), "-o", str(out), "-q", "--min-neighbors", "5", "--workers", "1")
    assert first.returncode == 0, first.stderr
    detections = read_csv(out / DETECTIONS_CSV)
    text = (out / SOURCES_CSV).read_text().splitlines()
    kept = text[:2] + [text[2][: len(text[2]) // 2]] if damage == "truncated" else text[:4]
    (out / SOURCES_CSV).write_text("\n".join(kept) + "\n")  # older: killed between detections.csv and this file
    again = facepipe("detect", str(photos), "-o", str(out), "-q", "--min-neighbors", "5", "--workers", "1")
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
    after = read_csv(out / DETECTIONS_CSV)
    assert after["crop"].is_unique and len(after) == len(detections)
    assert sorted(after["crop"]) == sorted(detections["crop"])
    assert len(read_csv(out / SOURCES_CSV)) == len(list(photos.glob("*.jpg")))


# --- 3. operating-system errors -----------------------------------------------------------------------------------


def plain_user_available() -> None:
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip(
            "needs root and util-linux's setpriv to run a command without root's permission override "
            "(as a plain user every folder test below is a plain chmod)"
        )


def test_read_only_output_folders_give_one_line_in_every_stage(tmp_path, photos, detected):
    plain_user_available()
    crops, embeddings = detected
    locked = tmp_path / "read_only"
    locked.mkdir()
    locked.chmod(0o555)
    cases = [
        ("detect", str(photos), "-o", str(locked / "crops")),
        ("embed", str(crops), "-o", str(locked / "features.csv"), "--model", "dlib-resnet128"),
        ("cluster", str(embeddings), "-o", str(locked / "clusters"), "--k", "2"),
        ("run", str(photos), "--out", str(locked / "run")),
    ]
    for args in cases:
        result = facepipe(*args, "-q", as_plain_user=True)
        assert_one_line_error(result, "permission denied", str(locked))
    assert list(locked.iterdir()) == []


def test_an_output_path_under_a_file(tmp_path, detected):
    crops, _ = detected
    (tmp_path / "afile").write_text("not a folder")
    result = facepipe("embed", str(crops), "-o", str(tmp_path / "afile" / "f.csv"), "--model", "dlib-resnet128", "-q")
    assert_one_line_error(result, "a file is in the way", "afile")
    assert (tmp_path / "afile").read_text() == "not a folder"


def test_a_full_disk_leaves_no_truncated_crop_and_one_line(tmp_path, photos):
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a 160 KiB tmpfs here ({mounted.stderr.decode().strip()}): needs root in a "
            "namespace that allows mounts"
        )
    try:
        result = facepipe(
            "detect",
            str(photos),
            "-o",
            str(small / "crops"),
            "-q",
            "--min-neighbors",
            "5",
            "--workers",
            "1",
            "--crop-format",
            "png",
        )
        assert_one_line_error(result, "no space left on the device")
        crops = [p for p in (small / "crops").iterdir() if p.suffix == ".png"]
        assert crops, "the disk should hold some crops before it is full"
        for crop in crops:  # every crop under its final name is whole
            with Image.open(crop) as image:
                image.load()
        assert not list((small / "crops").glob(".*.tmp*"))
        done = read_csv(small / "crops" / SOURCES_CSV) if (small / "crops" / SOURCES_CSV).is_file() else None
        assert done is None or set(read_csv(small / "crops" / DETECTIONS_CSV)["crop"]) <= {c.name for c in crops}
    finally:
        subprocess.run(["umount", str(small)], check=True)


# --- 4. values checked up front ----------------------------------------------------------------------------------

BAD_CONFIG_VALUES = [
    ("train_cvae", "epochs", "2.5"),
    ("train_cvae", "epochs", '"two"'),
    ("train_cvae", "epochs", "1e20"),
    ("train_cvae", "learning_rate", "nan"),
    ("detect", "min_neighbors", '"five"'),
    ("detect", "scale_factor", "1.0"),
    ("train_cvae", "epochs", "true"),
    ("train_cvae", "latent_dim", "0"),
    ("cluster", "k_range", "[1, 5]"),
    ("generate", "temperature", "inf"),
]


@pytest.mark.parametrize("section, key, value", BAD_CONFIG_VALUES)
def test_a_bad_config_value_is_refused_before_any_stage_runs(tmp_path, photos, section, key, value):
    config = tmp_path / "config.toml"
    config.write_text(f"[{section}]\n{key} = {value}\n")
    result = CliRunner().invoke(main, ["run", str(photos), "--out", str(tmp_path / "run"), "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert f"[{section}] {key}" in result.output and "nothing was run" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.fast
@pytest.mark.parametrize("option", [["--beta", "nan"], ["--learning-rate", "inf"], ["--epochs", "0"]])
def test_non_finite_training_settings_are_bad_usage(tmp_path, option):
    result = CliRunner().invoke(main, ["train-cvae", str(tmp_path / "cluster_results.csv"), *option])
    assert result.exit_code == 2 and option[0] in result.output, result.output


@pytest.mark.parametrize(
    "args", [["--k", "0"], ["--k", "many"], ["--k-range", "1:5"], ["--k-range", "2-40"], ["--threshold", "nan"]]
)
def test_bad_k_and_threshold_values_are_bad_usage(detected, args):
    _, embeddings = detected
    result = CliRunner().invoke(main, ["cluster", str(embeddings), *args])
    assert result.exit_code == 2, result.output


@pytest.mark.fast
def test_probe_files_with_non_finite_or_zero_values_are_refused(tmp_path):
    good = {
        "format": "facepipe-linear-probe/1",
        "target": "bald",
        "intercept": 0.1,
        "threshold": 0.5,
        "C": 1.0,
        "embedding_model": "dlib-resnet128",
        "embedding_dimension": 2,
        "coefficients": [0.5, -0.5],
        "scaler_mean": [0.0, 0.0],
        "scaler_scale": [1.0, 1.0],
    }
    path = tmp_path / "probe.json"
    path.write_text(json.dumps(good))
    assert read_probe_json(path)["target"] == "bald"
    for change in (
        {"coefficients": [float("nan"), 0.0]},
        {"scaler_scale": [1.0, 0.0]},
        {"intercept": float("inf")},
        {"threshold": 3.0},
        {"embedding_dimension": 10**9},
    ):
        path.write_text(json.dumps(dict(good, **change)))
        with pytest.raises(FacepipeError):
            read_probe_json(path)


def test_a_checkpoint_asking_for_a_huge_model_is_refused_before_building_it(tmp_path):
    import torch

    from facepipe.cvae import CVAEConfig, load_cvae

    for change in ({"image_size": 1_000_000}, {"latent_dim": 10**9}, {"beta": float("nan")}, {"clusters": "all"}):
        config = dict(CVAEConfig(clusters=[0, 1]).to_dict(), **change)
        torch.save({"format": "facepipe-cvae/1", "config": config, "model": {}, "epoch": 1}, tmp_path / "big.pt")
        started = time.monotonic()
        with pytest.raises(FacepipeError, match="CVAE setting|config"):
            load_cvae(tmp_path / "big.pt")
        assert time.monotonic() - started < 10


# --- 5. inputs ---------------------------------------------------------------------------------------------------


def test_a_file_that_is_neither_an_image_nor_a_text_list_is_refused(tmp_path, photos):
    gif = tmp_path / "anim.gif"
    Image.open(next(photos.glob("*.jpg"))).convert("P").save(gif)
    result = facepipe("detect", str(gif), "-o", str(tmp_path / "crops"), "-q")
    assert_one_line_error(result, "neither an image", "anim.gif")


def test_a_latin1_list_file_is_read(tmp_path, photos):
    named = tmp_path / "café"
    named.mkdir()
    shutil.copy(next(photos.glob("*.jpg")), named / "één.jpg")
    listing = tmp_path / "photos.txt"
    listing.write_bytes("# Latin-1\n".encode() + "café/één.jpg\n".encode("latin-1"))
    from facepipe.images import collect_images

    assert collect_images([listing]) == [named / "één.jpg"]


def test_unreadable_folders_and_files_and_huge_photos_are_listed_with_their_reason(tmp_path, photos):
    plain_user_available()
    inputs = tmp_path / "inputs"
    shutil.copytree(photos, inputs)
    (inputs / "private").mkdir()
    shutil.copy(next(photos.glob("*.jpg")), inputs / "private" / "hidden.jpg")
    (inputs / "private").chmod(0o000)
    unreadable = inputs / "unreadable.jpg"
    shutil.copy(next(photos.glob("*.jpg")), unreadable)
    unreadable.chmod(0o000)
    Image.new("L", (13000, 13000)).save(inputs / "huge.png")  # about 190 KB on disk, 169 MP decoded
    out = tmp_path / "crops"
    out.mkdir()
    result = facepipe(
        "detect", str(inputs), "-o", str(out), "-q", "--min-neighbors", "5", "--workers", "1", as_plain_user=True
    )
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr
    reasons = dict(read_csv(out / ERRORS_CSV)[["path", "reason"]].itertuples(index=False))
    assert "cannot list this folder: Permission denied" in reasons[str(inputs / "private")]
    assert "permission denied" in reasons[str(unreadable)]
    assert "too large: 13000x13000 = 169 MP" in reasons[str(inputs / "huge.png")]
    (inputs / "private").chmod(0o755)


# --- 6. outputs of an earlier run that no longer belong ----------------------------------------------------------


def test_a_photo_removed_between_two_detect_runs_leaves_no_row_and_no_crop(tmp_path, photos):
    from facepipe.detect import DetectorParams, detect
    from facepipe.embed import embed

    inputs = tmp_path / "inputs"
    shutil.copytree(photos, inputs)
    out, params = tmp_path / "crops", DetectorParams(min_neighbors=5)
    detect([inputs], out, params, workers=1, show_progress=False)
    before = read_csv(out / DETECTIONS_CSV)
    removed = before["source"].iloc[0]
    its_crops = before.loc[before["source"] == removed, "crop"].tolist()
    Path(removed).unlink()
    summary = detect([inputs], out, params, workers=1, show_progress=False)
    assert summary.removed == 1 and summary.processed_now == 0
    after = read_csv(out / DETECTIONS_CSV)
    assert removed not in set(after["source"]) and removed not in set(read_csv(out / SOURCES_CSV)["source"])
    assert not any((out / crop).exists() for crop in its_crops)
    embedded = embed(out, tmp_path / "f.csv", model="dlib-resnet128", workers=1, show_progress=False)
    assert embedded.crops == len(after) == len(before) - len(its_crops)


# --- 7. smaller cases ----------------------------------------------------------------------------------------------


def test_a_cascade_that_is_not_xml_is_one_line(tmp_path, photos):
    (tmp_path / "bad.xml").write_text("not a cascade")
    result = facepipe("detect", str(photos), "-o", str(tmp_path / "crops"), "--cascade", str(tmp_path / "bad.xml"))
    assert_one_line_error(result, "not a haar cascade")


def test_formula_like_names_are_escaped_in_csvs_and_read_back_as_they_are(tmp_path, detected):
    crops, _ = detected
    raw = tmp_path / "raw"
    raw.mkdir()
    names = ["=HYPERLINK(1).jpg", "+1.jpg", "@sum.jpg", "-2.jpg", "'=quoted.jpg"]
    first = next(crops.glob("*.jpg"))
    for name in names:
        shutil.copy(first, raw / name)
    from facepipe.embed import embed

    embed(raw, tmp_path / "f.csv", model="dlib-resnet128", workers=1, show_progress=False)
    cells = [line.split(",")[0] for line in (tmp_path / "f.csv").read_text().splitlines()[1:]]
    assert not [cell for cell in cells if cell[:1] in "=+-@"]
    assert sorted(read_embeddings(tmp_path / "f.csv").names) == sorted(names)


def test_detect_workers_stop_writing_once_their_parent_is_killed(tmp_path, data_dir):
    out = tmp_path / "crops"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "facepipe",
            "detect",
            str(data_dir("lfw") / "images"),
            "-o",
            str(out),
            "-q",
            "--detector",
            "dlib-hog",
            "--workers",
            "2",
        ],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.jpg"))) < 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    time.sleep(1.0)
    settled = {p.name for p in out.glob("*.jpg")}
    time.sleep(3.0)
    assert {p.name for p in out.glob("*.jpg")} == settled


def test_embeddings_that_no_longer_match_their_sidecar_are_refused_and_redone(tmp_path, detected):
    """A run killed between the data file and its sidecar, or a file changed since: readers refuse it, and a
    rerun of embed redoes it instead of trusting it."""
    from facepipe.embed import embed

    crops, _ = detected
    output = tmp_path / "f.csv"
    embed(crops, output, model="dlib-resnet128", workers=1, show_progress=False)
    original = output.read_text()
    lines = original.splitlines()
    output.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")  # same rows, other order
    with pytest.raises(FacepipeError, match="does not match its sidecar"):
        read_embeddings(output)
    summary = embed(crops, output, model="dlib-resnet128", workers=1, show_progress=False)
    assert summary.embedded_now == summary.crops and output.read_text() == original
