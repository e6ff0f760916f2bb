"""The same-person rule of the cluster stage: a graph that joins two faces when their embeddings lie closer
than the rule's distance, Chinese whispers over it (needs no k), and the two rules every clustering obeys
here: a face that matches no other face of its group is unknown (-1), and one photo gives a group one face.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facepipe.formats import UNKNOWN_CLUSTER

GRAPH_NEIGHBOURS = 64  # nearest neighbours looked at per face; an edge needs the distance rule as well
WHISPERS_ITERATIONS = 100
EXACT_UP_TO = 100_000  # faces: exact neighbour search and sequential whispers; above, the scalable engine
LARGE_NEIGHBOURS = 32  # nearest neighbours per face in the scalable engine (memory: 12 bytes each)
SEARCH_BATCH = 65_536  # faces searched at once (bounds the result arrays)


@dataclass
class NeighbourGraph:
    """Edges between faces closer than ``threshold`` (both directions), as CSR: the neighbours of face i are
    ``indices[indptr[i]:indptr[i + 1]]`` at ``distances[...]`` (Euclidean)."""

    indptr: np.ndarray
    indices: np.ndarray
    distances: np.ndarray
    threshold: float

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


def neighbour_graph(vectors: np.ndarray, threshold: float, neighbours: int | None = None) -> NeighbourGraph:
    """Join each face to those of its ``neighbours`` nearest (GRAPH_NEIGHBOURS by exact search with faiss; above
    EXACT_UP_TO faces LARGE_NEIGHBOURS by an inverted file, in batches) that lie within ``threshold``."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    neighbours = neighbours or (GRAPH_NEIGHBOURS if n <= EXACT_UP_TO else LARGE_NEIGHBOURS)
    index = neighbour_index(vectors)
    parts = []
    for start in range(0, n, SEARCH_BATCH):
        squared, nearest = index.search(vectors[start:start + SEARCH_BATCH], min(n, neighbours + 1))
        rows = np.repeat(np.arange(start, start + len(nearest)), nearest.shape[1])
        columns, distances = nearest.ravel(), np.sqrt(np.maximum(squared.ravel(), 0.0))
        keep = (columns >= 0) & (columns != rows) & (distances < threshold)
        parts.append((rows[keep], columns[keep], distances[keep].astype(np.float32)))
    rows, columns, distances = (np.concatenate([part[i] for part in parts]) for i in range(3))
    # make it symmetric (a is among b's nearest but not the other way round) and drop the doubles
    rows, columns, distances = (np.concatenate([rows, columns]), np.concatenate([columns, rows]),
                                np.concatenate([distances, distances]))
    pairs, first = np.unique(rows.astype(np.int64) * n + columns, return_index=True)
    rows, columns, distances = pairs // n, pairs % n, distances[first]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    return NeighbourGraph(indptr, columns.astype(np.int64), distances.astype(np.float32), float(threshold))


def edge_weights(graph: NeighbourGraph) -> np.ndarray:
    """An edge weighs more the closer its faces are: 1 - distance / threshold (and a little more than 0)."""
    return 1.0 - graph.distances.astype(np.float64) / graph.threshold + 1e-6


def modularity(graph: NeighbourGraph, labels: np.ndarray) -> float:
    """Weighted modularity (Newman) of a partition of the graph: the share of edge weight inside groups minus
    what random wiring with the same degrees would put there; higher is a better split of the graph."""
    weights = edge_weights(graph)
    rows = graph.sources()
    total = weights.sum()
    if total == 0:
        return 0.0
    count = int(labels.max()) + 1
    inside = weights[labels[rows] == labels[graph.indices]].sum()
    degrees = np.bincount(labels[rows], weights=weights, minlength=count)
    return float(inside / total - np.square(degrees / total).sum())


def best_whispers(graph: NeighbourGraph, seed: int = 0, restarts: int = 10) -> np.ndarray:
    """Chinese whispers from ``restarts`` seeded orders; the partition of highest modularity is kept (one
    order can leave a person split in two where another joins them). Above EXACT_UP_TO faces each run is
    ``whispers_in_rounds``."""
    rng = np.random.default_rng(seed)
    whispers = chinese_whispers if len(graph.indptr) - 1 <= EXACT_UP_TO else whispers_in_rounds
    runs = [whispers(graph, int(s)) for s in rng.integers(2**31 - 1, size=max(1, restarts))]
    return max(runs, key=lambda labels: modularity(graph, labels))


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


def unmatched_faces(labels: np.ndarray, graph: NeighbourGraph) -> np.ndarray:
    """Boolean mask of the faces with no neighbour of their own group within the graph's distance rule."""
    rows = graph.sources()
    same_group = labels[rows] == labels[graph.indices]
    return np.bincount(rows[same_group], minlength=len(labels)) == 0


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
