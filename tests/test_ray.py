"""The Ray engine (issue 17): on a two-node Ray cluster on this machine, detect and embed write the files the
local engine writes (bit for bit), record unreadable photos and crops, resume a killed job, and survive the
death of one of their workers."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from facepipe.detect import DetectorParams, detect
from facepipe.embed import embed
from facepipe.formats import DETECTIONS_CSV, SOURCES_CSV, embed_errors_path

# Haar with HOG as fallback: both detectors at work, no CNN (1.3 s a photo) to slow the suite.
PARAMS = DetectorParams(detector="haar+hog+cnn", min_neighbors=5, cnn_max_side=64)


def require_ray() -> None:
    """Ray must be installed under CI (the test command installs '.[test,ray]'); elsewhere its tests skip."""
    try:
        import ray.data  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("Ray is not installed: the test command installs '.[test,ray]'")
        pytest.skip("Ray is not installed (pip install -e '.[ray]')")


@pytest.fixture(scope="module")
def ray_cluster():
    """A head and a second node, one CPU each, on this machine; this process connected to it."""
    require_ray()
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def photos(data_dir, tmp_path_factory) -> list[Path]:
    """Real photos: LFW portraits, group photos (several faces, some none), and one file that is no image."""
    broken = tmp_path_factory.mktemp("broken") / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    lfw = sorted((data_dir("lfw") / "images").glob("[A-B]*/*.jpg"))[:150]
    groups = sorted((data_dir("group_photos") / "images").glob("dlib_*.jpg"))[:6]
    return lfw + groups + [broken]


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.suffix != ".json"}


@pytest.fixture(scope="module")
def local_crops(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local")
    detect(photos, out, PARAMS, workers=2, show_progress=False)
    return out


def test_ray_detect_writes_the_local_engines_files_on_both_nodes(ray_cluster, photos, local_crops, tmp_path):
    summary = detect(photos, tmp_path, PARAMS, engine="ray", show_progress=False)
    assert len(summary.nodes) == 2 and sum(summary.nodes.values()) == len(photos)  # both nodes took a share
    assert folder_digest(tmp_path) == folder_digest(local_crops)  # the CSVs and every crop, byte for byte
    sources = pd.read_csv(tmp_path / SOURCES_CSV)
    assert sources.set_index("source").loc[str(photos[-1]), "status"] == "error"  # recorded, not fatal
    assert summary.errors == 1 and summary.faces > len(photos)  # the group photos hold several faces


def test_ray_embed_writes_the_local_engines_embeddings(ray_cluster, local_crops, tmp_path):
    crops = tmp_path / "crops"
    shutil.copytree(local_crops, crops)
    damaged = pd.read_csv(crops / DETECTIONS_CSV)["crop"].iloc[3]
    (crops / damaged).write_bytes(b"truncated")
    local = embed(crops, tmp_path / "local.csv", model="dlib-resnet128", show_progress=False)
    on_ray = embed(
        crops, tmp_path / "ray.csv", model="dlib-resnet128", batch_size=7, engine="ray", show_progress=False
    )
    assert len(on_ray.nodes) == 2 and on_ray.errors == local.errors == 1
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
    assert (
        embed_errors_path(tmp_path / "ray.csv").read_text() == embed_errors_path(tmp_path / "local.csv").read_text()
    )
    assert damaged in embed_errors_path(tmp_path / "ray.csv").read_text()


def start_detect(listing: Path, out: Path, address: str) -> subprocess.Popen:
    code = (
        "import sys; from facepipe.detect import detect, DetectorParams; "
        "detect([sys.argv[1]], sys.argv[2], DetectorParams(detector='haar', min_neighbors=5), engine='ray', "
        "ray_address=sys.argv[3], show_progress=False, checkpoint_seconds=0.05)"
    )
    return subprocess.Popen([sys.executable, "-c", code, str(listing), str(out), address])


def wait_for_rows(sources: Path, rows: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if sources.is_file() and len(sources.read_text().splitlines()) > rows:
            return
        time.sleep(0.02)


@pytest.fixture(scope="module")
def many_photos(data_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A list of 300 LFW photos, and the local engine's detect of them."""
    listing = tmp_path_factory.mktemp("listing") / "photos.txt"
    listing.write_text("\n".join(map(str, sorted((data_dir("lfw") / "images").glob("[C-J]*/*.jpg"))[:300])) + "\n")
    whole = tmp_path_factory.mktemp("whole")
    detect([listing], whole, DetectorParams(detector="haar", min_neighbors=5), show_progress=False)
    return listing, whole


def test_a_killed_ray_detect_resumes_to_the_local_result(ray_cluster, many_photos, tmp_path):
    listing, whole = many_photos
    process = start_detect(listing, tmp_path, ray_cluster.address)
    wait_for_rows(tmp_path / SOURCES_CSV, 30, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = len(pd.read_csv(tmp_path / SOURCES_CSV))
    assert 30 <= partial < 300, "the job was not interrupted part-way"

    resumed = detect(
        [listing], tmp_path, DetectorParams(detector="haar", min_neighbors=5), engine="ray", show_progress=False
    )
    assert resumed.skipped == partial and resumed.processed_now == 300 - partial
    assert folder_digest(tmp_path) == folder_digest(whole)
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def ray_map_workers() -> list[int]:
    """Process ids of the Ray actors running a map_batches stage on this machine (their process title)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::MapWorker"):
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_a_ray_worker_that_dies_is_replaced_and_its_photos_redone(ray_cluster, many_photos, tmp_path):
    listing, whole = many_photos
    process = start_detect(listing, tmp_path, ray_cluster.address)
    wait_for_rows(tmp_path / SOURCES_CSV, 30, process)
    workers = ray_map_workers()
    assert workers and process.poll() is None, "no worker to kill: the job ended too soon"
    os.kill(workers[0], signal.SIGKILL)
    assert process.wait(timeout=300) == 0
    assert folder_digest(tmp_path) == folder_digest(whole)


def test_run_on_ray_writes_what_the_stages_write_and_a_switch_of_engine_redoes_nothing(
    ray_cluster, photos, local_crops, tmp_path
):
    from facepipe.config import load_config
    from facepipe.run import run

    config = load_config(
        None,
        [
            "detect.min_neighbors=5",
            "detect.cnn_max_side=64",
            'embed.model="dlib-resnet128"',
            "cluster.k=3",
            "train_cvae.epochs=1",
            "train_cvae.image_size=16",
            "generate.samples=0",
            "generate.evaluate=false",
            'run.engine="ray"',
        ],
    )
    first = run(photos, tmp_path / "run", config, show_progress=False)
    assert {s.name: s.status for s in first.stages}["embed"] == "ran"
    assert "on 2 Ray nodes" in next(s for s in first.stages if s.name == "detect").summary
    assert folder_digest(tmp_path / "run" / "temp") == folder_digest(local_crops)
    embed(local_crops, tmp_path / "local.csv", model="dlib-resnet128", show_progress=False)
    assert (tmp_path / "run" / "image_features.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()

    config["run"]["engine"] = "local"
    again = run(photos, tmp_path / "run", config, show_progress=False)
    assert {s.status for s in again.stages if s.name != "probe"} == {"skipped"}


def test_a_ray_address_where_nothing_answers_is_refused_at_once(tmp_path, data_dir):
    import socket

    from facepipe.common import FacepipeError

    require_ray()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(FacepipeError, match="no Ray cluster answers"):
        detect([data_dir("lfw") / "images"], tmp_path / "out", engine="ray", ray_address=f"127.0.0.1:{port}")
    assert time.monotonic() - started < 10 and not (tmp_path / "out").exists()


@pytest.mark.fast
def test_the_run_config_refuses_an_unknown_engine():
    from facepipe.config import default_config
    from facepipe.settings import config_problems

    config = default_config()
    config["run"]["engine"] = "spark"
    assert any("[run] engine" in problem for problem in config_problems(config))
