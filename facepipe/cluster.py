"""Stage 3: group face embeddings by the same-person distance (a neighbour graph and Chinese whispers, see
``facepipe.cluster_graph``) or with k-means, k chosen by silhouette (elbow shown); faces matching no group go to
the unknown group (-1); draw sample grids.

k-means engine: k-means++ seeding (scikit-learn's ``kmeans_plusplus``) followed by Lloyd iterations in faiss,
``n_init`` seeded restarts, the lowest inertia kept. On large inputs faiss fits on a sample of at most
``MAX_POINTS_PER_CENTROID * k`` points and every point is then assigned to its nearest centroid;
``--k auto`` fits every k on at most ``SELECTION_MAX_POINTS`` points and scores the silhouette on at
most ``SILHOUETTE_MAX_POINTS``. ``benchmarks/bench_cluster.py`` compares this with scikit-learn's KMeans.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from facepipe import __version__
from facepipe.cluster_metrics import clustering_metrics
from facepipe.common import FacepipeError, atomic_path, file_sha256, is_auto, progress
from facepipe.formats import (
    CENTROIDS_CSV,
    CLUSTER_COLUMNS,
    CLUSTER_METRICS_JSON,
    CLUSTER_RESULTS_CSV,
    ELBOW_PNG,
    K_SELECTION_COLUMNS,
    K_SELECTION_CSV,
    SAMPLES_OVERVIEW_JPG,
    SILHOUETTE_PNG,
    UNKNOWN_CLUSTER,
    UNKNOWN_GRID_JPG,
    read_embeddings,
    RUN_SAMPLES_DIR,
    read_json,
    recorded_path,
    output_hashes,
    outputs_match,
    read_centroids,
    sample_grid,
    sidecar_path,
    write_centroids,
    write_csv_atomic,
    write_groups,
    write_json_atomic,
)
from facepipe.limits import CLUSTER, check_limits
from facepipe.locks import locks_output
from facepipe.models import unit_rows
from facepipe.owned import (
    holds_recorded,
    left_alone_phrase,
    recorded_in,
    recorded_outputs,
    refuse_changed,
    remove_recorded,
)
from facepipe.people import (
    PEOPLE_ANCHORS_CSV,
    apply_people,
    people_file_of,
    read_anchors,
    read_people,
    resolve_numbers,
    unknown_faces,
    write_anchors,
)

__all__ = ["cluster", "ClusterSummary", "KMeansFit", "kmeans", "select_k", "parse_k_range", "sample_grid",
           "ELBOW_PNG", "SILHOUETTE_PNG", "K_SELECTION_CSV"]

SAMPLES_IN_OUT = "auto"  # samples_dir: the folder cluster_samples/ in the output folder
SELECTION_MAX_POINTS = 20_000
SILHOUETTE_MAX_POINTS = 5_000
MAX_POINTS_PER_CENTROID = 256
LLOYD_ITERATIONS = 30
SEEDING_POINTS_PER_CENTROID = 32  # k-means++ seeds on at most 32 k points: on 25,600 x 2048 it took 14 s a restart
SINGLE_THREAD_BELOW = 20_000_000  # n x d below which one thread beats several (no OpenMP start-up, no contention)
K_RULES = ("silhouette", "elbow")


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


def kmeans(vectors: np.ndarray, k: int, *, n_init: int = 10, seed: int = 0,
           max_points_per_centroid: int = MAX_POINTS_PER_CENTROID, iterations: int = LLOYD_ITERATIONS) -> KMeansFit:
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
            seeding = sample if len(sample) <= SEEDING_POINTS_PER_CENTROID * k else sample[
                np.random.default_rng(int(restart_seed)).choice(len(sample), SEEDING_POINTS_PER_CENTROID * k, replace=False)]
            start, _ = kmeans_plusplus(seeding, k, random_state=int(restart_seed))
            engine = faiss.Kmeans(dim, k, niter=iterations, seed=int(restart_seed), min_points_per_centroid=1,
                                  max_points_per_centroid=len(sample))
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


def parse_k_range(k_range: str | Sequence[int]) -> range:
    """``"2:40"`` or ``"2:120:5"`` (inclusive) or ``(2, 40)`` / ``(2, 120, 5)`` -> the k values to try."""
    parts = k_range.split(":") if isinstance(k_range, str) else list(k_range)
    try:
        if not all(isinstance(p, str) or type(p) is int for p in parts):  # 2.5 or true in a config's list
            raise TypeError
        numbers = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise FacepipeError(f"k range {k_range!r} must look like START:STOP or START:STOP:STEP, e.g. 2:40") from None
    if len(numbers) not in (2, 3):
        raise FacepipeError(f"k range {k_range!r} must look like START:STOP or START:STOP:STEP, e.g. 2:40")
    start, stop, step = numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else 1
    largest = CLUSTER["k_range"].high
    if not (CLUSTER["k_range"].admits(start) and CLUSTER["k_range"].admits(stop) and start <= stop
            and 1 <= step <= largest):
        raise FacepipeError(f"k range {k_range!r}: need 2 <= START <= STOP <= {largest} and 1 <= STEP <= {largest}")
    return range(start, stop + 1, step)


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


def select_k(vectors: np.ndarray, ks: Sequence[int], *, rule: str = "silhouette", n_init: int = 10, seed: int = 0,
             show_progress: bool = True) -> KSelection:
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
        text = (f"k = {chosen}: the elbow of the inertia curve (kneedle) over {scope}; "
                f"the cosine silhouette peaks at k = {silhouette_k} ({best_silhouette:.3f})")
    else:
        chosen = silhouette_k
        fallback = " (no elbow found, so the silhouette decided)" if rule == "elbow" else ""
        elbow_text = f"k = {elbow_k}" if elbow_k is not None else "not found"
        text = (f"k = {chosen}: the highest mean cosine silhouette ({best_silhouette:.3f}) over {scope}{fallback}; "
                f"the inertia elbow (kneedle) is {elbow_text}")
    if len(ks) > 1 and chosen == ks[-1]:
        text += "; this is the top of the range, so the data may hold more groups: try a wider --k-range"
    return KSelection(table=table, k=chosen, rule=text, silhouette_k=silhouette_k, elbow_k=elbow_k, fits=fits)


def _plot(table: pd.DataFrame, column: str, marks: dict[str, int | None], ylabel: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    axes.plot(table["k"], table[column], marker="o", markersize=3)
    for (label, k), colour in zip(marks.items(), ("tab:red", "tab:green")):
        if k is not None:
            axes.axvline(k, color=colour, linestyle="--", label=f"{label}: k = {k}")
    axes.set_xlabel("k (number of clusters)")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)


def _tile(crops_dir: Path | None, name: str, size: int) -> np.ndarray:
    from PIL import Image

    from facepipe.images import ImageReadError, load_image_rgb

    try:
        rgb = load_image_rgb(crops_dir / name) if crops_dir is not None else None
    except ImageReadError:
        rgb = None
    if rgb is None:
        return np.full((size, size, 3), 200, dtype=np.uint8)
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))


def _captioned_grid(tiles: list[np.ndarray], columns: int, caption: str, labels: list[str] | None = None,
                    tile: int = 112) -> np.ndarray:
    """Tiles in a grid with a caption bar on top and an optional label under each tile."""
    from PIL import Image, ImageDraw

    rows = max(1, math.ceil(len(tiles) / columns))
    label_height = 14 if labels else 0
    width, top = columns * tile, 22
    canvas = Image.new("RGB", (width, top + rows * (tile + label_height)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 5), caption, fill="black")
    for i, image in enumerate(tiles):
        x, y = (i % columns) * tile, top + (i // columns) * (tile + label_height)
        canvas.paste(Image.fromarray(image), (x, y))
        if labels:
            draw.text((x + 3, y + tile + 1), labels[i], fill="black")
    return np.asarray(canvas)


def write_sample_grids(results: pd.DataFrame, crops_dir: Path | None, samples_dir: Path, per_cluster: int = 16,
                       show_progress: bool = True) -> list[Path]:
    """Per cluster, the ``per_cluster`` crops nearest its centroid in a grid (``cluster_N.jpg``), plus
    ``overview.jpg`` with each cluster's nearest crop, and the unknown faces (-1) nearest a group in
    ``unknown.jpg``; returns the files written (the grids of an earlier run are removed by ``cluster``, which
    recorded them)."""
    from facepipe.images import save_image_atomic

    samples_dir.mkdir(parents=True, exist_ok=True)
    written, overview, overview_labels = [], [], []
    groups = results.sort_values(["cluster", "distance", "name"]).groupby("cluster", sort=True)
    for cluster_id, members in progress(groups, desc="cluster: sample grids", total=groups.ngroups, unit="grid",
                                        enabled=show_progress):
        nearest = members["name"].tolist()[:per_cluster]
        tiles = [_tile(crops_dir, name, 112) for name in nearest]
        if cluster_id < 0:
            caption = f"unknown: {len(members)} faces matching no group ({len(nearest)} nearest a group)"
            path = samples_dir / UNKNOWN_GRID_JPG
        else:
            caption = f"cluster {cluster_id}: {len(members)} faces ({len(nearest)} nearest the centroid)"
            path = samples_dir / sample_grid(int(cluster_id))
            overview.append(tiles[0])
            overview_labels.append(f"{cluster_id} ({len(members)})")
        save_image_atomic(path, _captioned_grid(tiles, min(4, len(tiles)), caption))
        written.append(path)
    columns = max(4, math.ceil(math.sqrt(len(overview))))
    caption = f"{len(overview)} clusters: the crop nearest each centroid, cluster id (size)"
    path = samples_dir / SAMPLES_OVERVIEW_JPG
    save_image_atomic(path, _captioned_grid(overview, columns, caption, overview_labels))
    written.append(path)
    return written


@dataclass
class ClusterSummary:
    """What a cluster run produced (or found already done)."""

    k: int
    k_rule: str
    items: int
    sizes: list[int]
    silhouette: float
    out_dir: Path
    samples_dir: Path | None
    metrics: dict | None
    skipped: bool
    seconds: float
    notes: list[str] = field(default_factory=list)
    unknown: int = 0

    def line(self) -> str:
        quality = ""
        if self.metrics:
            quality = (f"; against {self.metrics['identities']} identities: BCubed F {self.metrics['bcubed_f']:.3f}, "
                       f"NMI {self.metrics['nmi']:.3f}, ARI {self.metrics['ari']:.3f}")
        state = "already done, skipped" if self.skipped else f"{self.seconds:.1f}s"
        sizes = f"sizes {min(self.sizes)}..{max(self.sizes)}" if self.sizes else "none"
        return (f"cluster: {self.items} embeddings -> {self.k} clusters ({sizes}) + {self.unknown} unknown, "
                f"silhouette {self.silhouette:.3f}{quality} -> {self.out_dir} ({state})\n  "
                + "\n  ".join([self.k_rule, *self.notes]))

    @classmethod
    def of_previous_run(cls, previous: dict, out_dir: Path, samples: Path | None, seconds: float,
                        notes: list[str]) -> "ClusterSummary":
        """The summary of a rerun that found the same run done (``previous``: its sidecar)."""
        return cls(k=previous["k"], k_rule=previous["k_rule"], items=previous["items"], sizes=previous["sizes"],
                   silhouette=previous["silhouette"], out_dir=out_dir, samples_dir=samples,
                   metrics=previous.get("metrics"), skipped=True, seconds=seconds, notes=notes,
                   unknown=previous.get("unknown", 0))

    def details(self) -> dict:
        """The numbers a run report shows."""
        return {"k": self.k, "k_rule": self.k_rule, "items": self.items, "sizes": self.sizes,
                "unknown": self.unknown, "silhouette": self.silhouette, "metrics": self.metrics}


def _file_digest(path: Path | None) -> str | None:
    return None if path is None else file_sha256(path)


def _identity_metrics(names: list[str], labels_file: Path, crops_dir: Path | None, predicted: np.ndarray) -> dict:
    from facepipe.labels import attach_labels

    joined = attach_labels(names, labels_file, crops_dir)
    if "identity" not in joined.columns:
        raise FacepipeError(f"{labels_file}: the label manifest has no 'identity' column")
    known = joined["matched"].to_numpy() & joined["identity"].notna().to_numpy()
    if known.sum() < 2:
        raise FacepipeError(f"{labels_file}: fewer than 2 of the {len(names)} embeddings have a known identity "
                            "(do the manifest's relpath/name values match the crops or their source photos?)")
    metrics = clustering_metrics(joined.loc[known, "identity"].astype(str).to_numpy(), predicted[known])
    metrics["unlabelled"] = int((~known).sum())
    metrics["labels"] = str(labels_file)
    return metrics


def same_person_distance(threshold: float | str | None, model: str | None, normalize: bool) -> float | None:
    """The distance rule to use: ``threshold`` when it is a number, else (``"auto"``) the embedder's measured
    rule (``SAME_PERSON_DISTANCE``, for L2-normalised embeddings), None where no rule is known."""
    from facepipe.models import SAME_PERSON_DISTANCE

    if threshold is None or is_auto(threshold):
        return SAME_PERSON_DISTANCE.get(model) if normalize else None
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise FacepipeError(f"threshold must be a distance or 'auto', got {threshold!r}") from None
    check_limits(CLUSTER, threshold=value)
    return value


def _photo_ids(names: list[str], crops_dir: Path | None, notes: list[str]) -> np.ndarray:
    """A number per face naming its source photo (from detect's detections.csv); a face of unknown source
    counts as its own photo, and ``notes`` says so when no source is known."""
    from facepipe.labels import crop_sources, photo_ids

    sources = crop_sources(names, crops_dir)
    if not sources:
        notes.append("the crops' source photos are not known (no detections.csv): the one-face-per-photo rule "
                     "could not be applied")
    return photo_ids(names, sources)


@dataclass
class Grouping:
    """Each face's group (0 = largest; -1 unknown), its distance to its group's centroid (to the nearest
    centroid for unknown faces), the centroids, and what the rules took out of groups."""

    labels: np.ndarray
    distances: np.ndarray
    centroids: np.ndarray
    unmatched: int
    same_photo: int
    too_small: int


def finish_groups(vectors: np.ndarray, labels: np.ndarray, unmatched: np.ndarray, photos: np.ndarray,
                  min_group_size: int) -> Grouping:
    """Apply the rules to raw cluster labels: ``unmatched`` faces are unknown; a group keeps one face per photo
    (the one nearest its centroid); groups of fewer than ``min_group_size`` faces are unknown; the groups
    are then numbered by size, largest first."""
    from facepipe.cluster_graph import one_face_per_photo

    labels = _by_size(np.where(unmatched, UNKNOWN_CLUSTER, labels))
    _, distances = _centroids(vectors, labels)
    repeats = one_face_per_photo(labels, photos, distances)
    labels[repeats] = UNKNOWN_CLUSTER
    sizes = np.bincount(labels[labels != UNKNOWN_CLUSTER], minlength=max(1, int(labels.max(initial=0)) + 1))
    small = (labels != UNKNOWN_CLUSTER) & (sizes[np.maximum(labels, 0)] < min_group_size)
    labels = _by_size(np.where(small, UNKNOWN_CLUSTER, labels))
    centroids, distances = _centroids(vectors, labels)
    return Grouping(labels, distances, centroids, int(unmatched.sum()), int(repeats.sum()), int(small.sum()))


def _by_size(labels: np.ndarray, preferred: dict[int, int] | None = None) -> np.ndarray:
    """Group ids renumbered 0, 1, ... by size, largest first (ties by old id); unknown (-1) stays. A group in
    ``preferred`` (old id -> number, e.g. a people file's) gets that number where it is free and below the
    number of groups; the others fill the remaining numbers by size."""
    grouped = labels >= 0
    ids, compact, sizes = np.unique(labels[grouped], return_inverse=True, return_counts=True)
    by_size = np.lexsort((ids, -sizes))
    rank = np.full(len(ids), -1, dtype=np.int64)
    wanted = [((preferred or {}).get(int(old_id)), position) for position, old_id in enumerate(ids)]
    for number, position in sorted((n, p) for n, p in wanted if n is not None and n < len(ids)):
        if number not in rank:
            rank[position] = number
    free = iter(sorted(set(range(len(ids))) - set(rank.tolist())))
    for position in by_size:
        if rank[position] < 0:
            rank[position] = next(free)
    renumbered = np.full(len(labels), UNKNOWN_CLUSTER, dtype=np.int64)
    renumbered[grouped] = rank[compact]
    return renumbered


def _centroids(vectors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean of each group 0..max, and each face's distance to its own group's centroid (to the nearest
    centroid for an unknown face; NaN when there is no group)."""
    from facepipe.cluster_graph import nearest_centroids

    grouped = labels >= 0
    count = int(labels.max()) + 1 if grouped.any() else 0
    centroids = np.zeros((count, vectors.shape[1]), dtype=np.float64)
    np.add.at(centroids, labels[grouped], vectors[grouped])
    centroids = (centroids / np.maximum(np.bincount(labels[grouped], minlength=count), 1)[:, None]).astype(np.float32)
    distances = np.full(len(labels), np.nan)
    distances[grouped] = np.linalg.norm(vectors[grouped] - centroids[labels[grouped]], axis=1)
    if count and not grouped.all():
        distances[~grouped] = nearest_centroids(vectors[~grouped], centroids)[0][:, 0]
    return centroids, distances


METHODS = ("auto", "graph", "kmeans")


@locks_output(lambda args: args["out_dir"])
def cluster(
    embeddings_path: str | os.PathLike,
    out_dir: str | os.PathLike = "clusters",
    *,
    method: str = "auto",
    threshold: float | str | None = "auto",
    min_group_size: int = 2,
    k: int | str | None = "auto",
    k_range: str | Sequence[int] = (2, 40),
    k_rule: str = "silhouette",
    normalize: bool = True,
    seed: int = 0,
    n_init: int = 10,
    samples_dir: str | os.PathLike | None = SAMPLES_IN_OUT,
    samples_per_cluster: int = 16,
    crops_dir: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    people: str | os.PathLike | None = None,
    force: bool = False,
    show_progress: bool = True,
) -> ClusterSummary:
    """Group the embeddings in ``embeddings_path`` (CSV or .npz from ``embed``) into ``out_dir``.

    ``method`` "graph": faces closer than the same-person distance ``threshold`` ("auto": the embedder's rule,
    ``models.SAME_PERSON_DISTANCE``) are linked and Chinese whispers groups them; "kmeans": k-means with ``k``
    a number, or "auto" over ``k_range`` by ``k_rule``; "auto": k-means when ``k`` is a number, else the graph
    where a rule is known. Weakly linked faces (``cluster_graph.unmatched_faces``), groups under ``min_group_size``
    and second faces of a photo in a group go to the unknown group (-1). Writes ``cluster_results.csv`` (+ sidecar,
    written last), ``centroids.csv``, ``k_selection.csv``, plots, sample grids into ``samples_dir`` ("auto":
    ``cluster_samples/`` in ``out_dir``; None: none) and with ``labels`` ``cluster_metrics.json``; a rerun with the
    same inputs and options is skipped unless ``force``. ``people``: a people file (default: ``people.toml`` in
    ``out_dir``, if there is one).
    """
    started = time.monotonic()
    check_limits(CLUSTER, min_group_size=min_group_size, n_init=n_init, seed=seed,
                 samples_per_cluster=samples_per_cluster)
    embeddings_path = Path(os.path.abspath(embeddings_path))
    out_dir = Path(os.path.abspath(out_dir))
    embeddings = read_embeddings(embeddings_path)
    n = len(embeddings.names)
    method, rule_distance, ks = _chosen_method(method, threshold, k, k_range, k_rule, normalize, embeddings,
                                               embeddings_path)
    crops_dir = _crops_dir(crops_dir, embeddings.meta, embeddings_path)
    labels_file, people_file = _labels_file(labels), _labels_file(people_file_of(out_dir, people))
    samples, notes = _samples_folder(samples_dir, out_dir, crops_dir)
    auto = ks is not None and _is_auto(k)
    options = _options_record(method, rule_distance, min_group_size, ks, auto, k_rule, normalize, seed, n_init,
                              samples, samples_per_cluster, crops_dir, people_file)
    fingerprint = _fingerprint(embeddings_path, embeddings.meta, options, labels_file, people_file)
    results_path = out_dir / CLUSTER_RESULTS_CSV
    previous = _previous_run(results_path, fingerprint) if not force else None
    if previous is not None:
        return ClusterSummary.of_previous_run(previous, out_dir, samples, time.monotonic() - started, notes)

    vectors = (_normalised if normalize else _comparable)(embeddings.vectors, embeddings_path)
    photos = _photo_ids(embeddings.names, crops_dir, notes)
    grouping, selection, rule = _group(vectors, method, rule_distance, ks, auto, k_rule, n_init, seed, photos,
                                       min_group_size, show_progress)
    grouping, names, anchors = _with_people(grouping, vectors, embeddings.names, photos, people_file, out_dir,
                                            rule_distance, notes)
    sizes, quality, inertia = _group_quality(vectors, grouping, seed)
    metrics = _identity_metrics(embeddings.names, labels_file, crops_dir, grouping.labels) if labels_file else None
    table = selection.table if selection else pd.DataFrame(
        [{"k": len(sizes), "inertia": inertia, "silhouette": quality}], columns=K_SELECTION_COLUMNS)

    # Everything is computed and validated: now write, the sidecar last (it commits the files by their hashes).
    outputs = _write_outputs(out_dir, embeddings.names, grouping, table, selection, metrics, names, anchors,
                             (crops_dir, samples, samples_per_cluster, show_progress), notes)
    unknown = int((grouping.labels < 0).sum())
    write_json_atomic(sidecar_path(results_path), {
        "outputs": outputs,
        "embeddings": str(embeddings_path), "model": embeddings.model, "dimension": embeddings.dim,
        "crops_dir": options["crops_dir"], "k": len(sizes), "k_rule": rule, "items": n, "sizes": sizes,
        "unknown": unknown, "silhouette": quality, "inertia": inertia, "metrics": metrics, "options": options,
        "method": method, "same_person_distance": rule_distance, "engine": ENGINES[method],
        "fingerprint": fingerprint, "facepipe_version": __version__,
    })
    return ClusterSummary(k=len(sizes), k_rule=rule, items=n, sizes=sizes, silhouette=quality, out_dir=out_dir,
                          samples_dir=samples, metrics=metrics, skipped=False, seconds=time.monotonic() - started,
                          notes=notes, unknown=unknown)


ENGINES = {"graph": "faiss neighbour graph + Chinese whispers",
           "kmeans": f"k-means++ (scikit-learn) + faiss Lloyd, {LLOYD_ITERATIONS} iterations"}


def _group_quality(vectors: np.ndarray, grouping: Grouping, seed: int) -> tuple[list[int], float, float]:
    """The groups' sizes, the silhouette of the grouped faces and their inertia."""
    grouped = grouping.labels >= 0
    sizes = np.bincount(grouping.labels[grouped], minlength=len(grouping.centroids)).tolist()
    return (sizes, silhouette(vectors[grouped], grouping.labels[grouped], seed),
            float(np.square(grouping.distances[grouped]).sum()))


def _with_people(grouping: Grouping, vectors: np.ndarray, names: list[str], photos: np.ndarray,
                 people_file: Path | None, out_dir: Path, rule_distance: float | None, notes: list[str]):
    """The grouping after the people file's corrections (renumbered by size), each group's name, and the
    anchors of the file's group numbers to keep (None without a people file: the anchors are left alone).
    A number first met is anchored on the centroid of that group in the clustering the file was written
    against: the one in ``out_dir`` before this run, else this run's own."""
    from facepipe.cluster_graph import one_face_per_photo

    if people_file is None:
        return grouping, {}, None
    people = read_people(people_file)
    dim = grouping.centroids.shape[1]
    anchors = read_anchors(out_dir, dim)
    earlier = read_centroids(out_dir / CENTROIDS_CSV) if (out_dir / CENTROIDS_CSV).is_file() else grouping.centroids
    earlier = earlier if earlier.shape[1] == dim else grouping.centroids
    anchors.update({n: earlier[n] for n in people.group_numbers() - set(anchors) if 0 <= n < len(earlier)})
    mapping, kept, lost = resolve_numbers(people.group_numbers(), anchors, grouping.centroids, rule_distance)
    labels, named, numbers = apply_people(grouping.labels, names, people, mapping)
    renumbered = _by_size(labels, numbers)  # a group the file numbers keeps that number
    _, distances = _centroids(vectors, renumbered)
    renumbered[one_face_per_photo(renumbered, photos, distances)] = UNKNOWN_CLUSTER  # a merge can join two
    group_names = {}
    for label, name in named.items():
        rows = np.flatnonzero((labels == label) & (renumbered >= 0))
        if rows.size:
            group_names[int(renumbered[rows[0]])] = name
    centroids, distances = _centroids(vectors, renumbered)
    if lost:
        notes.append(f"people file: group number(s) {', '.join(map(str, lost))} no longer match a group "
                     "(no group's centroid is within the same-person distance of theirs); their corrections wait")
    missing = unknown_faces(people, names)
    if missing:
        notes.append(f"people file: {len(missing)} face(s) not in this clustering, e.g. {missing[0]}")
    corrected = Grouping(renumbered, distances, centroids, grouping.unmatched, grouping.same_photo,
                         grouping.too_small)
    return corrected, group_names, {**{n: a for n, a in anchors.items() if n not in mapping}, **kept}


def _options_record(method, rule_distance, min_group_size, ks, auto, k_rule, normalize, seed, n_init, samples,
                    samples_per_cluster, crops_dir, people_file) -> dict:
    """The options as the sidecar records them (and the fingerprint covers them)."""
    return {"method": method, "threshold": rule_distance, "min_group_size": int(min_group_size),
            "people": None if people_file is None else str(people_file),
            "k": None if ks is None else ("auto" if auto else ks.start),
            "k_range": [ks.start, ks.stop - 1, ks.step] if auto else None,
            "k_rule": k_rule if auto else None, "normalize": bool(normalize), "seed": int(seed),
            "n_init": int(n_init), "samples_dir": None if samples is None else str(samples),
            "samples_per_cluster": int(samples_per_cluster), "crops_dir": None if crops_dir is None else str(crops_dir)}


def _chosen_method(method, threshold, k, k_range, k_rule, normalize, embeddings,
                   embeddings_path) -> tuple[str, float | None, range | None]:
    """The method "auto" stands for, the same-person distance, and the k values to try (k-means only); those
    settings checked (the numeric ones against ``limits.CLUSTER``)."""
    if method not in METHODS:
        raise FacepipeError(f"unknown cluster method {method!r}: use {', '.join(METHODS)}")
    rule_distance = same_person_distance(threshold, embeddings.model, normalize)
    if method == "auto":  # a k given means k-means; else the graph wherever a distance rule is known
        method = "graph" if rule_distance is not None and _is_auto(k) else "kmeans"
    if method == "graph" and rule_distance is None:
        raise FacepipeError(f"no same-person distance is known for {embeddings.model or 'these'} embeddings"
                            f"{'' if normalize else ' without normalisation'}: give a threshold (--threshold) "
                            "or use --method kmeans")
    ks = _check_k(k, k_range, k_rule, len(embeddings.names), embeddings_path) if method == "kmeans" else None
    return method, rule_distance, ks


def _fingerprint(embeddings_path: Path, meta: dict, options: dict, labels_file: Path | None,
                 people_file: Path | None) -> str:
    """What a rerun must match to be skipped: the inputs' contents, the options and the version."""
    data_digest = meta.get("data_sha256") or _file_digest(embeddings_path)  # read_embeddings checked it already
    return hashlib.sha256(repr((data_digest, meta, sorted(options.items()),
                                _file_digest(labels_file), _file_digest(people_file), __version__)).encode()).hexdigest()


def _labels_file(labels) -> Path | None:
    labels_file = Path(os.path.abspath(labels)) if labels is not None else None
    if labels_file is not None and not labels_file.is_file():
        raise FacepipeError(f"label manifest not found: {labels_file}")
    return labels_file


def _samples_folder(samples_dir, out_dir: Path, crops_dir: Path | None) -> tuple[Path | None, list[str]]:
    """Where the sample grids go (None: nowhere), and a note when they cannot be drawn."""
    if samples_dir == SAMPLES_IN_OUT:
        samples_dir = out_dir / RUN_SAMPLES_DIR
    if samples_dir is not None and crops_dir is None:
        return None, ["no sample grids: the embeddings sidecar names no crops folder (give crops_dir / --crops-dir)"]
    return (None if samples_dir is None else Path(os.path.abspath(samples_dir))), []


def _write_outputs(out_dir: Path, names: list[str], grouping: Grouping, table: pd.DataFrame,
                   selection: KSelection | None, metrics: dict | None, group_names: dict[int, str],
                   anchors: dict | None, grids: tuple, notes: list[str]) -> dict[str, str]:
    """Write the outputs (``_write_results``, then the sample grids: ``grids`` is the crops folder, the
    samples folder or None, crops per grid and progress) and remove what the earlier run wrote and this one
    did not; refused before anything is written where the user changed an image this run would rewrite.
    Returns each output's sha256, for the sidecar."""
    crops_dir, samples, per_cluster, show_progress = grids
    earlier = recorded_outputs(sidecar_path(out_dir / CLUSTER_RESULTS_CSV))
    to_write = _images_to_write(out_dir, samples, len(grouping.centroids), selection)
    refuse_changed(out_dir, earlier, to_write)
    if samples is not None:
        refuse_changed(samples, recorded_in(samples, earlier, out_dir), to_write)
    results, written = _write_results(out_dir, names, grouping, table, selection, metrics, group_names, anchors)
    if samples is not None:
        written += write_sample_grids(results, crops_dir, samples, per_cluster, show_progress)
    return _remove_earlier_outputs(out_dir, samples, earlier, written, anchors is None, notes)


def _images_to_write(out_dir: Path, samples: Path | None, k: int, selection) -> list[Path]:
    """The images this run may write (plots, sample grids): ``refuse_changed`` checks them before anything is
    written. The CSV and JSON files cluster reads back are its state: one that no longer matches its hash is
    damaged, and redone."""
    paths = [out_dir / ELBOW_PNG, out_dir / SILHOUETTE_PNG] if selection is not None else []
    if samples is not None:
        paths += [samples / sample_grid(c) for c in range(k)] + [samples / SAMPLES_OVERVIEW_JPG,
                                                                  samples / UNKNOWN_GRID_JPG]
    return paths


def _remove_earlier_outputs(out_dir: Path, samples: Path | None, earlier: dict, written: list[Path],
                            keep_anchors: bool, notes: list[str]) -> dict[str, str]:
    """Remove what the earlier run recorded writing (into ``out_dir`` and the samples folder) that this one did
    not write: its plots, metrics, sample grids of other clusters, anchors (kept with ``keep_anchors``: no
    people file this time), unless the user changed them since (``notes`` says so). Returns the outputs the
    new sidecar records: those written, and the anchors kept."""
    outputs = output_hashes(out_dir, written)
    anchors = out_dir / PEOPLE_ANCHORS_CSV
    if keep_anchors and holds_recorded(anchors, earlier.get(PEOPLE_ANCHORS_CSV, "")):
        outputs[PEOPLE_ANCHORS_CSV] = earlier[PEOPLE_ANCHORS_CSV]
    keep = [*written, *([anchors] if keep_anchors else [])]
    _, changed = remove_recorded(out_dir, earlier, keep)
    if samples is not None and not samples.is_relative_to(out_dir):
        changed += remove_recorded(samples, recorded_in(samples, earlier, out_dir), keep)[1]
    if changed:
        notes.append(left_alone_phrase(changed).lstrip("; "))
    return outputs


def _normalised(vectors: np.ndarray, embeddings_path: Path) -> np.ndarray:
    """The embeddings L2-normalised in place (the array is ours, and a copy would double the memory); rows
    too large or too small for their squares are scaled first (``models.unit_rows``)."""
    zeros = int((~vectors.any(axis=1)).sum())
    if zeros:
        raise FacepipeError(f"{embeddings_path}: {zeros} embedding(s) are all zeros and cannot "
                            "be L2-normalised (use normalize=False / --no-normalize)")
    return unit_rows(vectors, out=vectors)


def _comparable(vectors: np.ndarray, embeddings_path: Path) -> np.ndarray:
    """Unnormalised embeddings, refused where their distances would overflow (to infinity: one group)."""
    largest = float(np.abs(vectors).max())
    if largest * largest * vectors.shape[1] * 4 > float(np.finfo(vectors.dtype).max):
        raise FacepipeError(f"{embeddings_path}: values up to {largest:.3g} are too large to compare without "
                            "normalisation (their squared distances overflow); drop --no-normalize")
    return vectors


def _write_results(out_dir: Path, names: list[str], grouping: Grouping, table: pd.DataFrame,
                   selection: KSelection | None, metrics: dict | None,
                   group_names: dict[int, str], anchors: dict | None) -> tuple[pd.DataFrame, list[Path]]:
    """cluster_results.csv (returned), centroids.csv, k_selection.csv, the plots and the metrics, groups.csv
    with the ``group_names`` and, with a people file, its ``anchors``; returns the results and the files
    written (what an earlier run wrote and this one did not is removed by ``_remove_earlier_outputs``). The
    sidecar of the run before goes first, so that a run killed while writing these is never taken as done."""
    sidecar_path(out_dir / CLUSTER_RESULTS_CSV).unlink(missing_ok=True)
    results = pd.DataFrame({"name": names, "cluster": grouping.labels, "distance": grouping.distances},
                           columns=CLUSTER_COLUMNS)
    written = [out_dir / CLUSTER_RESULTS_CSV, out_dir / CENTROIDS_CSV, out_dir / K_SELECTION_CSV]
    write_csv_atomic(results, written[0], float_format="%.6g")
    write_centroids(written[1], grouping.centroids)
    write_csv_atomic(table, written[2], float_format="%.6g")
    written.append(write_groups(out_dir, np.bincount(grouping.labels[grouping.labels >= 0],
                                                     minlength=len(grouping.centroids)), group_names))
    if anchors:
        written.append(write_anchors(out_dir, anchors))
    written += _write_plots(out_dir, selection)
    if metrics is not None:
        write_json_atomic(out_dir / CLUSTER_METRICS_JSON, metrics)
        written.append(out_dir / CLUSTER_METRICS_JSON)
    return results, written


def _is_auto(k) -> bool:
    return k is None or is_auto(k)


def _check_k(k, k_range, k_rule: str, n: int, embeddings_path: Path) -> range:
    """The k values k-means will try (one when ``k`` is a number), checked against the number of embeddings."""
    if _is_auto(k):
        ks = parse_k_range(k_range)
        ks = range(ks.start, min(ks.stop, n), ks.step)  # silhouette needs k <= n - 1
        if len(ks) == 0:
            raise FacepipeError(f"{embeddings_path} holds {n} embeddings: too few to try k in {k_range} "
                                "(silhouette needs 2 <= k <= n - 1)")
        if k_rule not in K_RULES:
            raise FacepipeError(f"unknown k rule {k_rule!r}: use {' or '.join(K_RULES)}")
        return ks
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise FacepipeError(f"k must be a number or 'auto', got {k!r}") from None
    check_limits(CLUSTER, k=k)
    if k > n:
        raise FacepipeError(f"k = {k} clusters asked for, but {embeddings_path} holds only {n} embeddings")
    return range(k, k + 1)


def _crops_dir(crops_dir, meta: dict, embeddings_path: Path) -> Path | None:
    """The crops folder given, else the embeddings sidecar's (``formats.recorded_path``)."""
    if crops_dir is None and meta.get("crops_dir"):
        return recorded_path(meta["crops_dir"], embeddings_path)
    if crops_dir is not None:
        crops_dir = Path(os.path.abspath(crops_dir))
        if not crops_dir.is_dir():
            raise FacepipeError(f"crops folder not found: {crops_dir}")
    return crops_dir


def _group(vectors, method, rule_distance, ks, auto, k_rule, n_init, seed, photos, min_group_size, show_progress):
    """Raw labels by the method, then the rules (``finish_groups``); with the k selection and the rule's text."""
    from facepipe.cluster_graph import CLOSE_SHARE, LINKS_NEEDED, best_whispers, neighbour_graph, unmatched_faces

    graph = neighbour_graph(vectors, rule_distance) if rule_distance is not None else None
    selection = None
    if method == "graph":
        raw = best_whispers(graph, seed, n_init)
        rule = (f"groups of faces closer than {rule_distance:g} (the same-person distance), by Chinese whispers "
                f"over that neighbour graph (of {n_init} seeded runs, the one that cuts the least edge weight)")
    elif auto:
        selection = select_k(vectors, ks, rule=k_rule, n_init=n_init, seed=seed, show_progress=show_progress)
        raw = (selection.fits.get(selection.k) or kmeans(vectors, selection.k, n_init=n_init, seed=seed)).labels
        rule = selection.rule
    else:
        raw = kmeans(vectors, ks.start, n_init=n_init, seed=seed).labels
        rule = f"k = {ks.start}: given"
    if graph is not None:
        unmatched = unmatched_faces(raw, graph)
        rule += (f"; a face needs {LINKS_NEEDED} members of its group closer than {rule_distance:g} (all the "
                 f"others in a smaller group), or one closer than {CLOSE_SHARE * rule_distance:.3g}, else it is "
                 "unknown")
    else:
        unmatched = np.zeros(len(raw), dtype=bool)
    grouping = finish_groups(vectors, raw, unmatched, photos, min_group_size)
    rule += (f"; unknown (-1): {grouping.unmatched} face(s) too weakly linked to their group, "
             f"{grouping.same_photo} second face(s) of a photo already in the group, {grouping.too_small} in "
             f"groups under {min_group_size} faces")
    return grouping, selection, rule


def _write_plots(out_dir: Path, selection: KSelection | None) -> list[Path]:
    """The elbow and silhouette plots of an auto-k run (returned); none otherwise."""
    plots = [out_dir / ELBOW_PNG, out_dir / SILHOUETTE_PNG]
    if selection is None:
        return []
    _plot(selection.table, "inertia", {"elbow (kneedle)": selection.elbow_k, "chosen": selection.k},
          "inertia (sum of squared distances)", "Elbow: k-means inertia against k", plots[0])
    _plot(selection.table, "silhouette", {"best silhouette": selection.silhouette_k, "chosen": selection.k},
          "mean silhouette (cosine)", "Silhouette against k", plots[1])
    return plots


def _previous_run(results_path: Path, fingerprint: str) -> dict | None:
    """The sidecar of an earlier run with the same fingerprint whose outputs (results, centroids, table,
    plots, metrics, sample grids) are all still there as it recorded them (same sha256), else None."""
    meta_file = sidecar_path(results_path)
    if not (results_path.is_file() and meta_file.is_file()):
        return None
    meta = read_json(meta_file)
    done = meta.get("fingerprint") == fingerprint and outputs_match(results_path.parent, meta.get("outputs"))
    return meta if done else None