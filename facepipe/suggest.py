"""Suggestions for turning groups into people, from a finished clustering: group pairs that may be one person
split in two (merge), the nearest group of each unknown face (unknown), and faces far from their group's
centroid (outlier); each with its distance and a rank within its kind, nearest (most likely) first.

Distances are L2 in the space cluster grouped in (unit embeddings unless it ran with ``--no-normalize``). An
unknown face's is the clustering's own link rule read as a distance (``grouping.link_distance``): the
same-person distance at which it would join that group, so that a face the rule turned away from a group is
offered it only beyond the rule. A merge's is the root mean square distance between the two groups' faces (a
member linkage; the link rule cannot rank merges, as it is what kept the two apart). An outlier's is to its
group's centroid. Suggestions the people file turned down (``[[rejected]]``) or already acted on (a merge, a
moved face) are not offered again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from facepipe.common import FacepipeError
from facepipe.formats import (
    CENTROIDS_CSV,
    CLUSTER_SIDECAR_FIELDS,
    SUGGESTION_COLUMNS,
    UNKNOWN_CLUSTER,
    checked_fields,
    cluster_results_path,
    json_object,
    own_csv_output,
    read_centroids,
    read_cluster_results,
    read_embeddings,
    read_sidecar,
    recorded_path,
    sidecar_path,
    write_csv_atomic,
)
from facepipe.models import unit_rows
from facepipe.people import People, people_file_of, read_people
from facepipe.settings import SuggestSettings

MERGE_NEIGHBOURS = 5  # each group's nearest groups looked at for a merge
OUTLIER_SHARE = 0.75  # a face farther than this share of the same-person distance from its centroid is offered
OUTLIER_PERCENTILE = 95  # without a same-person distance (k-means): the farthest 5% of the grouped faces


@dataclass
class Clustering:
    """A finished clustering as suggest and review read it."""

    results_path: Path
    results: pd.DataFrame  # CLUSTER_COLUMNS
    vectors: np.ndarray  # one row per results row, in the space cluster grouped in
    centroids: np.ndarray
    rule_distance: float | None
    meta: dict  # the cluster sidecar
    crops_dir: Path | None

    @property
    def folder(self) -> Path:
        return self.results_path.parent


def read_clustering(clusters: str | os.PathLike) -> Clustering:
    """The clustering ``clusters`` (its cluster_results.csv, or the cluster or run folder), with each face's
    embedding as cluster compared it; refused in one line when its files do not belong together."""
    results_path = cluster_results_path(clusters)
    results = read_cluster_results(results_path)
    if not sidecar_path(results_path).is_file():
        raise FacepipeError(f"file not found: {sidecar_path(results_path)}")
    meta = read_sidecar(results_path, CLUSTER_SIDECAR_FIELDS)
    options = checked_fields(
        json_object(meta, "options", sidecar_path(results_path)), sidecar_path(results_path), {"normalize": bool}
    )
    if not meta.get("embeddings"):
        raise FacepipeError(f"{sidecar_path(results_path)} does not name the embeddings it was made from")
    embeddings = read_embeddings(recorded_path(meta["embeddings"], results_path))
    row_of = {name: row for row, name in enumerate(embeddings.names)}
    missing = [name for name in results["name"] if name not in row_of]
    if missing:
        raise FacepipeError(
            f"{len(missing)} face(s) of {results_path} are not in its embeddings, e.g. {missing[0]}: "
            "the clustering and its embeddings no longer belong together (rerun cluster)"
        )
    vectors = embeddings.vectors[[row_of[name] for name in results["name"]]]
    centroids = read_centroids(results_path.parent / CENTROIDS_CSV)
    if centroids.shape[1] != vectors.shape[1]:
        raise FacepipeError(
            f"{results_path.parent / CENTROIDS_CSV} holds {centroids.shape[1]}-d centroids but the "
            f"embeddings are {vectors.shape[1]}-d: rerun cluster"
        )
    crops = meta.get("crops_dir")
    return Clustering(
        results_path,
        results,
        unit_rows(vectors) if options.get("normalize", True) else vectors,
        centroids,
        meta.get("same_person_distance"),
        meta,
        recorded_path(crops, results_path) if crops else None,
    )


def _ranked(rows: list[dict], kind: str, farthest_first: bool = False) -> list[dict]:
    """``rows`` of one kind, nearest (or farthest) first, ties by group and face, with their ranks from 1."""
    sign = -1 if farthest_first else 1
    rows = sorted(
        rows,
        key=lambda r: (
            sign * r["distance"],
            r["group"],
            r["other"] if r["other"] is not None else -2,
            r["face"] or "",
        ),
    )
    return [dict(row, kind=kind, rank=rank) for rank, row in enumerate(rows, 1)]


def group_links(clustering: Clustering, rows: np.ndarray) -> pd.DataFrame:
    """For the faces at ``rows`` of the clustering, each group (not the face's own) among their GRAPH_NEIGHBOURS
    nearest grouped faces and the face's distance to it by the clustering's own link rule
    (``grouping.link_distance``: the members the rule needs from a group of that size within it, or one within
    CLOSE_SHARE of it): columns row, group, distance. The face would join the group at a same-person distance
    above that, not at one below."""
    from facepipe.grouping import (
        GRAPH_NEIGHBOURS,
        LINKS_NEEDED,
        link_distance,
        links_needed,
        nearest_by_key,
        nearest_rows,
    )

    labels = clustering.results["cluster"].to_numpy()
    grouped = np.flatnonzero(labels >= 0)
    span = int(labels.max(initial=0)) + 1  # a (face, group) pair's key: face * span + group
    gaps, found = nearest_rows(clustering.vectors[rows], clustering.vectors[grouped], GRAPH_NEIGHBOURS)
    face = np.repeat(np.asarray(rows, dtype=np.int64), gaps.shape[1])
    member = grouped[np.maximum(found.ravel(), 0)]
    keep = (found.ravel() >= 0) & (labels[member] != labels[face])
    face, group, gaps = face[keep], labels[member[keep]], gaps.ravel()[keep]
    pairs, nearest = nearest_by_key(face * span + group, gaps, LINKS_NEEDED)  # each pair's members, nearest first
    sizes = np.bincount(labels[grouped], minlength=span)
    distances = link_distance(nearest, links_needed(sizes[pairs % span]))
    return pd.DataFrame({"row": pairs // span, "group": pairs % span, "distance": distances})


def merge_distances(clustering: Clustering) -> pd.DataFrame:
    """Each group and the groups nearest it (its GRAPH_NEIGHBOURS nearest centroids), with how far apart their
    faces lie: the root mean square of the distances between a face of one and a face of the other, over every
    such pair (``sqrt(centroid distance^2 + each group's mean squared distance to its centroid)``; a tight
    fragment of a person sits nearer a group than a loose group at the same centroid distance): columns group,
    other (group < other), distance."""
    from facepipe.grouping import GRAPH_NEIGHBOURS, nearest_rows

    labels = clustering.results["cluster"].to_numpy()
    grouped = labels >= 0
    count = len(clustering.centroids)
    squared = ((clustering.vectors[grouped] - clustering.centroids[labels[grouped]]) ** 2).sum(axis=1)
    spread = np.bincount(labels[grouped], squared, count) / np.maximum(np.bincount(labels[grouped], None, count), 1)
    gaps, others = nearest_rows(clustering.centroids, clustering.centroids, GRAPH_NEIGHBOURS + 1)
    group = np.repeat(np.arange(count), gaps.shape[1])
    other, gaps = others.ravel(), gaps.ravel()
    keep = (other >= 0) & (other != group)
    group, other, gaps = group[keep], other[keep], gaps[keep]
    pairs = pd.DataFrame(
        {
            "group": np.minimum(group, other),
            "other": np.maximum(group, other),
            "distance": np.sqrt(gaps**2 + spread[group] + spread[other]),
        }
    )
    return pairs.drop_duplicates(["group", "other"]).reset_index(drop=True)


def merge_suggestions(clustering: Clustering, people: People) -> list[dict]:
    """Group pairs among each group's MERGE_NEIGHBOURS nearest by ``merge_distances``; turned-down pairs left out."""
    pairs = merge_distances(clustering)
    both_ways = pd.concat([pairs, pairs.rename(columns={"group": "other", "other": "group"})])
    nearest = both_ways.sort_values(["distance", "other"]).groupby("group").head(MERGE_NEIGHBOURS)
    chosen = {(min(a, b), max(a, b)) for a, b in zip(nearest["group"], nearest["other"])}
    return _ranked(
        [
            {"group": int(a), "other": int(b), "face": None, "distance": float(d)}
            for a, b, d in zip(pairs["group"], pairs["other"], pairs["distance"])
            if (a, b) in chosen and (a, b) not in people.rejected_merges
        ],
        "merge",
    )


def unknown_suggestions(clustering: Clustering, people: People) -> list[dict]:
    """For each unknown face the people file did not move there itself, the group not turned down for it that
    it lies nearest by the link rule (``group_links``)."""
    names = clustering.results["name"].to_numpy()
    unknown = np.flatnonzero(clustering.results["cluster"].to_numpy() == UNKNOWN_CLUSTER)
    found = {}
    for row, group, distance in group_links(clustering, unknown).sort_values(["distance", "group"]).itertuples(False):
        face = names[row]
        if face not in found and face not in people.moves and (face, int(group)) not in people.rejected_faces:
            found[face] = {"group": int(group), "other": None, "face": face, "distance": float(distance)}
    return _ranked(list(found.values()), "unknown")


def outlier_suggestions(clustering: Clustering, people: People, limit: float | None = None) -> list[dict]:
    """Grouped faces farther than ``limit`` from their centroid (default: OUTLIER_SHARE of the same-person
    distance, else the OUTLIER_PERCENTILE of the grouped faces' distances), farthest first; faces the people file
    placed or kept in their group left out."""
    results = clustering.results
    grouped = results[results["cluster"] >= 0]
    if grouped.empty:
        return []
    if limit is None:
        limit = (
            OUTLIER_SHARE * clustering.rule_distance
            if clustering.rule_distance
            else float(np.nanpercentile(grouped["distance"], OUTLIER_PERCENTILE))
        )
    far = grouped[grouped["distance"] > limit]
    rows = [
        {"group": int(g), "other": None, "face": face, "distance": float(d)}
        for face, g, d in zip(far["name"], far["cluster"], far["distance"])
        if face not in people.moves and (face, int(g)) not in people.rejected_faces
    ]
    return _ranked(rows, "outlier", farthest_first=True)


def suggestions(clustering: Clustering, people: People, outlier_distance: float | None = None) -> pd.DataFrame:
    """Every suggestion (SUGGESTION_COLUMNS): merges, then unknown faces, then outliers, each by rank."""
    rows = (
        merge_suggestions(clustering, people)
        + unknown_suggestions(clustering, people)
        + outlier_suggestions(clustering, people, outlier_distance)
    )
    frame = pd.DataFrame(rows, columns=SUGGESTION_COLUMNS)
    return frame.astype({"rank": "int64", "group": "int64", "other": "Int64", "distance": "float64"})


def suggest(
    clusters: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    people: str | os.PathLike | None = SuggestSettings.people,
    outlier_distance: float | None = SuggestSettings.outlier_distance,
) -> pd.DataFrame:
    """The suggestions for the clustering ``clusters`` (its CSV, or the cluster or run folder), given the people
    file ``people`` (default: ``people.toml`` in the cluster folder, if any); written to ``out`` (CSV,
    atomically) when given. ``outlier_distance``: how far from its centroid a face is offered as an outlier."""
    SuggestSettings(people=people, outlier_distance=outlier_distance)  # checks them
    clustering = read_clustering(clusters)
    people_file = people_file_of(clustering.folder, people)
    frame = suggestions(clustering, read_people(people_file) if people_file else People(), outlier_distance)
    if out is not None:
        write_csv_atomic(frame, own_csv_output(out, SUGGESTION_COLUMNS, "suggestions"), float_format="%.6g")
    return frame
