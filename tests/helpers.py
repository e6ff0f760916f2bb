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
