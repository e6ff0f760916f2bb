"""Small functions several test modules use (pytest puts this folder on sys.path)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``."""
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def copy_lfw_photos(lfw: Path, folder: Path, people, per_person: int) -> Path:
    """The first ``per_person`` LFW photos of each of ``people`` (``lfw``: the set's folder), copied into
    ``folder`` so that a test may add to it or remove from it."""
    for person in people:
        for source in sorted((lfw / "images" / person).glob("*.jpg"))[:per_person]:
            shutil.copy(source, folder / source.name)
    return folder


def headless_chromium(window: str = "1200,2000"):
    """Selenium driving Debian's chromium headless (the caller quits it); fails under CI, skips elsewhere, where
    chromium or chromedriver is missing."""
    import os

    import pytest

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        message = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={window}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
