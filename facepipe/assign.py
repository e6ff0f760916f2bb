"""Add new photos to a finished clustering without reclustering: detect and embed them with the settings
recorded for the collection, then put each new face in the existing group it matches, else unknown (-1).

A new face matches a group when faces of that group lie within the clustering's same-person distance (the
rule the graph joined faces by), at least as many as the clustering's smallest group size (``min_group_size``,
2 by default; all of a smaller group's members): one look-alike member is not enough. The group with the
most such faces wins (ties: the nearer on average). As in cluster, a photo keeps one face per group: the one
nearest the group's centroid. Group numbers, names
and centroids never change; ``cluster_results.csv``, ``groups.csv`` and the sidecar are rewritten atomically,
the sidecar last.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from facepipe.common import FacepipeError, check_writable
from facepipe.formats import (
    CENTROIDS_CSV,
    CLUSTER_COLUMNS,
    CLUSTER_RESULTS_CSV,
    CLUSTER_SIDECAR_FIELDS,
    UNKNOWN_CLUSTER,
    Embeddings,
    checked_fields,
    cluster_results_path,
    group_names,
    json_object,
    output_hashes,
    read_centroids,
    read_cluster_results,
    read_embeddings,
    read_sidecar,
    recorded_path,
    sidecar_path,
    write_csv_atomic,
    write_groups,
    write_json_atomic,
)
from facepipe.grouping import distances_to_centroids, one_face_per_photo
from facepipe.labels import crop_sources, photo_ids
from facepipe.locks import folder_lock, locks_output
from facepipe.models import unit_rows
from facepipe.run import note_assigned, run_state
from facepipe.settings import AssignSettings

NEIGHBOURS = 32  # nearest grouped faces looked at for each new face


@dataclass
class AssignSummary:
    """What an assign run did."""

    photos: int
    new_faces: int
    assigned: int
    unknown: int
    groups: int
    results: Path
    seconds: float

    def line(self) -> str:
        return (
            f"assign: {self.photos} photos, {self.new_faces} new faces: {self.assigned} put in {self.groups} "
            f"existing groups, {self.unknown} unknown -> {self.results} in {self.seconds:.1f}s"
        )


def _detect_and_embed(
    photos,
    crops_dir: Path,
    params,
    embeddings: Embeddings,
    embeddings_path: Path,
    weights,
    workers: int,
    show_progress: bool,
) -> int:
    """The new photos through detect (with the collection's ``params``) and embed, into the collection's own
    crops folder and embeddings file (``embeddings``, as read; embedded as they were), photos already done
    skipped and the collection's other photos kept; returns how many photos the inputs hold."""
    from facepipe.detect import detect
    from facepipe.embed import embed
    from facepipe.models.registry import embedder_settings

    found = detect(photos, crops_dir, params, workers=workers, keep_others=True, show_progress=show_progress)
    embed(
        crops_dir,
        embeddings_path,
        workers=workers,
        weights=weights,
        show_progress=show_progress,
        **embedder_settings(embeddings.meta),
    )
    return found.processed_now + found.skipped


def nearest_groups(
    new: np.ndarray, grouped: np.ndarray, groups: np.ndarray, distance: float, min_votes: int = 2
) -> np.ndarray:
    """For each row of ``new``: the group with the most members (rows of ``grouped``, their group ``groups``)
    within ``distance`` among its NEIGHBOURS nearest (ties: the smaller mean distance), if they are at least
    ``min_votes`` (or all of a smaller group), else UNKNOWN_CLUSTER."""
    import faiss

    chosen = np.full(len(new), UNKNOWN_CLUSTER, dtype=np.int64)
    if not len(new) or not len(grouped):
        return chosen
    index = faiss.IndexFlatL2(grouped.shape[1])
    index.add(np.ascontiguousarray(grouped, dtype=np.float32))
    squared, found = index.search(np.ascontiguousarray(new, dtype=np.float32), min(NEIGHBOURS, len(grouped)))
    gaps = np.sqrt(np.maximum(squared, 0.0))
    sizes = np.bincount(groups)
    for row in range(len(new)):
        near = (gaps[row] <= distance) & (found[row] >= 0)
        if not near.any():
            continue
        candidates, which = np.unique(groups[found[row][near]], return_inverse=True)
        votes = np.bincount(which)
        mean_gap = np.bincount(which, weights=gaps[row][near]) / votes
        best = np.lexsort((mean_gap, -votes))[0]
        if votes[best] >= min(min_votes, sizes[candidates[best]]):
            chosen[row] = candidates[best]
    return chosen


def _write(results_path: Path, meta: dict, results: pd.DataFrame, centroid_count: int, names: dict[int, str]) -> None:
    """The updated results and groups (their ``names``), then the sidecar (its counts and output hashes refreshed)."""
    folder = results_path.parent
    write_csv_atomic(results[CLUSTER_COLUMNS], results_path, float_format="%.6g")
    sizes = np.bincount(results.loc[results["cluster"] >= 0, "cluster"], minlength=centroid_count)
    groups_file = write_groups(folder, sizes, names)
    outputs = dict(meta.get("outputs") or {})
    outputs.update(output_hashes(folder, [results_path, groups_file]))
    unknown = int((results["cluster"] == UNKNOWN_CLUSTER).sum())
    write_json_atomic(
        sidecar_path(results_path),
        dict(meta, outputs=outputs, items=len(results), sizes=sizes.tolist(), unknown=unknown),
    )


@locks_output(lambda args: cluster_results_path(args["cluster_results"]).parent)
def assign(
    photos: Iterable[str | os.PathLike],
    cluster_results: str | os.PathLike = CLUSTER_RESULTS_CSV,
    *,
    threshold: float | None = AssignSettings.threshold,
    weights: str | os.PathLike | None = None,
    workers: int = AssignSettings.workers,
    show_progress: bool = True,
) -> AssignSummary:
    """Detect and embed ``photos`` as the clustering ``cluster_results`` (its CSV, or the folder holding it)
    was made (``weights``: the vggface2 weights file, where the collection was embedded with one), and put each
    new face into the group it matches (``threshold``: the same-person distance, default the clustering's own),
    else unknown. Group numbers, names and centroids do not change."""
    from facepipe.detect import recorded_params

    started = time.monotonic()
    AssignSettings(threshold=threshold, workers=workers)  # checks them
    results_path = cluster_results_path(cluster_results)
    # every input is read and checked before anything is written: a refused assign changes nothing
    known = read_cluster_results(results_path)
    meta = read_sidecar(_with_sidecar(results_path), CLUSTER_SIDECAR_FIELDS)
    options = checked_fields(
        json_object(meta, "options", sidecar_path(results_path)),
        sidecar_path(results_path),
        {"normalize": bool, "min_group_size": int},
    )
    distance = threshold if threshold is not None else meta.get("same_person_distance")
    if distance is None or not 0 < float(distance) < 4:
        raise FacepipeError(
            f"{results_path} records no same-person distance (k-means on an embedder without a "
            "known rule): give --threshold"
        )
    if not meta.get("embeddings") or not meta.get("crops_dir"):
        raise FacepipeError(f"{sidecar_path(results_path)} does not name the embeddings and crops it was made from")
    embeddings_path = recorded_path(meta["embeddings"], results_path)
    crops_dir = recorded_path(meta["crops_dir"], results_path)
    centroids = read_centroids(results_path.parent / CENTROIDS_CSV)
    names = group_names(results_path.parent)
    state = run_state(results_path.parent)
    for folder in (results_path.parent, crops_dir, embeddings_path.parent):  # all three are written
        check_writable(folder)
    with folder_lock(crops_dir), folder_lock(embeddings_path.parent):
        collection = read_embeddings(_with_sidecar(embeddings_path))
        _check_belong_together(known, results_path, collection, embeddings_path)
        if centroids.shape[1] != collection.dim:
            raise FacepipeError(
                f"{results_path.parent / CENTROIDS_CSV} holds {centroids.shape[1]}-d centroids but "
                f"{embeddings_path} {collection.dim}-d embeddings: the clustering and its embeddings "
                "no longer belong together"
            )
        photo_count = _detect_and_embed(
            [str(p) for p in photos],
            crops_dir,
            recorded_params(crops_dir),
            collection,
            embeddings_path,
            weights,
            workers,
            show_progress,
        )
    combined = _with_new_faces(known, results_path, embeddings_path, crops_dir, centroids, options, float(distance))
    _write(results_path, meta, combined, len(centroids), names)
    new_rows = combined.iloc[len(known) :]
    summary = AssignSummary(
        photos=photo_count,
        new_faces=len(new_rows),
        assigned=int((new_rows["cluster"] >= 0).sum()),
        unknown=int((new_rows["cluster"] == UNKNOWN_CLUSTER).sum()),
        groups=int(new_rows.loc[new_rows["cluster"] >= 0, "cluster"].nunique()),
        results=results_path,
        seconds=time.monotonic() - started,
    )
    note_assigned(results_path.parent, state, summary.line(), summary.assigned)
    return summary


def _with_new_faces(
    known: pd.DataFrame,
    results_path: Path,
    embeddings_path: Path,
    crops_dir: Path,
    centroids: np.ndarray,
    options: dict,
    distance: float,
) -> pd.DataFrame:
    """The clustering ``known`` with the faces of the embeddings it does not hold yet added, each in the group
    it matches (``nearest_groups`` at ``distance``) or unknown; a photo keeps one face per group."""
    embeddings = read_embeddings(embeddings_path)
    vectors = embeddings.vectors
    if options.get("normalize", True):
        vectors = unit_rows(vectors)
    row_of = {name: row for row, name in enumerate(embeddings.names)}
    _check_belong_together(known, results_path, embeddings, embeddings_path)
    clustered = set(known["name"])
    new_names = [n for n in embeddings.names if n not in clustered]
    grouped = known[known["cluster"] >= 0]
    new_vectors = vectors[[row_of[n] for n in new_names]]
    chosen = nearest_groups(
        new_vectors,
        vectors[[row_of[n] for n in grouped["name"]]],
        grouped["cluster"].to_numpy(),
        distance,
        int(options.get("min_group_size", 2)),
    )
    added = pd.DataFrame(
        {"name": new_names, "cluster": chosen, "distance": distances_to_centroids(new_vectors, chosen, centroids)}
    )
    combined = pd.concat([known, added], ignore_index=True)
    photos = photo_ids(combined["name"].tolist(), crop_sources(combined["name"].tolist(), crops_dir))
    repeats = one_face_per_photo(combined["cluster"].to_numpy(), photos, combined["distance"].fillna(0).to_numpy())
    combined.loc[repeats & (combined.index >= len(known)), "cluster"] = UNKNOWN_CLUSTER  # the clustered stay
    return combined


def _with_sidecar(data_file: Path) -> Path:
    """``data_file``, once its sidecar is known to be there (it tells how the file was made)."""
    if not sidecar_path(data_file).is_file():
        raise FacepipeError(f"file not found: {sidecar_path(data_file)}")
    return data_file


def _check_belong_together(
    known: pd.DataFrame, results_path: Path, embeddings: Embeddings, embeddings_path: Path
) -> None:
    """Every face of the clustering ``known`` has its vector in ``embeddings``, else a FacepipeError."""
    have = set(embeddings.names)
    missing = [n for n in known["name"] if n not in have]
    if missing:
        raise FacepipeError(
            f"{len(missing)} face(s) of {results_path} are not in {embeddings_path}, e.g. "
            f"{missing[0]}: the clustering and its embeddings no longer belong together"
        )
