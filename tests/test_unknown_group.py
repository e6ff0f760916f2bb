"""The unknown group (cluster -1) downstream of cluster: metrics, train-cvae, generate, centroids and the report.

All of it runs on hand-written cluster results over the LFW photos in assets/samples (no ../shared needed).
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from test_cvae import TRAINING

from facepipe.cluster_metrics import clustering_metrics
from facepipe.common import FacepipeError
from facepipe.config import load_config
from facepipe.crops import read_training_inputs
from facepipe.cvae import load_checkpoint, train_cvae
from facepipe.formats import (
    CENTROIDS_CSV,
    CLUSTER_RESULTS_CSV,
    CVAE_BEST_CHECKPOINT,
    RUN_INFERENCE_DIR,
    RUN_SAMPLES_DIR,
    UNKNOWN_CLUSTER,
    UNKNOWN_GRID_JPG,
    Embeddings,
    generated_face_names,
    sample_grid,
    sidecar_path,
    write_centroids,
    write_json_atomic,
)
from facepipe.generate import generate, saved_or_recomputed_centroids
from facepipe.identity import cluster_centroids
from facepipe.report import write_report
from facepipe.settings import TrainSettings

PHOTOS = Path(__file__).resolve().parents[1] / "assets" / "samples" / "images"
GROUPS = {"Kofi_Annan": 0, "Jackie_Chan": 1, "Hans_Blix": UNKNOWN_CLUSTER}
PHOTOS_EACH = 3
# 3 photos each of 3 people from assets/samples: two groups and one person in the unknown group
PHOTO_CLUSTERS = {
    f"{person}/{person}_{i:04d}.jpg": cluster for person, cluster in GROUPS.items() for i in range(1, PHOTOS_EACH + 1)
}
GROUPED = {name: cluster for name, cluster in PHOTO_CLUSTERS.items() if cluster != UNKNOWN_CLUSTER}
SCORES = (
    "nmi",
    "ari",
    "bcubed_precision",
    "bcubed_recall",
    "bcubed_f",
    "pairwise_precision",
    "pairwise_recall",
    "pairwise_f",
)

# --------------------------------------------------------------------------- metrics


@pytest.mark.fast
def test_each_unknown_face_is_its_own_cluster():
    with_unknown = clustering_metrics(["a", "a", "b"], [-1, -1, 0])
    singletons = clustering_metrics(["a", "a", "b"], [5, 6, 0])
    for key in SCORES:
        assert with_unknown[key] == pytest.approx(singletons[key]), key
    # a a | b as {a} {a} {b}: nothing claimed wrongly (precision 1), recall (1/2 + 1/2 + 1) / 3
    assert (with_unknown["bcubed_precision"], with_unknown["bcubed_recall"]) == pytest.approx((1.0, 2 / 3))
    assert (with_unknown["pairwise_precision"], with_unknown["pairwise_recall"]) == pytest.approx((1.0, 0.0))
    assert (with_unknown["clusters"], with_unknown["unknown"], with_unknown["items"]) == (1, 2, 3)
    assert clustering_metrics(["a", "a", "b"], [-1, -1, -1])["clusters"] == 0


@pytest.mark.fast
def test_unknown_faces_beside_groups_by_hand():
    truth = ["a", "a", "a", "b", "b"]
    predicted = [0, 0, -1, 1, -1]  # as {a a} {a} {b} {b}
    metrics = clustering_metrics(truth, predicted)
    # BCubed: every cluster is pure; recall 2/3, 2/3 (a a), 1/3 (the lone a), 1/2, 1/2 (the b's)
    assert metrics["bcubed_precision"] == pytest.approx(1.0)
    assert metrics["bcubed_recall"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1 / 2 + 1 / 2) / 5)
    # pairwise: the one claimed pair (a a) is right; it is 1 of the 3 + 1 same-identity pairs
    assert (metrics["pairwise_precision"], metrics["pairwise_recall"]) == pytest.approx((1.0, 0.25))
    as_singletons = [0, 0, 2, 1, 3]
    assert metrics["nmi"] == pytest.approx(normalized_mutual_info_score(truth, as_singletons), abs=1e-12)
    assert metrics["ari"] == pytest.approx(adjusted_rand_score(truth, as_singletons), abs=1e-12)
    assert (metrics["clusters"], metrics["unknown"]) == (2, 2)


# --------------------------------------------------------------------------- train-cvae and generate


def write_cluster_results(folder: Path, clusters: dict[str, int]) -> Path:
    """``cluster_results.csv`` in ``folder`` for photos of assets/samples named with their cluster, and its sidecar."""
    folder.mkdir(parents=True, exist_ok=True)
    results = folder / CLUSTER_RESULTS_CSV
    frame = pd.DataFrame({"name": list(clusters), "cluster": list(clusters.values()), "distance": 0.0})
    frame.to_csv(results, index=False)
    write_json_atomic(sidecar_path(results), {"crops_dir": str(PHOTOS)})
    return results


@pytest.fixture(scope="module")
def trained_with_unknown(tmp_path_factory):
    """A 2-epoch CVAE on cluster results with unknown rows, one of them naming a crop that does not exist."""
    folder = tmp_path_factory.mktemp("unknown")
    results = write_cluster_results(folder, {**PHOTO_CLUSTERS, "nobody/missing.jpg": UNKNOWN_CLUSTER})
    return train_cvae(
        results, TrainSettings(**dict(TRAINING, epochs=2)), weights_dir=folder / "weights", show_progress=False
    )


def test_train_cvae_leaves_the_unknown_group_out(trained_with_unknown, tmp_path):
    summary = trained_with_unknown
    config = load_checkpoint(summary.weights_dir / CVAE_BEST_CHECKPOINT)["config"]
    assert config["clusters"] == [0, 1]
    assert summary.train_count + summary.val_count == 2 * PHOTOS_EACH  # the missing unknown crop was never read
    grouped_only = write_cluster_results(tmp_path / "grouped", GROUPED)
    assert config["data_fingerprint"] == read_training_inputs(grouped_only).fingerprint()

    more_unknown = write_cluster_results(tmp_path / "more", {**PHOTO_CLUSTERS, "Venus_Williams/x.jpg": -1})
    resumed = tmp_path / "resumed"
    train_cvae(more_unknown, TrainSettings(**dict(TRAINING, epochs=1)), weights_dir=resumed, show_progress=False)
    again = train_cvae(
        grouped_only, TrainSettings(**dict(TRAINING, epochs=2)), weights_dir=resumed, resume=True, show_progress=False
    )
    assert again.epochs_run == 1  # the same training data: unknown rows do not change the fingerprint


def test_generate_writes_no_face_for_the_unknown_group(trained_with_unknown, tmp_path):
    weights = trained_with_unknown.weights_dir
    out = tmp_path / "faces"
    generated = generate(weights, out_dir=out, samples=1, evaluate=False, device="cpu", show_progress=False)
    assert generated.clusters == [0, 1]
    assert {p.name for p in out.glob("cluster_*.png")} == {
        name for cluster in (0, 1) for name in generated_face_names(cluster).values()
    }
    with pytest.raises(FacepipeError, match="not in this model"):
        generate(weights, out_dir=out, clusters=[UNKNOWN_CLUSTER], evaluate=False, device="cpu", show_progress=False)


def test_no_group_left_is_a_clear_error(trained_with_unknown, tmp_path):
    all_unknown = write_cluster_results(tmp_path, dict.fromkeys(PHOTO_CLUSTERS, UNKNOWN_CLUSTER))
    message = rf"all {len(PHOTO_CLUSTERS)} crops are in the unknown group \(cluster -1\)"
    with pytest.raises(FacepipeError, match=message):
        train_cvae(all_unknown, TrainSettings(**TRAINING), weights_dir=tmp_path / "weights", show_progress=False)
    with pytest.raises(FacepipeError, match=message):
        generate(
            trained_with_unknown.weights_dir,
            out_dir=tmp_path / "faces",
            cluster_results=all_unknown,
            device="cpu",
            show_progress=False,
        )
    assert not (tmp_path / "weights").exists()
    below = write_cluster_results(tmp_path / "below", {**PHOTO_CLUSTERS, "Venus_Williams/x.jpg": -2})
    with pytest.raises(FacepipeError, match=r"-2 is out of range \(must be from -1"):
        read_training_inputs(below)


# --------------------------------------------------------------------------- centroids


@pytest.mark.fast
def test_centroids_ignore_the_unknown_group(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((len(GROUPED), 8)).astype(np.float32)
    embeddings = Embeddings(list(GROUPED), vectors)  # the unknown crops need no embedding: they are not looked up
    ids, centroids = cluster_centroids(embeddings, list(PHOTO_CLUSTERS), np.array(list(PHOTO_CLUSTERS.values())))
    assert ids == [0, 1]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = unit[np.array(list(GROUPED.values())) == 1].mean(axis=0)
    assert centroids[1] == pytest.approx(expected / np.linalg.norm(expected), abs=1e-6)

    results = write_cluster_results(tmp_path, PHOTO_CLUSTERS)
    write_centroids(tmp_path / CENTROIDS_CSV, 2.0 * centroids)  # one row per real group, as cluster writes it
    saved_ids, saved, source = saved_or_recomputed_centroids(read_training_inputs(results), embeddings)
    assert saved_ids == [0, 1] and CENTROIDS_CSV in source
    assert saved == pytest.approx(centroids, abs=1e-6)


# --------------------------------------------------------------------------- report


def write_run_folder(out: Path, clusters: dict[str, int], unknown_grid: bool) -> None:
    """A run folder holding only what the report's cluster section reads: results, sample grids, generated faces."""
    write_cluster_results(out, clusters)
    groups = sorted(set(clusters.values()) - {UNKNOWN_CLUSTER})
    grids = [sample_grid(c) for c in groups]
    faces = [name for c in groups for name in generated_face_names(c).values()]
    for folder, names in ((RUN_SAMPLES_DIR, grids + [UNKNOWN_GRID_JPG] * unknown_grid), (RUN_INFERENCE_DIR, faces)):
        (out / folder).mkdir(exist_ok=True)
        for name in names:
            Image.new("RGB", (8, 8), "gray").save(out / folder / name)


def report_clusters(out: Path) -> str:
    """The cluster section of the report written for the run folder ``out``."""
    summary = {"stages": {}, "facepipe_version": "test", "seconds": 0.0}
    page = write_report(out, summary, load_config()).read_text(encoding="utf-8")
    return page[page.index('<h2 id="clusters">') : page.index('<h2 id="fidelity">')]


@pytest.mark.fast
def test_report_shows_the_unknown_group_with_its_grid(tmp_path):
    write_run_folder(tmp_path, PHOTO_CLUSTERS, unknown_grid=True)
    section = report_clusters(tmp_path)
    assert 'id="cluster-0"' in section and 'id="cluster-1"' in section and "cluster--1" not in section
    assert section.count(f"<p>{PHOTOS_EACH} face(s) in ") == 2  # the real groups' sizes
    assert "sample grid: not produced" not in section
    unknown = section[section.index('id="cluster-unknown"') :]  # the last card
    assert f"{PHOTOS_EACH} face(s) that match no group" in unknown
    grid = base64.b64encode((tmp_path / RUN_SAMPLES_DIR / UNKNOWN_GRID_JPG).read_bytes()).decode("ascii")
    assert grid in unknown and "CVAE face" not in unknown


@pytest.mark.fast
def test_report_without_unknown_grid_or_unknown_faces(tmp_path):
    write_run_folder(tmp_path / "no_grid", PHOTO_CLUSTERS, unknown_grid=False)
    assert "(Unknown sample grid: not produced)" in report_clusters(tmp_path / "no_grid")
    write_run_folder(tmp_path / "none", GROUPED, unknown_grid=False)
    section = report_clusters(tmp_path / "none")
    assert "cluster-unknown" not in section and "sample grid: not produced" not in section
