"""Faults, folder layouts, odd inputs and exit codes (issue 28, classes 4-7): a folder with no face, Ctrl-C while
the workers start, a full disk while training, output folders inside (or equal to) the inputs, symlinked
folders, photos too small to search, file names that are not UTF-8, and the exit code of every run-config error.
Each case is a real command on real photos (or a synthetic image where the case is the image itself)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import copy_lfw_photos
from PIL import Image
from test_faults import facepipe

from facepipe.cli import main
from facepipe.formats import DETECTIONS_CSV, ERRORS_CSV, SOURCES_CSV, read_csv
from facepipe.settings import ClusterSettings

PEOPLE = ["Kofi_Annan", "Jackie_Chan"]
NOT_UTF8 = os.fsdecode(b"caf\xe9.jpg")  # a Latin-1 file name, as Linux hands it to Python


@pytest.fixture(scope="module")
def photos(tmp_path_factory, data_dir):
    """Three LFW photos each of two people (one face each), copied so that tests may add to the folder."""
    return copy_lfw_photos(data_dir("lfw"), tmp_path_factory.mktemp("photos"), PEOPLE, 3)


def detect_cli(*args: str):
    """facepipe detect in this process (quick); returns click's result."""
    return CliRunner().invoke(main, ["detect", *args, "-q", "--min-neighbors", "5", "--workers", "1"])


def noise_photo(path: Path, width: int = 200, height: int = 200) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


# --- 4. faults ---------------------------------------------------------------------------------------------------


def test_a_folder_with_no_face_is_rerun_as_done(tmp_path):
    noise_photo(tmp_path / "noise.jpg")
    for _ in range(2):
        result = detect_cli(str(tmp_path / "noise.jpg"), "-o", str(tmp_path / "crops"))
        assert result.exit_code == 0, result.output
    assert "0 faces" in result.output and "1 already done" in result.output
    assert read_csv(tmp_path / "crops" / DETECTIONS_CSV).empty


def processes_in_group(group: int) -> int:
    """How many processes of process group ``group`` are alive (from /proc)."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        count += fields[0] != "Z" and int(fields[2]) == group
    return count


def ctrl_c_once_processes_start(args: list[str], processes: int) -> subprocess.Popen:
    """Run facepipe ``args`` in a new process group, and Ctrl-C it (SIGINT to the whole group, as a terminal
    does) once the group has ``processes`` processes; returns the ended child, its stderr read."""
    child = subprocess.Popen(
        [sys.executable, "-m", "facepipe", *args], stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while processes_in_group(child.pid) < processes and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert child.poll() is None, "the command ended before its workers started"
        os.killpg(child.pid, signal.SIGINT)
        child.stderr_text = child.communicate(timeout=120)[1]
    finally:
        if child.poll() is None:
            child.kill()
    return child


@pytest.mark.parametrize("processes", [4, 5])
def test_ctrl_c_while_the_workers_start_is_one_line_and_130(tmp_path, photos, processes):
    """Ctrl-C once the first worker (4: with the facepipe process, the resource tracker and the fork server)
    or both have been forked, while they start."""
    out = tmp_path / "crops"
    args = ["detect", str(photos), "-o", str(out), "-q", "--min-neighbors", "5", "--workers", "2"]
    child = ctrl_c_once_processes_start(args, processes)
    assert child.returncode == 130, child.stderr_text
    assert "Traceback" not in child.stderr_text and "KeyboardInterrupt" not in child.stderr_text, child.stderr_text
    assert [line for line in child.stderr_text.splitlines() if line.strip()] == [
        "interrupted: what was done is kept; rerun the same command to go on"
    ]
    if processes == 5:  # once: the same command rerun finishes what the interrupted one began
        again = CliRunner().invoke(main, args)
        assert again.exit_code == 0, again.output
        assert len(read_csv(out / SOURCES_CSV)) == len(list(photos.glob("*.jpg")))


# --- 5. layouts --------------------------------------------------------------------------------------------------


def test_an_output_folder_inside_the_inputs_is_never_read_back(tmp_path, photos):
    inputs = tmp_path / "inputs"
    shutil.copytree(photos, inputs)
    counts = []
    for _ in range(2):
        result = detect_cli(str(inputs), "-o", str(inputs / "crops"))
        assert result.exit_code == 0, result.output
        counts.append(len(read_csv(inputs / "crops" / DETECTIONS_CSV)))
    assert counts == [len(list(photos.glob("*.jpg")))] * 2 and "6 already done" in result.output
    result = detect_cli(str(inputs), "-o", str(tmp_path / "elsewhere"))  # any later command skips it too
    assert result.exit_code == 0 and len(read_csv(tmp_path / "elsewhere" / SOURCES_CSV)) == counts[0]
    assert not any("crops" in Path(s).parts for s in read_csv(tmp_path / "elsewhere" / SOURCES_CSV)["source"])


@pytest.mark.parametrize("command", ["detect", "run"])
def test_an_output_folder_equal_to_an_input_folder_is_refused_before_anything_is_written(tmp_path, photos, command):
    inputs = tmp_path / "inputs"
    shutil.copytree(photos, inputs)
    before = sorted(p.name for p in inputs.iterdir())
    for given in (inputs, next(inputs.glob("*.jpg"))):  # the folder, or a photo in it
        out = ["-o", str(inputs)] if command == "detect" else ["--out", str(inputs), "--set", "cluster.k=2"]
        result = CliRunner().invoke(main, [command, str(given), *out, "-q"])
        assert result.exit_code == 1 and "would be read back as photos" in result.output, result.output
        assert sorted(p.name for p in inputs.iterdir()) == before  # not even a lock file


def test_photos_reached_through_a_symlinked_folder_count_once(tmp_path, photos):
    (tmp_path / "link").symlink_to(photos, target_is_directory=True)
    result = detect_cli(str(tmp_path / "link"), str(photos), "-o", str(tmp_path / "crops"))
    assert result.exit_code == 0, result.output
    sources = read_csv(tmp_path / "crops" / SOURCES_CSV)["source"]
    assert sorted(sources) == sorted(str(p) for p in photos.glob("*.jpg"))  # the real paths, each once


# --- 6. inputs ---------------------------------------------------------------------------------------------------


def test_photos_too_small_or_narrow_to_search_are_listed_in_errors_csv(tmp_path, photos):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(next(photos.glob("*.jpg")), inputs / "face.jpg")
    for name, size in (("dot.jpg", (1, 1)), ("wide.jpg", (20000, 8)), ("tall.jpg", (8, 20000))):
        Image.new("RGB", size, (128, 128, 128)).save(inputs / name)
    result = CliRunner().invoke(main, ["detect", str(inputs), "-o", str(tmp_path / "crops"), "-q"])  # all 3 detectors
    assert result.exit_code == 3, result.output
    reasons = dict(read_csv(tmp_path / "crops" / ERRORS_CSV)[["path", "reason"]].itertuples(index=False))
    assert sorted(Path(p).name for p in reasons) == ["dot.jpg", "tall.jpg", "wide.jpg"]
    assert "too small to hold a face: 20000x8 pixels" in reasons[str(inputs / "wide.jpg")]
    assert read_csv(tmp_path / "crops" / DETECTIONS_CSV)["source"].tolist() == [str(inputs / "face.jpg")]


def test_dlib_cnn_on_a_strip_narrower_than_its_window_finds_nothing(tmp_path):
    # 640x24 passes the working scale (24 px), but --cnn-max-side 64 shows dlib's CNN 64x2 px: it used to crash
    noise_photo(tmp_path / "strip.png", 640, 24)
    result = facepipe(
        "detect",
        str(tmp_path / "strip.png"),
        "-o",
        str(tmp_path / "crops"),
        "-q",
        "--detector",
        "dlib-cnn",
        "--cnn-max-side",
        "64",
        "--workers",
        "1",
    )
    assert result.returncode == 0 and "1 images, 0 faces, 0 errors" in result.stdout, (result.stdout, result.stderr)


def test_a_file_name_that_is_not_utf8_is_listed_in_errors_csv(tmp_path, photos):
    inputs = tmp_path / "inputs"
    shutil.copytree(photos, inputs)
    shutil.copy(next(photos.glob("*.jpg")), inputs / NOT_UTF8)
    for _ in range(2):
        result = detect_cli(str(inputs), "-o", str(tmp_path / "crops"))
        assert result.exit_code == 3, result.output
    for name in (ERRORS_CSV, SOURCES_CSV, DETECTIONS_CSV):
        (tmp_path / "crops" / name).read_bytes().decode("utf-8")  # valid UTF-8, every one
    errors = read_csv(tmp_path / "crops" / ERRORS_CSV)
    assert errors["path"].tolist() == [str(inputs / "caf\\xe9.jpg")]
    assert "not valid UTF-8" in errors["reason"].iloc[0]
    assert len(read_csv(tmp_path / "crops" / DETECTIONS_CSV)) == len(list(photos.glob("*.jpg")))


@pytest.mark.fast
@pytest.mark.parametrize("given", ["folder", "file"])
def test_a_lone_photo_whose_name_is_not_utf8_is_listed_and_exits_3(tmp_path, given):
    """Not 'no images found' (exit 1) while a photo was given: it is listed in errors.csv, the run exits 3."""
    noise_photo(tmp_path / NOT_UTF8)
    result = detect_cli(str(tmp_path / NOT_UTF8) if given == "file" else str(tmp_path), "-o", str(tmp_path / "crops"))
    assert result.exit_code == 3, result.output
    assert read_csv(tmp_path / "crops" / ERRORS_CSV)["path"].tolist() == [str(tmp_path / "caf\\xe9.jpg")]
    assert read_csv(tmp_path / "crops" / SOURCES_CSV)["status"].tolist() == ["error"]


@pytest.mark.fast
def test_a_photo_name_with_a_tab_and_a_carriage_return_reads_back_as_one_row(tmp_path):
    """The csv module quotes a newline but not a lone CR, which readers take for a line end: such a file is
    written with its text cells quoted."""
    name = "tab\tcr\r.jpg"
    (tmp_path / "in").mkdir()
    noise_photo(tmp_path / "in" / name)
    for _ in range(2):  # the rerun reads the files back and keeps the photo
        result = detect_cli(str(tmp_path / "in"), "-o", str(tmp_path / "crops"))
        assert result.exit_code == 0, result.output
    sources = read_csv(tmp_path / "crops" / SOURCES_CSV, text=["source"])
    assert sources["source"].tolist() == [str(tmp_path / "in" / name)] and sources["status"].tolist() == ["ok"]
    assert "(0 processed now, 1 already done)" in result.output, result.output


@pytest.mark.fast
def test_collect_images_lists_or_refuses_a_name_that_is_not_utf8(tmp_path):
    from facepipe.common import FacepipeError
    from facepipe.images import collect_images

    noise_photo(tmp_path / NOT_UTF8)
    noise_photo(tmp_path / "fine.jpg")
    problems: list[dict] = []
    assert collect_images([tmp_path], problems) == [tmp_path / "fine.jpg"]
    assert [row["path"] for row in problems] == [str(tmp_path / "caf\\xe9.jpg")]
    with pytest.raises(FacepipeError, match="not valid UTF-8"):  # embed's crops: refused in one line
        collect_images([tmp_path])


# --- 7. exit codes -----------------------------------------------------------------------------------------------

BAD_CONFIGS = {
    "unknown section": "[nosuch]\nx = 1\n",
    "unknown key": "[detect]\nnosuch = 1\n",
    "not a table": "detect = 5\n",
    "invalid TOML": "[detect\n",
    "float k range": "[cluster]\nk_range = [2.5, 10]\n",
    "not UTF-8": b'[run]\nlabels = "\xe9"\n',
}


@pytest.mark.fast
@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_every_run_config_error_exits_2_before_anything_runs(tmp_path, case):
    config = tmp_path / "config.toml"
    text = BAD_CONFIGS[case]
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    (tmp_path / "photos").mkdir()
    result = CliRunner().invoke(
        main, ["run", str(tmp_path / "photos"), "--out", str(tmp_path / "run"), "--config", str(config)]
    )
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.fast
def test_a_malformed_set_override_exits_2(tmp_path):
    result = CliRunner().invoke(main, ["run", str(tmp_path), "--out", str(tmp_path / "run"), "--set", "cluster"])
    assert result.exit_code == 2 and "section.option=value" in result.output, result.output


# --- 4. faults: a full disk --------------------------------------------------------------------------------------

SMALL_MODEL = {
    "image_size": 32,
    "latent_dim": 16,
    "base_channels": 16,
    "epochs": 3,
    "identity_weight": 0.0,
    "align": "none",
    "face_mask": "none",
}  # checkpoints of about 1.7 MB


@contextlib.contextmanager
def small_disk(folder: Path, size: str):
    """A tmpfs of ``size`` mounted on ``folder`` (root only; skips where mounts are not allowed)."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}): needs root in a namespace "
            "that allows mounts"
        )
    try:
        yield folder
    finally:  # lazily where a file on it is still open (a failed test's): never leave the mount behind
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def free_space(folder: Path) -> None:
    """The user frees space: the tmpfs on ``folder`` grows."""
    subprocess.run(["mount", "-o", "remount,size=64m", str(folder)], check=True)


@pytest.fixture(scope="module")
def clustered(tmp_path_factory, photos):
    """The photos detected, embedded with dlib-resnet128 and put into 2 groups: cluster_results.csv."""
    from facepipe.cluster import cluster
    from facepipe.detect import DetectorParams, detect
    from facepipe.embed import embed

    work = tmp_path_factory.mktemp("clustered")
    detect([photos], work / "crops", DetectorParams(min_neighbors=5), workers=1, show_progress=False)
    embed(work / "crops", work / "f.csv", model="dlib-resnet128", workers=1, show_progress=False)
    cluster(work / "f.csv", work / "clusters", ClusterSettings(k=2), samples_dir=None, show_progress=False)
    return work / "clusters" / "cluster_results.csv"


def test_a_full_disk_while_training_is_one_line_and_a_plain_rerun_goes_on(tmp_path, clustered):
    with small_disk(tmp_path / "small", "4m") as disk:  # room for epoch 1 and cvae_best.pt, not epoch 2
        args = ["train-cvae", str(clustered), "-o", str(disk / "weights"), "-q"]
        args += [part for key, value in SMALL_MODEL.items() for part in (f"--{key.replace('_', '-')}", str(value))]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, (result.output, result.exception)
        assert result.output.startswith("error: ") and "no space left on the device" in result.output, result.output
        assert sorted(p.name for p in (disk / "weights").glob("cvae_epoch_*.pt")) == ["cvae_epoch_1.pt"]
        assert not list((disk / "weights").glob(".*.tmp*"))
        free_space(disk)
        result = CliRunner().invoke(main, args)  # the same command, no --resume
        assert result.exit_code == 0, result.output
        assert "2 epoch(s)" in result.output and "epoch 3" in result.output


def test_a_full_disk_during_a_run_is_one_line_and_a_plain_rerun_goes_on(tmp_path, photos):
    overrides = [
        "detect.min_neighbors=5",
        "detect.workers=1",
        'embed.model="dlib-resnet128"',
        "embed.workers=1",
        "cluster.k=2",
        "generate.samples=0",
        "generate.evaluate=false",
        *(f"train_cvae.{key}={json.dumps(value)}" for key, value in SMALL_MODEL.items()),
    ]
    with small_disk(tmp_path / "small", "3m") as disk:  # full while training
        args = ["run", str(photos), "--out", str(disk / "run"), "-q", *(f"--set={item}" for item in overrides)]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, (result.output, result.exception)
        assert result.output.startswith("error: ") and "no space left on the device" in result.output, result.output
        free_space(disk)
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        stages = json.loads((disk / "run" / "summary.json").read_text())["stages"]
        assert stages["detect"]["status"] == "skipped" and stages["train_cvae"]["status"] == "resumed"
