"""embed: dlib verification accuracy on LFW, file round-trips, resume, bad crops, model mismatch."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from facepipe.cli import EXIT_PARTIAL, main
from facepipe.common import FacepipeError
from facepipe.embed import embed
from facepipe.formats import DETECTIONS_CSV, embed_errors_path, read_embeddings, sidecar_path
from facepipe.labels import attach_labels


def verification_pairs(identities: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All same-identity pairs, and as many different-identity pairs drawn at random (seeded)."""
    same = np.array([(i, j) for i, j in itertools.combinations(range(len(identities)), 2)
                     if identities[i] == identities[j]])
    rng = np.random.default_rng(seed)
    different = set()
    while len(different) < len(same):
        i, j = sorted(rng.choice(len(identities), size=2, replace=False))
        if identities[i] != identities[j]:
            different.add((i, j))
    pairs = np.concatenate([same, np.array(sorted(different))])
    is_same = np.concatenate([np.ones(len(same), bool), np.zeros(len(different), bool)])
    return pairs, is_same


def cross_validated_accuracy(distances: np.ndarray, is_same: np.ndarray, folds: int = 10, seed: int = 0) -> float:
    """LFW protocol: per fold, the distance threshold that best separates the other nine folds is applied to it."""
    order = np.random.default_rng(seed).permutation(len(distances))
    correct = 0
    for fold in np.array_split(order, folds):
        train = np.setdiff1d(order, fold)
        candidates = np.unique(distances[train])
        accuracies = [((distances[train] < t) == is_same[train]).mean() for t in candidates]
        threshold = candidates[int(np.argmax(accuracies))]
        correct += ((distances[fold] < threshold) == is_same[fold]).sum()
    return correct / len(distances)


def test_dlib_lfw_verification_accuracy(lfw_dlib_embeddings, lfw_crops, data_dir):
    """The accuracies printed here are the ones in the README."""
    embeddings = read_embeddings(lfw_dlib_embeddings)
    assert embeddings.model == "dlib-resnet128" and embeddings.dim == 128
    assert Path(embeddings.meta["crops_dir"]) == lfw_crops
    labels = attach_labels(embeddings.names, data_dir("lfw") / "manifest.csv", lfw_crops)
    assert labels["matched"].all()
    identities = labels["identity"].to_numpy()
    pairs, is_same = verification_pairs(identities)
    vectors = embeddings.vectors
    distances = np.linalg.norm(vectors[pairs[:, 0]] - vectors[pairs[:, 1]], axis=1)
    accuracy_cv = cross_validated_accuracy(distances, is_same)
    accuracy_06 = ((distances < 0.6) == is_same).mean()
    print(f"dlib-resnet128 LFW verification: {len(embeddings.names)} crops, {is_same.sum()} same + "
          f"{(~is_same).sum()} different pairs: accuracy {accuracy_cv:.4f} (10-fold CV threshold), "
          f"{accuracy_06:.4f} (dlib's threshold 0.6)")
    assert accuracy_cv >= 0.95
    assert accuracy_06 >= 0.95
