"""Suggestions for turning groups into people, from a finished clustering: group pairs that may be one person
split in two (merge), the nearest group of each unknown face (unknown), and faces far from their group's
centroid (outlier); each with its distance and a rank within its kind, nearest (most likely) first.

Distances are the clustering's own: L2 between group centroids, or from a face to a centroid, in the space
cluster grouped in (unit embeddings unless it ran with ``--no-normalize``). Suggestions the people file turned
down (``[[rejected]]``) or already acted on (a merge, a moved face) are not offered again.
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
UNKNOWN_NEIGHBOURS = 5  # an unknown face's nearest groups: the nearest not turned down is offered
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


def merge_suggestions(centroids: np.ndarray, people: People) -> list[dict]:
    """Group pairs among each group's MERGE_NEIGHBOURS nearest, by centroid distance; turned-down pairs left out."""
    from facepipe.grouping import nearest_rows

    distances, rows = nearest_rows(centroids, centroids, MERGE_NEIGHBOURS + 1)
    pairs = {}
    for group, (gaps, others) in enumerate(zip(distances, rows)):
        for gap, other in zip(gaps, others):
            pair = (min(group, int(other)), max(group, int(other)))
            if other >= 0 and other != group and pair not in people.rejected_merges:
                pairs[pair] = float(gap)
    return _ranked([{"group": a, "other": b, "face": None, "distance": d} for (a, b), d in pairs.items()], "merge")


def unknown_suggestions(clustering: Clustering, people: People) -> list[dict]:
    """For each unknown face the people file did not move there itself, its nearest group not turned down for it."""
    from facepipe.grouping import nearest_rows

    unknown = clustering.results.index[(clustering.results["cluster"] == UNKNOWN_CLUSTER).to_numpy()]
    faces = clustering.results.loc[unknown, "name"].tolist()
    distances, rows = nearest_rows(clustering.vectors[unknown], clustering.centroids, UNKNOWN_NEIGHBOURS)
    found = []
    for face, gaps, groups in zip(faces, distances, rows):
        if face in people.moves:
            continue
        offered = [
            (float(gap), int(group))
            for gap, group in zip(gaps, groups)
            if group >= 0 and (face, int(group)) not in people.rejected_faces
        ]
        if offered:
            found.append({"group": offered[0][1], "other": None, "face": face, "distance": offered[0][0]})
    return _ranked(found, "unknown")


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
        merge_suggestions(clustering.centroids, people)
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
