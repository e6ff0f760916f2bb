"""Shared test fixtures: the real photos in ../shared, and stage outputs reused across tests."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

# A test run started in the background by a shell (as a CI job may be) ignores SIGINT, and so would every
# command a test starts; a Python handler is reset to the default on exec, so the Ctrl-C tests see one as a
# terminal sends it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEPIPE_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"
FIXTURES = SHARED / "fixtures"


def require(path: Path) -> Path:
    """Return ``path`` if it exists; otherwise fail under CI (the data must be there) or skip locally."""
    if path.exists():
        return path
    message = f"test data missing: {path} (set FACEPIPE_SHARED to the shared folder)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def pytest_collection_modifyitems(items):
    """Mark every test that reads ../shared (through data_dir or fixtures_dir) ``shared_data``."""
    for item in items:
        if {"data_dir", "fixtures_dir"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.shared_data)


@pytest.fixture(scope="session")
def data_dir():
    """``data_dir("lfw")`` -> the path of a shared data set, checked to exist."""
    return lambda name: require(DATA / name)


@pytest.fixture(scope="session")
def fixtures_dir():
    """``fixtures_dir("vggface_resnet50")`` -> the path of a shared fixture, checked to exist."""
    return lambda name: require(FIXTURES / name)


@pytest.fixture(scope="session")
def lfw_crops(tmp_path_factory, data_dir):
    """Crops of all of LFW (minNeighbors 5, largest face only: the photos are 150 px with small faces)."""
    from facepipe.detect import DetectorParams, detect

    out = tmp_path_factory.mktemp("lfw_crops")
    detect(
        [data_dir("lfw") / "images"],
        out,
        DetectorParams(detector="haar", min_neighbors=5, largest_only=True),
        workers=2,
        show_progress=False,
    )
    return out


@pytest.fixture(scope="session")
def lfw_dlib_embeddings(tmp_path_factory, lfw_crops):
    """Path of ``image_features.csv``: the ``lfw_crops`` embedded with dlib-resnet128 (128-d, sidecar beside it)."""
    from facepipe.embed import embed

    output = tmp_path_factory.mktemp("lfw_dlib") / "image_features.csv"
    embed(lfw_crops, output, model="dlib-resnet128", workers=2, show_progress=False)
    return output


@pytest.fixture(scope="session")
def celeba_attr_dlib_embeddings(tmp_path_factory, data_dir):
    """Path of ``image_features.csv``: all 2012 aligned celeba_attr faces embedded as they are (no detect) with dlib-resnet128."""
    from facepipe.embed import embed

    output = tmp_path_factory.mktemp("celeba_attr_dlib") / "image_features.csv"
    embed(data_dir("celeba_attr") / "images", output, model="dlib-resnet128", workers=2, show_progress=False)
    return output
