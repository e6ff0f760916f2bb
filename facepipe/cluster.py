"""Stage 3: group face embeddings by the same-person distance (a neighbour graph and Chinese whispers) or with
k-means, k chosen by silhouette (elbow shown); faces matching no group go to the unknown group (-1); draw
sample grids. The grouping rules are in ``facepipe.grouping``, k-means and choosing k in ``facepipe.kmeans``,
the plots and grids in ``facepipe.cluster_grids``; this module is the stage: its inputs, reruns and outputs.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from facepipe import __version__
from facepipe.cluster_grids import write_k_plots, write_sample_grids
from facepipe.cluster_metrics import clustering_metrics
from facepipe.common import FacepipeError, file_sha256
from facepipe.formats import (
    CENTROIDS_CSV,
    CLUSTER_COLUMNS,
    CLUSTER_METRICS_JSON,
    CLUSTER_RESULTS_CSV,
    ELBOW_PNG,
    K_SELECTION_COLUMNS,
    K_SELECTION_CSV,
    PEOPLE_ANCHORS_CSV,
    RUN_SAMPLES_DIR,
    SAMPLES_OVERVIEW_JPG,
    SILHOUETTE_PNG,
    UNKNOWN_CLUSTER,
    UNKNOWN_GRID_JPG,
    output_hashes,
    outputs_match,
    read_centroids,
    read_embeddings,
    read_json,
    recorded_path,
    sample_grid,
    sidecar_path,
    write_centroids,
    write_csv_atomic,
    write_groups,
    write_json_atomic,
)
from facepipe.grouping import (
    CLOSE_SHARE,
    LINKS_NEEDED,
    Grouping,
    best_whispers,
    finish_groups,
    group_centroids,
    neighbour_graph,
    numbered_by_size,
    one_face_per_photo,
    same_person_distance,
    unmatched_faces,
)
from facepipe.kmeans import LLOYD_ITERATIONS, KSelection, kmeans, select_k, silhouette
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
    apply_people,
    people_file_of,
    read_anchors,
    read_people,
    resolve_numbers,
    unknown_faces,
    write_anchors,
)
from facepipe.settings import ClusterSettings, parse_k_range

__all__ = ["cluster", "ClusterSummary"]

SAMPLES_IN_OUT = "auto"  # samples_dir: the folder cluster_samples/ in the output folder


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
            quality = (
                f"; against {self.metrics['identities']} identities: BCubed F {self.metrics['bcubed_f']:.3f}, "
                f"NMI {self.metrics['nmi']:.3f}, ARI {self.metrics['ari']:.3f}"
            )
        state = "already done, skipped" if self.skipped else f"{self.seconds:.1f}s"
        sizes = f"sizes {min(self.sizes)}..{max(self.sizes)}" if self.sizes else "none"
        return (
            f"cluster: {self.items} embeddings -> {self.k} clusters ({sizes}) + {self.unknown} unknown, "
            f"silhouette {self.silhouette:.3f}{quality} -> {self.out_dir} ({state})\n  "
            + "\n  ".join([self.k_rule, *self.notes])
        )

    @classmethod
    def of_record(
        cls, record: dict, out_dir: Path, samples: Path | None, seconds: float, notes: list[str], skipped: bool = True
    ) -> "ClusterSummary":
        """The summary of the run a sidecar ``record`` describes: this one's, or (``skipped``) the earlier run a
        rerun found done."""
        return cls(
            k=record["k"],
            k_rule=record["k_rule"],
            items=record["items"],
            sizes=record["sizes"],
            silhouette=record["silhouette"],
            out_dir=out_dir,
            samples_dir=samples,
            metrics=record.get("metrics"),
            skipped=skipped,
            seconds=seconds,
            notes=notes,
            unknown=record.get("unknown", 0),
        )

    def details(self) -> dict:
        """The numbers a run report shows."""
        return {
            "k": self.k,
            "k_rule": self.k_rule,
            "items": self.items,
            "sizes": self.sizes,
            "unknown": self.unknown,
            "silhouette": self.silhouette,
            "metrics": self.metrics,
        }


def _file_digest(path: Path | None) -> str | None:
    return None if path is None else file_sha256(path)


def _identity_metrics(names: list[str], labels_file: Path, crops_dir: Path | None, predicted: np.ndarray) -> dict:
    from facepipe.labels import attach_labels

    joined = attach_labels(names, labels_file, crops_dir)
    if "identity" not in joined.columns:
        raise FacepipeError(f"{labels_file}: the label manifest has no 'identity' column")
    known = joined["matched"].to_numpy() & joined["identity"].notna().to_numpy()
    if known.sum() < 2:
        raise FacepipeError(
            f"{labels_file}: fewer than 2 of the {len(names)} embeddings have a known identity "
            "(do the manifest's relpath/name values match the crops or their source photos?)"
        )
    metrics = clustering_metrics(joined.loc[known, "identity"].astype(str).to_numpy(), predicted[known])
    metrics["unlabelled"] = int((~known).sum())
    metrics["labels"] = str(labels_file)
    return metrics


def _photo_ids(names: list[str], crops_dir: Path | None, notes: list[str]) -> np.ndarray:
    """A number per face naming its source photo (from detect's detections.csv); a face of unknown source
    counts as its own photo, and ``notes`` says so when no source is known."""
    from facepipe.labels import crop_sources, photo_ids

    sources = crop_sources(names, crops_dir)
    if not sources:
        notes.append(
            "the crops' source photos are not known (no detections.csv): the one-face-per-photo rule "
            "could not be applied"
        )
    return photo_ids(names, sources)


@locks_output(lambda args: args["out_dir"])
def cluster(
    embeddings_path: str | os.PathLike,
    out_dir: str | os.PathLike = "clusters",
    settings: ClusterSettings | None = None,
    *,
    samples_dir: str | os.PathLike | None = SAMPLES_IN_OUT,
    crops_dir: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    force: bool = False,
    show_progress: bool = True,
) -> ClusterSummary:
    """Group the embeddings in ``embeddings_path`` (CSV or .npz from ``embed``) into ``out_dir`` by the
    ``settings`` (``settings.ClusterSettings``, its defaults when None):

    ``method`` "graph": faces closer than the same-person distance ``threshold`` ("auto": the embedder's rule,
    ``models.SAME_PERSON_DISTANCE``) are linked and Chinese whispers groups them; "kmeans": k-means with ``k``
    a number, or "auto" over ``k_range`` by ``k_rule``; "auto": k-means when ``k`` is a number, else the graph
    where a rule is known. Weakly linked faces (``grouping.unmatched_faces``), groups under ``min_group_size``
    and second faces of a photo in a group go to the unknown group (-1). Writes ``cluster_results.csv`` (+ sidecar,
    written last), ``centroids.csv``, ``k_selection.csv``, plots, sample grids into ``samples_dir`` ("auto":
    ``cluster_samples/`` in ``out_dir``; None: none) and with ``labels`` ``cluster_metrics.json``; a rerun with the
    same inputs and options is skipped unless ``force``. ``people``: a people file (default: ``people.toml`` in
    ``out_dir``, if there is one).
    """
    started = time.monotonic()
    settings = settings or ClusterSettings()
    embeddings_path = Path(os.path.abspath(embeddings_path))
    out_dir = Path(os.path.abspath(out_dir))
    embeddings = read_embeddings(embeddings_path)
    n = len(embeddings.names)
    method, rule_distance, ks = _chosen_method(settings, embeddings, embeddings_path)
    crops_dir = _crops_dir(crops_dir, embeddings.meta, embeddings_path)
    labels_file, people_file = _labels_file(labels), _labels_file(people_file_of(out_dir, settings.people))
    samples, notes = _samples_folder(samples_dir, out_dir, crops_dir)
    auto = ks is not None and settings.k == "auto"
    options = _options_record(settings, method, rule_distance, ks, auto, samples, crops_dir, people_file)
    fingerprint = _fingerprint(embeddings_path, embeddings.meta, options, labels_file, people_file)
    results_path = out_dir / CLUSTER_RESULTS_CSV
    previous = _previous_run(results_path, fingerprint) if not force else None
    if previous is not None:
        return ClusterSummary.of_record(previous, out_dir, samples, time.monotonic() - started, notes)

    vectors = (_normalised if settings.normalize else _comparable)(embeddings.vectors, embeddings_path)
    photos = _photo_ids(embeddings.names, crops_dir, notes)
    grouping, selection, rule = _group(vectors, settings, method, rule_distance, ks, auto, photos, show_progress)
    grouping, names, anchors = _with_people(
        grouping, vectors, embeddings.names, photos, people_file, out_dir, rule_distance, notes
    )
    sizes, quality, inertia = _group_quality(vectors, grouping, settings.seed)
    metrics = _identity_metrics(embeddings.names, labels_file, crops_dir, grouping.labels) if labels_file else None
    table = selection.table if selection else _one_k_table(len(sizes), inertia, quality)
    record = {
        "embeddings": str(embeddings_path),
        "model": embeddings.model,
        "dimension": embeddings.dim,
        "crops_dir": options["crops_dir"],
        "k": len(sizes),
        "k_rule": rule,
        "items": n,
        "sizes": sizes,
        "unknown": int((grouping.labels < 0).sum()),
        "silhouette": quality,
        "inertia": inertia,
        "metrics": metrics,
        "options": options,
        "method": method,
        "same_person_distance": rule_distance,
        "engine": ENGINES[method],
        "fingerprint": fingerprint,
        "facepipe_version": __version__,
    }

    # Everything is computed and validated: now write, the sidecar last (it commits the files by their hashes).
    grids = (crops_dir, samples, settings.samples_per_cluster, show_progress)
    outputs = _write_outputs(
        out_dir, embeddings.names, grouping, table, selection, names, anchors, grids, notes, metrics
    )
    write_json_atomic(sidecar_path(results_path), {"outputs": outputs, **record})
    return ClusterSummary.of_record(record, out_dir, samples, time.monotonic() - started, notes, skipped=False)


ENGINES = {
    "graph": "faiss neighbour graph + Chinese whispers",
    "kmeans": f"k-means++ (scikit-learn) + faiss Lloyd, {LLOYD_ITERATIONS} iterations",
}


def _one_k_table(k: int, inertia: float, quality: float) -> pd.DataFrame:
    """k_selection.csv of a run that tried no k: the one it found, its inertia and silhouette."""
    return pd.DataFrame([{"k": k, "inertia": inertia, "silhouette": quality}], columns=K_SELECTION_COLUMNS)


def _group_quality(vectors: np.ndarray, grouping: Grouping, seed: int) -> tuple[list[int], float, float]:
    """The groups' sizes, the silhouette of the grouped faces and their inertia."""
    grouped = grouping.labels >= 0
    sizes = np.bincount(grouping.labels[grouped], minlength=len(grouping.centroids)).tolist()
    return (
        sizes,
        silhouette(vectors[grouped], grouping.labels[grouped], seed),
        float(np.square(grouping.distances[grouped]).sum()),
    )


def _with_people(
    grouping: Grouping,
    vectors: np.ndarray,
    names: list[str],
    photos: np.ndarray,
    people_file: Path | None,
    out_dir: Path,
    rule_distance: float | None,
    notes: list[str],
):
    """The grouping after the people file's corrections (renumbered by size), each group's name, and the
    anchors of the file's group numbers to keep (None without a people file: the anchors are left alone).
    A number first met is anchored on the centroid of that group in the clustering the file was written
    against: the one in ``out_dir`` before this run, else this run's own."""
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
    renumbered = numbered_by_size(labels, numbers)  # a group the file numbers keeps that number
    _, distances = group_centroids(vectors, renumbered)
    renumbered[one_face_per_photo(renumbered, photos, distances)] = UNKNOWN_CLUSTER  # a merge can join two
    group_names = {}
    for label, name in named.items():
        rows = np.flatnonzero((labels == label) & (renumbered >= 0))
        if rows.size:
            group_names[int(renumbered[rows[0]])] = name
    centroids, distances = group_centroids(vectors, renumbered)
    if lost:
        notes.append(
            f"people file: group number(s) {', '.join(map(str, lost))} no longer match a group "
            "(no group's centroid is within the same-person distance of theirs); their corrections wait"
        )
    missing = unknown_faces(people, names)
    if missing:
        notes.append(f"people file: {len(missing)} face(s) not in this clustering, e.g. {missing[0]}")
    corrected = Grouping(
        renumbered, distances, centroids, grouping.unmatched, grouping.same_photo, grouping.too_small
    )
    return corrected, group_names, {**{n: a for n, a in anchors.items() if n not in mapping}, **kept}


def _options_record(
    settings: ClusterSettings, method, rule_distance, ks, auto, samples, crops_dir, people_file
) -> dict:
    """The options as the sidecar records them (and the fingerprint covers them)."""
    return {
        "method": method,
        "threshold": rule_distance,
        "min_group_size": int(settings.min_group_size),
        "people": None if people_file is None else str(people_file),
        "k": None if ks is None else ("auto" if auto else ks.start),
        "k_range": [ks.start, ks.stop - 1, ks.step] if auto else None,
        "k_rule": settings.k_rule if auto else None,
        "normalize": bool(settings.normalize),
        "seed": int(settings.seed),
        "n_init": int(settings.n_init),
        "samples_dir": None if samples is None else str(samples),
        "samples_per_cluster": int(settings.samples_per_cluster),
        "crops_dir": None if crops_dir is None else str(crops_dir),
    }


def recorded_settings(options: dict, people: str | None) -> ClusterSettings:
    """The settings that redo a clustering from the options its sidecar records (``_options_record``), with the
    people file ``people``."""
    return ClusterSettings(
        method=options["method"],
        threshold=options.get("threshold") or "auto",
        min_group_size=options["min_group_size"],
        k=options.get("k") or "auto",
        k_range=tuple(options.get("k_range") or ClusterSettings.k_range),
        k_rule=options.get("k_rule") or ClusterSettings.k_rule,
        normalize=options["normalize"],
        seed=options["seed"],
        n_init=options["n_init"],
        samples_per_cluster=options["samples_per_cluster"],
        people=people,
    )


def _chosen_method(settings: ClusterSettings, embeddings, embeddings_path) -> tuple[str, float | None, range | None]:
    """The method "auto" stands for, the same-person distance, and the k values to try (k-means only)."""
    method, normalize = settings.method, settings.normalize
    rule_distance = same_person_distance(settings.threshold, embeddings.model, normalize)
    if method == "auto":  # a k given means k-means; else the graph wherever a distance rule is known
        method = "graph" if rule_distance is not None and settings.k == "auto" else "kmeans"
    if method == "graph" and rule_distance is None:
        raise FacepipeError(
            f"no same-person distance is known for {embeddings.model or 'these'} embeddings"
            f"{'' if normalize else ' without normalisation'}: give a threshold (--threshold) "
            "or use --method kmeans"
        )
    ks = (
        _check_k(settings.k, settings.k_range, len(embeddings.names), embeddings_path) if method == "kmeans" else None
    )
    return method, rule_distance, ks


def _fingerprint(
    embeddings_path: Path, meta: dict, options: dict, labels_file: Path | None, people_file: Path | None
) -> str:
    """What a rerun must match to be skipped: the inputs' contents, the options and the version."""
    data_digest = meta.get("data_sha256") or _file_digest(embeddings_path)  # read_embeddings checked it already
    return hashlib.sha256(
        repr(
            (
                data_digest,
                meta,
                sorted(options.items()),
                _file_digest(labels_file),
                _file_digest(people_file),
                __version__,
            )
        ).encode()
    ).hexdigest()


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


def _write_outputs(
    out_dir: Path,
    names: list[str],
    grouping: Grouping,
    table: pd.DataFrame,
    selection: KSelection | None,
    group_names: dict[int, str],
    anchors: dict | None,
    grids: tuple,
    notes: list[str],
    metrics: dict | None,
) -> dict[str, str]:
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
        paths += [samples / sample_grid(c) for c in range(k)] + [
            samples / SAMPLES_OVERVIEW_JPG,
            samples / UNKNOWN_GRID_JPG,
        ]
    return paths


def _remove_earlier_outputs(
    out_dir: Path, samples: Path | None, earlier: dict, written: list[Path], keep_anchors: bool, notes: list[str]
) -> dict[str, str]:
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
        raise FacepipeError(
            f"{embeddings_path}: {zeros} embedding(s) are all zeros and cannot "
            "be L2-normalised (use normalize=False / --no-normalize)"
        )
    return unit_rows(vectors, out=vectors)


def _comparable(vectors: np.ndarray, embeddings_path: Path) -> np.ndarray:
    """Unnormalised embeddings, refused where their distances would overflow (to infinity: one group)."""
    largest = float(np.abs(vectors).max())
    if largest * largest * vectors.shape[1] * 4 > float(np.finfo(vectors.dtype).max):
        raise FacepipeError(
            f"{embeddings_path}: values up to {largest:.3g} are too large to compare without "
            "normalisation (their squared distances overflow); drop --no-normalize"
        )
    return vectors


def _write_results(
    out_dir: Path,
    names: list[str],
    grouping: Grouping,
    table: pd.DataFrame,
    selection: KSelection | None,
    metrics: dict | None,
    group_names: dict[int, str],
    anchors: dict | None,
) -> tuple[pd.DataFrame, list[Path]]:
    """cluster_results.csv (returned), centroids.csv, k_selection.csv, the plots and the metrics, groups.csv
    with the ``group_names`` and, with a people file, its ``anchors``; returns the results and the files
    written (what an earlier run wrote and this one did not is removed by ``_remove_earlier_outputs``). The
    sidecar of the run before goes first, so that a run killed while writing these is never taken as done."""
    sidecar_path(out_dir / CLUSTER_RESULTS_CSV).unlink(missing_ok=True)
    results = pd.DataFrame(
        {"name": names, "cluster": grouping.labels, "distance": grouping.distances}, columns=CLUSTER_COLUMNS
    )
    written = [out_dir / CLUSTER_RESULTS_CSV, out_dir / CENTROIDS_CSV, out_dir / K_SELECTION_CSV]
    write_csv_atomic(results, written[0], float_format="%.6g")
    write_centroids(written[1], grouping.centroids)
    write_csv_atomic(table, written[2], float_format="%.6g")
    written.append(
        write_groups(
            out_dir,
            np.bincount(grouping.labels[grouping.labels >= 0], minlength=len(grouping.centroids)),
            group_names,
        )
    )
    if anchors:
        written.append(write_anchors(out_dir, anchors))
    written += write_k_plots(out_dir, selection)
    if metrics is not None:
        write_json_atomic(out_dir / CLUSTER_METRICS_JSON, metrics)
        written.append(out_dir / CLUSTER_METRICS_JSON)
    return results, written


def _check_k(k, k_range, n: int, embeddings_path: Path) -> range:
    """The k values k-means will try (one when ``k`` is a number), checked against the number of embeddings."""
    if k == "auto":
        ks = parse_k_range(k_range)
        ks = range(ks.start, min(ks.stop, n), ks.step)  # silhouette needs k <= n - 1
        if len(ks) == 0:
            raise FacepipeError(
                f"{embeddings_path} holds {n} embeddings: too few to try k in {k_range} "
                "(silhouette needs 2 <= k <= n - 1)"
            )
        return ks
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


def _group(vectors, settings: ClusterSettings, method, rule_distance, ks, auto, photos, show_progress):
    """Raw labels by the method, then the rules (``finish_groups``); with the k selection and the rule's text."""
    n_init, seed, min_group_size = settings.n_init, settings.seed, settings.min_group_size

    graph = neighbour_graph(vectors, rule_distance) if rule_distance is not None else None
    selection = None
    if method == "graph":
        raw = best_whispers(graph, seed, n_init)
        rule = (
            f"groups of faces closer than {rule_distance:g} (the same-person distance), by Chinese whispers "
            f"over that neighbour graph (of {n_init} seeded runs, the one that cuts the least edge weight)"
        )
    elif auto:
        selection = select_k(vectors, ks, rule=settings.k_rule, n_init=n_init, seed=seed, show_progress=show_progress)
        raw = (selection.fits.get(selection.k) or kmeans(vectors, selection.k, n_init=n_init, seed=seed)).labels
        rule = selection.rule
    else:
        raw = kmeans(vectors, ks.start, n_init=n_init, seed=seed).labels
        rule = f"k = {ks.start}: given"
    if graph is not None:
        unmatched = unmatched_faces(raw, graph)
        rule += (
            f"; a face needs {LINKS_NEEDED} members of its group closer than {rule_distance:g} (all the "
            f"others in a smaller group), or one closer than {CLOSE_SHARE * rule_distance:.3g}, else it is "
            "unknown"
        )
    else:
        unmatched = np.zeros(len(raw), dtype=bool)
    grouping = finish_groups(vectors, raw, unmatched, photos, min_group_size)
    rule += (
        f"; unknown (-1): {grouping.unmatched} face(s) too weakly linked to their group, "
        f"{grouping.same_photo} second face(s) of a photo already in the group, {grouping.too_small} in "
        f"groups under {min_group_size} faces"
    )
    return grouping, selection, rule


def _previous_run(results_path: Path, fingerprint: str) -> dict | None:
    """The sidecar of an earlier run with the same fingerprint whose outputs (results, centroids, table,
    plots, metrics, sample grids) are all still there as it recorded them (same sha256), else None."""
    meta_file = sidecar_path(results_path)
    if not (results_path.is_file() and meta_file.is_file()):
        return None
    meta = read_json(meta_file)
    done = meta.get("fingerprint") == fingerprint and outputs_match(results_path.parent, meta.get("outputs"))
    return meta if done else None
