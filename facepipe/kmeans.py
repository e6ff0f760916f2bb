"""k-means and choosing k, for the cluster stage: k-means++ seeding (scikit-learn's ``kmeans_plusplus``)
followed by Lloyd iterations in faiss, ``n_init`` seeded restarts, the lowest inertia kept. On large inputs
faiss fits on a sample of at most ``MAX_POINTS_PER_CENTROID * k`` points and every point is then assigned to
its nearest centroid; ``select_k`` fits every k on at most ``SELECTION_MAX_POINTS`` points and scores the
silhouette on at most ``SILHOUETTE_MAX_POINTS``. ``benchmarks/bench_cluster.py`` compares this with
scikit-learn's KMeans.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from facepipe.common import FacepipeError, progress
from facepipe.formats import K_SELECTION_COLUMNS
from facepipe.settings import K_RULES

SELECTION_MAX_POINTS = 20_000


SILHOUETTE_MAX_POINTS = 5_000


MAX_POINTS_PER_CENTROID = 256


LLOYD_ITERATIONS = 30


SEEDING_POINTS_PER_CENTROID = 32  # k-means++ seeds on at most 32 k points: on 25,600 x 2048 it took 14 s a restart


SINGLE_THREAD_BELOW = 20_000_000  # n x d below which one thread beats several (no OpenMP start-up, no contention)


@dataclass
class KMeansFit:
    """One k-means solution: centroids (k, d), each point's cluster and squared distance to its centroid."""

    centroids: np.ndarray
    labels: np.ndarray
    squared_distances: np.ndarray

    @property
    def inertia(self) -> float:
        return float(self.squared_distances.astype(np.float64).sum())


@contextmanager
def _threads(count: int) -> Iterator[None]:
    """Limit BLAS (threadpoolctl) and faiss (OpenMP) to ``count`` threads inside the block."""
    import faiss
    from threadpoolctl import threadpool_limits

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        with threadpool_limits(limits=count):
            yield
    finally:
        faiss.omp_set_num_threads(before)


def _thread_count(vectors: np.ndarray) -> int:
    return 1 if vectors.shape[0] * vectors.shape[1] < SINGLE_THREAD_BELOW else (os.cpu_count() or 1)


def kmeans(
    vectors: np.ndarray,
    k: int,
    *,
    n_init: int = 10,
    seed: int = 0,
    max_points_per_centroid: int = MAX_POINTS_PER_CENTROID,
    iterations: int = LLOYD_ITERATIONS,
) -> KMeansFit:
    """k-means with k-means++ seeding and faiss Lloyd iterations; the best of ``n_init`` seeded restarts.

    When there are more than ``max_points_per_centroid * k`` points the restarts fit on a seeded
    random sample of that size (k-means++ seeds on at most ``SEEDING_POINTS_PER_CENTROID * k`` of
    them); every point is then assigned to its nearest final centroid.
    """
    import faiss
    from sklearn.cluster import kmeans_plusplus

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if not 1 <= k <= n:
        raise FacepipeError(f"k = {k} needs at least {k} embeddings, but there are {n}")
    rng = np.random.default_rng(seed)
    sample = vectors
    if n > max_points_per_centroid * k:
        sample = vectors[np.sort(rng.choice(n, max_points_per_centroid * k, replace=False))]
    best_centroids, best_objective = None, math.inf
    with _threads(_thread_count(sample)):
        for restart_seed in rng.integers(2**31 - 1, size=max(1, n_init)):
            seeding = (
                sample
                if len(sample) <= SEEDING_POINTS_PER_CENTROID * k
                else sample[
                    np.random.default_rng(int(restart_seed)).choice(
                        len(sample), SEEDING_POINTS_PER_CENTROID * k, replace=False
                    )
                ]
            )
            start, _ = kmeans_plusplus(seeding, k, random_state=int(restart_seed))
            engine = faiss.Kmeans(
                dim,
                k,
                niter=iterations,
                seed=int(restart_seed),
                min_points_per_centroid=1,
                max_points_per_centroid=len(sample),
            )
            engine.train(sample, init_centroids=np.ascontiguousarray(start, dtype=np.float32))
            objective = float(engine.obj[-1]) if len(engine.obj) else math.inf
            if best_centroids is None or objective < best_objective:
                best_centroids, best_objective = engine.centroids.copy(), objective
        index = faiss.IndexFlatL2(dim)
        index.add(best_centroids)
        squared, nearest = index.search(vectors, 1)
    return KMeansFit(best_centroids, nearest[:, 0].astype(np.int64), np.maximum(squared[:, 0], 0.0))


def silhouette(vectors: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Mean cosine silhouette; on a seeded sample of ``SILHOUETTE_MAX_POINTS`` when there are more points."""
    from sklearn.metrics import silhouette_score

    clusters = len(np.unique(labels))
    if not 2 <= clusters <= len(labels) - 1:
        return float("nan")
    sample_size = SILHOUETTE_MAX_POINTS if len(labels) > SILHOUETTE_MAX_POINTS else None
    with _threads(1):
        return float(silhouette_score(vectors, labels, metric="cosine", sample_size=sample_size, random_state=seed))


@dataclass
class KSelection:
    """What ``select_k`` tried and chose."""

    table: pd.DataFrame  # K_SELECTION_COLUMNS
    k: int
    rule: str  # one sentence: the k, the rule, the other rule's answer
    silhouette_k: int
    elbow_k: int | None
    fits: dict[int, KMeansFit] = field(default_factory=dict, repr=False)


def elbow(ks: Sequence[int], inertias: Sequence[float]) -> int | None:
    """The knee of the decreasing, convex inertia curve by the kneedle method (None if there is none)."""
    from kneed import KneeLocator

    if len(ks) < 3:
        return None
    knee = KneeLocator(list(ks), list(inertias), curve="convex", direction="decreasing").knee
    return None if knee is None else int(knee)


def select_k(
    vectors: np.ndarray,
    ks: Sequence[int],
    *,
    rule: str = "silhouette",
    n_init: int = 10,
    seed: int = 0,
    show_progress: bool = True,
) -> KSelection:
    """Fit k-means for every k in ``ks`` (on a sample of ``SELECTION_MAX_POINTS`` when there are more points);
    choose the k of highest cosine silhouette (``rule="silhouette"``) or the kneedle elbow of the inertia."""
    if rule not in K_RULES:
        raise FacepipeError(f"unknown k rule {rule!r}: use {' or '.join(K_RULES)}")
    total = len(vectors)
    sampled = total > SELECTION_MAX_POINTS
    if sampled:
        keep = np.sort(np.random.default_rng(seed).choice(len(vectors), SELECTION_MAX_POINTS, replace=False))
        vectors = vectors[keep]
    rows, fits = [], {}
    for k in progress(list(ks), desc="cluster: trying k", unit="k", enabled=show_progress):
        fit = kmeans(vectors, k, n_init=n_init, seed=seed)
        rows.append({"k": k, "inertia": fit.inertia, "silhouette": silhouette(vectors, fit.labels, seed)})
        if not sampled:
            fits[k] = fit
    table = pd.DataFrame(rows, columns=K_SELECTION_COLUMNS)
    silhouette_k = int(table.loc[table["silhouette"].idxmax(), "k"])
    elbow_k = elbow(table["k"], table["inertia"])
    scope = f"k = {ks[0]}..{ks[-1]}" + (f" step {ks.step}" if isinstance(ks, range) and ks.step > 1 else "")
    scope += f", on a random {SELECTION_MAX_POINTS} of the {total} points" if sampled else ""
    best_silhouette = float(table["silhouette"].max())
    if rule == "elbow" and elbow_k is not None:
        chosen = elbow_k
        text = (
            f"k = {chosen}: the elbow of the inertia curve (kneedle) over {scope}; "
            f"the cosine silhouette peaks at k = {silhouette_k} ({best_silhouette:.3f})"
        )
    else:
        chosen = silhouette_k
        fallback = " (no elbow found, so the silhouette decided)" if rule == "elbow" else ""
        elbow_text = f"k = {elbow_k}" if elbow_k is not None else "not found"
        text = (
            f"k = {chosen}: the highest mean cosine silhouette ({best_silhouette:.3f}) over {scope}{fallback}; "
            f"the inertia elbow (kneedle) is {elbow_text}"
        )
    if len(ks) > 1 and chosen == ks[-1]:
        text += "; this is the top of the range, so the data may hold more groups: try a wider --k-range"
    return KSelection(table=table, k=chosen, rule=text, silhouette_k=silhouette_k, elbow_k=elbow_k, fits=fits)
