"""The grouping rules of the cluster stage: the same-person distance (``same_person_distance``), a graph that
joins two faces when their embeddings lie closer than it, Chinese whispers over it (needs no k), and the rules
every clustering obeys here (``finish_groups``): a face too weakly linked to its group (``unmatched_faces``)
is unknown (-1), one photo gives a group one face, small groups are unknown, groups are numbered by size. The weights, the run kept and the link rule were chosen on held-out people
(``benchmarks/bench_cluster_rules.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facepipe.common import is_auto
from facepipe.formats import UNKNOWN_CLUSTER
from facepipe.settings import ClusterSettings, check_settings

GRAPH_NEIGHBOURS = 64  # nearest neighbours looked at per face; an edge needs the distance rule as well
WHISPERS_ITERATIONS = 100
EXACT_UP_TO = 100_000  # faces: exact neighbour search and sequential whispers; above, the scalable engine
LARGE_NEIGHBOURS = 32  # nearest neighbours per face in the scalable engine (memory: 12 bytes each)
SEARCH_BATCH = 65_536  # faces searched at once (bounds the result arrays)
FULL_WEIGHT_SHARE = 0.7  # edges shorter than this share of the rule weigh 1 (benchmarks/bench_cluster_rules.py)
LINKS_NEEDED = 4  # neighbours within the rule a face needs in its group (all the others in a smaller group) ...
CLOSE_SHARE = 0.9  # ... unless one lies closer than this share of the rule


@dataclass
class NeighbourGraph:
    """Edges between faces closer than ``threshold`` (both directions), as CSR: the neighbours of face i are
    ``indices[indptr[i]:indptr[i + 1]]`` at ``distances[...]`` (Euclidean)."""

    indptr: np.ndarray
    indices: np.ndarray
    distances: np.ndarray
    threshold: float
    full_weight_below: float = 0.0  # edges shorter than this weigh 1 (``edge_weights``)

    def sources(self) -> np.ndarray:
        """The face each edge starts from (``indices`` holds where it ends)."""
        return np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))


def neighbour_index(vectors: np.ndarray, seed: int = 0):
    """faiss index of ``vectors`` (faces or centroids): exact up to EXACT_UP_TO rows, else an inverted file (4 sqrt(n) lists, 16
    probed), trained on a seeded sample, which finds nearly all neighbours within a same-person distance."""
    import faiss

    n, dim = vectors.shape
    if n <= EXACT_UP_TO:
        index = faiss.IndexFlatL2(dim)
    else:
        lists = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, lists)
        sample = np.random.default_rng(seed).choice(n, size=min(n, 64 * lists), replace=False)
        index.train(vectors[np.sort(sample)])
        index.nprobe = 16
    index.add(vectors)
    return index


def nearest_rows(vectors: np.ndarray, targets: np.ndarray, count: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``vectors``, its ``count`` nearest rows of ``targets`` (centroids, or faces; fewer where
    there are fewer; -1 where the inverted file found none): their L2 distances and rows, nearest first."""
    count = min(count, len(targets))
    if not count or not len(vectors):
        return np.empty((len(vectors), count)), np.empty((len(vectors), count), dtype=np.int64)
    index = neighbour_index(np.ascontiguousarray(targets, dtype=np.float32))  # exact, or an inverted file
    squared, rows = index.search(np.ascontiguousarray(vectors, dtype=np.float32), count)
    return np.sqrt(np.maximum(squared, 0.0)), rows.astype(np.int64)


def neighbour_graph(
    vectors: np.ndarray, threshold: float, neighbours: int | None = None, full_weight_share: float = FULL_WEIGHT_SHARE
) -> NeighbourGraph:
    """Join each face to those of its ``neighbours`` nearest (GRAPH_NEIGHBOURS by exact search with faiss; above
    EXACT_UP_TO faces LARGE_NEIGHBOURS by an inverted file, in batches) that lie within ``threshold``; edges
    shorter than ``full_weight_share`` of it weigh 1 (``edge_weights``)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    neighbours = neighbours or (GRAPH_NEIGHBOURS if n <= EXACT_UP_TO else LARGE_NEIGHBOURS)
    index = neighbour_index(vectors)
    parts = [(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))]  # no faces: no edges
    for start in range(0, n, SEARCH_BATCH):
        squared, nearest = index.search(vectors[start : start + SEARCH_BATCH], min(n, neighbours + 1))
        rows = np.repeat(np.arange(start, start + len(nearest)), nearest.shape[1])
        columns, distances = nearest.ravel(), np.sqrt(np.maximum(squared.ravel(), 0.0))
        keep = (columns >= 0) & (columns != rows) & (distances < threshold)
        parts.append((rows[keep], columns[keep], distances[keep].astype(np.float32)))
    rows, columns, distances = (np.concatenate([part[i] for part in parts]) for i in range(3))
    # make it symmetric (a is among b's nearest but not the other way round) and drop the doubles
    rows, columns, distances = (
        np.concatenate([rows, columns]),
        np.concatenate([columns, rows]),
        np.concatenate([distances, distances]),
    )
    pairs, first = np.unique(rows.astype(np.int64) * n + columns, return_index=True)
    rows, columns, distances = pairs // n, pairs % n, distances[first]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    return NeighbourGraph(
        indptr,
        columns.astype(np.int64),
        distances.astype(np.float32),
        float(threshold),
        float(threshold) * full_weight_share,
    )


def edge_weights(graph: NeighbourGraph) -> np.ndarray:
    """An edge weighs 1 up to ``full_weight_below``, then less the nearer it is to the rule's edge (linearly, to
    a little more than 0 there): one link at the edge cannot pull a face over, and a near-duplicate pair weighs
    no more than any two close photos of a person, so that it cannot keep a label of its own inside a person."""
    span = graph.threshold - graph.full_weight_below
    return np.minimum(1.0, (graph.threshold - graph.distances.astype(np.float64)) / span) + 1e-6


def weight_inside(graph: NeighbourGraph, labels: np.ndarray) -> float:
    """The edge weight that a partition keeps inside its groups (the rest it cuts)."""
    return float(edge_weights(graph)[labels[graph.sources()] == labels[graph.indices]].sum())


def best_whispers(graph: NeighbourGraph, seed: int = 0, restarts: int = 10) -> np.ndarray:
    """Chinese whispers from ``restarts`` seeded orders; the run that cuts the least edge weight is kept (one
    order can leave a person split in two where another joins them; modularity, kept before, scored a
    person alone in a small collection higher split than whole). Above EXACT_UP_TO faces each run is
    ``whispers_in_rounds``."""
    rng = np.random.default_rng(seed)
    whispers = chinese_whispers if len(graph.indptr) - 1 <= EXACT_UP_TO else whispers_in_rounds
    runs = [whispers(graph, int(s)) for s in rng.integers(2**31 - 1, size=max(1, restarts))]
    return max(runs, key=lambda labels: weight_inside(graph, labels))


def whispers_in_rounds(graph: NeighbourGraph, seed: int = 0, iterations: int = WHISPERS_ITERATIONS) -> np.ndarray:
    """Chinese whispers for a million faces: in each round a seeded random half of the faces take, at once,
    the label that carries the most weight among their neighbours (array operations over all edges instead
    of a loop over faces; updating half at a time keeps two faces from swapping labels forever), until a
    round changes nothing."""
    n = len(graph.indptr) - 1
    labels = np.arange(n)
    rng = np.random.default_rng(seed)
    weights, rows = edge_weights(graph), graph.sources()
    for _ in range(iterations):
        keys = rows * n + labels[graph.indices]  # (face, a neighbour's label)
        pairs, position = np.unique(keys, return_inverse=True)
        weight = np.bincount(position, weights=weights)
        face, label = pairs // n, pairs % n
        order = np.lexsort((label, -weight, face))  # per face: heaviest label first (ties: the smaller label)
        first = order[np.concatenate([[True], face[order][1:] != face[order][:-1]])]
        chosen = rng.random(len(first)) < 0.5
        targets, best = face[first][chosen], label[first][chosen]
        moving = labels[targets] != best
        if not moving.any() and chosen.all():
            break
        labels[targets[moving]] = best[moving]
        if not (labels[face[first]] != label[first]).any():
            break
    return labels


def chinese_whispers(graph: NeighbourGraph, seed: int = 0, iterations: int = WHISPERS_ITERATIONS) -> np.ndarray:
    """Chinese whispers (Biemann 2006) as in dlib's face clustering: each face, in a seeded random order, takes
    the label that carries the most weight among its neighbours (``edge_weights``: one chance edge cannot pull
    a face over), until no label changes."""
    n = len(graph.indptr) - 1
    labels = np.arange(n)
    rng = np.random.default_rng(seed)
    weights = edge_weights(graph)
    linked = np.flatnonzero(np.diff(graph.indptr) > 0)
    for _ in range(iterations):
        changed = 0
        for face in rng.permutation(linked):
            span = slice(graph.indptr[face], graph.indptr[face + 1])
            candidates, position = np.unique(labels[graph.indices[span]], return_inverse=True)
            best = candidates[np.argmax(np.bincount(position, weights=weights[span]))]
            if best != labels[face]:
                labels[face] = best
                changed += 1
        if changed == 0:
            break
    return labels


def links_needed(others, links: int = LINKS_NEEDED):
    """The members within the rule a face needs in a group holding ``others`` faces besides it: ``links``, or
    all the others in a smaller group."""
    return np.minimum(links, others)


def link_distance(nearest: np.ndarray, needed, close_share: float = CLOSE_SHARE) -> np.ndarray:
    """The link rule as a distance: the least same-person distance at which a face passes it with a group,
    given its distances to the group's members (rows, nearest first; inf past the members there are) and the
    members ``needed`` (``links_needed``). That is its ``needed``-th nearest member, or its nearest over
    ``close_share`` where that is less (one member within ``close_share`` of the rule is enough); inf where
    the group has no member to link to. The face passes the rule at a distance where this lies under it."""
    nearest = np.asarray(nearest, dtype=np.float64)
    needed = np.broadcast_to(np.asarray(needed, dtype=np.int64), len(nearest))
    known = (needed >= 1) & (needed <= nearest.shape[1])
    kth = np.full(len(nearest), np.inf)
    kth[known] = nearest[np.flatnonzero(known), needed[known] - 1]
    return np.minimum(kth, np.where(needed >= 1, nearest[:, 0], np.inf) / close_share)


def nearest_by_key(keys: np.ndarray, distances: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct key (a face, or a face and a group) with its ``count`` smallest ``distances``, nearest
    first (inf past those it has): the keys, sorted, and a (keys, count) array, as ``link_distance`` reads."""
    order = np.lexsort((distances, keys))
    keys, distances = keys[order], distances[order]
    unique, first, which = np.unique(keys, return_index=True, return_inverse=True)
    rank = np.arange(len(keys)) - first[which]  # each distance's place among its key's, nearest first
    nearest = np.full((len(unique), count), np.inf)
    kept = rank < count
    nearest[which[kept], rank[kept]] = distances[kept]
    return unique, nearest


def unmatched_faces(
    labels: np.ndarray, graph: NeighbourGraph, links: int = LINKS_NEEDED, close_share: float = CLOSE_SHARE
) -> np.ndarray:
    """Boolean mask of the faces too weakly linked to their own group (``link_distance`` not under the graph's
    distance rule): no neighbour of the group within it, or fewer than ``links`` (all the others, in a smaller
    group) and none closer than ``close_share`` of the rule. Through a neighbour or two at the rule's edge,
    strangers join people's groups; a person's own faces mostly have more, or a close one."""
    rows = graph.sources()
    same_group = labels[rows] == labels[graph.indices]
    linked, nearest_linked = nearest_by_key(rows[same_group], graph.distances[same_group], max(1, links))
    nearest = np.full((len(labels), nearest_linked.shape[1]), np.inf)
    nearest[linked] = nearest_linked
    _, group_of, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    return ~(link_distance(nearest, links_needed(sizes[group_of] - 1, links), close_share) < graph.threshold)


def one_face_per_photo(labels: np.ndarray, photos: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Faces that share a group with another face of the same photo, all but the one nearest the group's
    centroid (``distances``): a boolean mask of the faces to take out of their group."""
    order = np.lexsort((distances, photos, labels))
    sorted_labels, sorted_photos = labels[order], photos[order]
    repeat = np.zeros(len(labels), dtype=bool)
    repeat[1:] = (sorted_labels[1:] == sorted_labels[:-1]) & (sorted_photos[1:] == sorted_photos[:-1])
    repeat &= sorted_labels != UNKNOWN_CLUSTER
    mask = np.zeros(len(labels), dtype=bool)
    mask[order[repeat]] = True
    return mask


def same_person_distance(threshold: float | str | None, model: str | None, normalize: bool) -> float | None:
    """The distance rule to use: ``threshold`` when it is a number, else (``"auto"``) the embedder's measured
    rule (``SAME_PERSON_DISTANCE``, for L2-normalised embeddings), None where no rule is known."""
    from facepipe.models import SAME_PERSON_DISTANCE

    if threshold is None or is_auto(threshold):
        return SAME_PERSON_DISTANCE.get(model) if normalize else None
    check_settings(ClusterSettings, threshold=threshold)
    return float(threshold)


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


def finish_groups(
    vectors: np.ndarray, labels: np.ndarray, unmatched: np.ndarray, photos: np.ndarray, min_group_size: int
) -> Grouping:
    """Apply the rules to raw cluster labels: ``unmatched`` faces are unknown; a group keeps one face per photo
    (the one nearest its centroid); groups of fewer than ``min_group_size`` faces are unknown; the groups
    are then numbered by size, largest first."""
    labels = numbered_by_size(np.where(unmatched, UNKNOWN_CLUSTER, labels))
    _, distances = group_centroids(vectors, labels)
    repeats = one_face_per_photo(labels, photos, distances)
    labels[repeats] = UNKNOWN_CLUSTER
    sizes = np.bincount(labels[labels != UNKNOWN_CLUSTER], minlength=max(1, int(labels.max(initial=0)) + 1))
    small = (labels != UNKNOWN_CLUSTER) & (sizes[np.maximum(labels, 0)] < min_group_size)
    labels = numbered_by_size(np.where(small, UNKNOWN_CLUSTER, labels))
    centroids, distances = group_centroids(vectors, labels)
    return Grouping(labels, distances, centroids, int(unmatched.sum()), int(repeats.sum()), int(small.sum()))


def numbered_by_size(labels: np.ndarray, preferred: dict[int, int] | None = None) -> np.ndarray:
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


def group_centroids(vectors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean of each group 0..max, and each face's distance to it (``distances_to_centroids``)."""
    grouped = labels >= 0
    count = int(labels.max()) + 1 if grouped.any() else 0
    centroids = np.zeros((count, vectors.shape[1]), dtype=np.float64)
    np.add.at(centroids, labels[grouped], vectors[grouped])
    centroids = (centroids / np.maximum(np.bincount(labels[grouped], minlength=count), 1)[:, None]).astype(np.float32)
    return centroids, distances_to_centroids(vectors, labels, centroids)


def distances_to_centroids(vectors: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each face's distance to its own group's centroid; for an unknown face (-1), to the nearest centroid
    (NaN when there is none)."""
    grouped = labels >= 0
    distances = np.full(len(labels), np.nan)
    distances[grouped] = np.linalg.norm(vectors[grouped] - centroids[labels[grouped]], axis=1)
    if len(centroids) and not grouped.all():
        distances[~grouped] = nearest_rows(vectors[~grouped], centroids)[0][:, 0]
    return distances
