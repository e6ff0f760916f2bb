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
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from facepipe.common import FacepipeError
from facepipe.formats import (
    CENTROIDS_CSV,
    CLUSTER_COLUMNS,
    CLUSTER_RESULTS_CSV,
    DETECT_PARAMS_JSON,
    DETECTIONS_CSV,
    GROUPS_COLUMNS,
    GROUPS_CSV,
    RUN_STATE_JSON,
    UNKNOWN_CLUSTER,
    output_hashes,
    read_centroids,
    read_csv,
    read_embeddings,
    read_json,
    recorded_path,
    sidecar_path,
    write_csv_atomic,
    write_json_atomic,
)
from facepipe.locks import folder_lock, locks_output

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
        return (f"assign: {self.photos} photos, {self.new_faces} new faces: {self.assigned} put in {self.groups} "
                f"existing groups, {self.unknown} unknown -> {self.results} in {self.seconds:.1f}s")


def _embed_settings(meta: dict) -> dict:
    """The embed options that reproduce the embeddings a sidecar describes."""
    settings = {"model": meta.get("model"), "precision": meta.get("precision", "fp32")}
    if "crop" in meta:
        settings.update(dlib_crop=meta["crop"], dlib_padding=meta.get("chip_padding"))
    return {k: v for k, v in settings.items() if v is not None}


def _detect_and_embed(photos, crops_dir: Path, embeddings_path: Path, workers: int, show_progress: bool) -> None:
    """The new photos through detect and embed, into the collection's own crops folder and embeddings file, with
    the parameters recorded there (photos already done are skipped; the collection's other photos are kept)."""
    from facepipe.detect import DetectorParams, detect
    from facepipe.embed import embed

    recorded = read_json(crops_dir / DETECT_PARAMS_JSON).get("params", {})
    known = {f.name for f in fields(DetectorParams)}
    params = DetectorParams(**{k: v for k, v in recorded.items() if k in known})
    detect(photos, crops_dir, params, workers=workers, keep_others=True, show_progress=show_progress)
    embed(crops_dir, embeddings_path, workers=workers, show_progress=show_progress,
          **_embed_settings(read_embeddings(embeddings_path).meta))


def nearest_groups(new: np.ndarray, grouped: np.ndarray, groups: np.ndarray, distance: float,
                   min_votes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``new``: the group with the most members (rows of ``grouped``, their group ``groups``)
    within ``distance`` among its NEIGHBOURS nearest (ties: the smaller mean distance), if they are at least
    ``min_votes`` (or all of a smaller group), else UNKNOWN_CLUSTER; and that mean distance (inf for unknown)."""
    import faiss

    index = faiss.IndexFlatL2(grouped.shape[1])
    index.add(np.ascontiguousarray(grouped, dtype=np.float32))
    squared, found = index.search(np.ascontiguousarray(new, dtype=np.float32), min(NEIGHBOURS, len(grouped)))
    gaps = np.sqrt(np.maximum(squared, 0.0))
    sizes = np.bincount(groups)
    chosen = np.full(len(new), UNKNOWN_CLUSTER, dtype=np.int64)
    closeness = np.full(len(new), np.inf)
    for row in range(len(new)):
        near = gaps[row] <= distance
        if not near.any():
            continue
        votes = pd.DataFrame({"group": groups[found[row][near]], "gap": gaps[row][near]}).groupby("group")["gap"]
        table = pd.DataFrame({"count": votes.size(), "mean": votes.mean()}).sort_values(["count", "mean"],
                                                                                      ascending=[False, True])
        best = int(table.index[0])
        if table["count"].iloc[0] >= min(min_votes, sizes[best]):
            chosen[row], closeness[row] = best, float(table["mean"].iloc[0])
    return chosen, closeness


def _distance_to_centroid(vectors: np.ndarray, groups: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each face's distance to its group's centroid; for an unknown face, to the nearest centroid (as cluster
    records them)."""
    import faiss

    distances = np.full(len(vectors), np.nan)
    grouped = groups >= 0
    distances[grouped] = np.linalg.norm(vectors[grouped] - centroids[groups[grouped]], axis=1)
    if (~grouped).any():
        index = faiss.IndexFlatL2(centroids.shape[1])
        index.add(np.ascontiguousarray(centroids, dtype=np.float32))
        squared, _ = index.search(np.ascontiguousarray(vectors[~grouped], dtype=np.float32), 1)
        distances[~grouped] = np.sqrt(np.maximum(squared[:, 0], 0.0))
    return distances


def _one_face_per_photo(frame: pd.DataFrame) -> pd.Series:
    """True for each face that must leave its group because a face of the same photo nearer the group's
    centroid is in it."""
    grouped = frame[frame["cluster"] != UNKNOWN_CLUSTER]
    keep = grouped.sort_values("distance").drop_duplicates(["source", "cluster"]).index
    return frame.index.isin(grouped.index.difference(keep))


def _write(results_path: Path, meta: dict, results: pd.DataFrame, centroid_count: int) -> None:
    """The updated results and groups, then the sidecar (its counts and output hashes refreshed)."""
    folder = results_path.parent
    write_csv_atomic(results[CLUSTER_COLUMNS], results_path, float_format="%.6g")
    sizes = np.bincount(results.loc[results["cluster"] >= 0, "cluster"], minlength=centroid_count)
    groups_file = folder / GROUPS_CSV
    groups = read_csv(groups_file, GROUPS_COLUMNS, "groups CSV") if groups_file.is_file() else pd.DataFrame(
        {"cluster": np.arange(centroid_count), "person": ""})
    write_csv_atomic(groups.assign(faces=sizes[groups["cluster"].astype(int)])[GROUPS_COLUMNS], groups_file)
    outputs = dict(meta.get("outputs") or {})
    outputs.update(output_hashes(folder, [results_path, groups_file]))
    unknown = int((results["cluster"] == UNKNOWN_CLUSTER).sum())
    write_json_atomic(sidecar_path(results_path), dict(meta, outputs=outputs, items=len(results),
                                                       sizes=sizes.tolist(), unknown=unknown))


def _note_in_run_state(folder: Path, summary: AssignSummary) -> None:
    """In a run folder, the cluster stage's record says what assign added (the report shows it)."""
    state_file = folder / RUN_STATE_JSON
    if not state_file.is_file():
        return
    state = read_json(state_file)
    if "cluster" in state:
        record = state["cluster"]
        record["summary"] = f"{record.get('summary', '')}\n{summary.line()}".strip()
        record.setdefault("details", {})["assigned"] = record.get("details", {}).get("assigned", 0) + summary.assigned
        write_json_atomic(state_file, state)


@locks_output(lambda args: Path(os.path.abspath(args["cluster_results"])).parent
              if not Path(args["cluster_results"]).is_dir() else args["cluster_results"])
def assign(
    photos: Iterable[str | os.PathLike],
    cluster_results: str | os.PathLike = CLUSTER_RESULTS_CSV,
    *,
    threshold: float | None = None,
    workers: int = 2,
    show_progress: bool = True,
) -> AssignSummary:
    """Detect and embed ``photos`` as the clustering ``cluster_results`` (its CSV, or the folder holding it)
    was made, and put each new face into the group it matches (``threshold``: the same-person distance,
    default the clustering's own), else unknown. Group numbers, names and centroids do not change."""
    started = time.monotonic()
    results_path = Path(os.path.abspath(cluster_results))
    results_path = results_path / CLUSTER_RESULTS_CSV if results_path.is_dir() else results_path
    results = read_csv(results_path, CLUSTER_COLUMNS, "cluster results CSV")
    meta = read_json(sidecar_path(results_path))
    distance = threshold if threshold is not None else meta.get("same_person_distance")
    if distance is None or not 0 < float(distance) < 4:
        raise FacepipeError(f"{results_path} records no same-person distance (k-means on an embedder without a "
                            "known rule): give --threshold")
    embeddings_path = recorded_path(meta["embeddings"], results_path)
    crops_dir = recorded_path(meta["crops_dir"], results_path)
    photo_list = [str(p) for p in photos]
    with folder_lock(crops_dir), folder_lock(embeddings_path.parent):
        _detect_and_embed(photo_list, crops_dir, embeddings_path, workers, show_progress)
    embeddings = read_embeddings(embeddings_path)
    normalise = (meta.get("options") or {}).get("normalize", True)
    vectors = embeddings.vectors / np.linalg.norm(embeddings.vectors, axis=1, keepdims=True) if normalise \
        else embeddings.vectors
    row_of = {name: row for row, name in enumerate(embeddings.names)}
    known = results.assign(name=results["name"].astype(str))
    new_names = [n for n in embeddings.names if n not in set(known["name"])]
    grouped = known[known["cluster"] >= 0]
    centroids = read_centroids(results_path.parent / CENTROIDS_CSV)
    new_vectors = vectors[[row_of[n] for n in new_names]]
    chosen, _ = nearest_groups(new_vectors, vectors[[row_of[n] for n in grouped["name"]]],
                               grouped["cluster"].to_numpy(), float(distance),
                               int((meta.get("options") or {}).get("min_group_size", 2)))
    added = pd.DataFrame({"name": new_names, "cluster": chosen,
                          "distance": _distance_to_centroid(new_vectors, chosen, centroids)})
    source_of = dict(read_csv(crops_dir / DETECTIONS_CSV, ["crop", "source"], "detections CSV")[["crop", "source"]]
                     .astype(str).itertuples(index=False))
    combined = pd.concat([known, added], ignore_index=True)
    combined["source"] = combined["name"].map(source_of)
    repeats = _one_face_per_photo(combined) & combined.index.isin(range(len(known), len(combined)))
    combined.loc[repeats, "cluster"] = UNKNOWN_CLUSTER
    _write(results_path, meta, combined, len(centroids))
    new_rows = combined.iloc[len(known):]
    summary = AssignSummary(photos=len(photo_list), new_faces=len(new_rows),
                            assigned=int((new_rows["cluster"] >= 0).sum()),
                            unknown=int((new_rows["cluster"] == UNKNOWN_CLUSTER).sum()),
                            groups=int(new_rows.loc[new_rows["cluster"] >= 0, "cluster"].nunique()),
                            results=results_path, seconds=time.monotonic() - started)
    _note_in_run_state(results_path.parent, summary)
    return summary
