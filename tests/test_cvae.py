"""train-cvae on the real dlib_johns crops (5 people, the manifest identities as clusters): CPU only."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from facepipe.common import FacepipeError
from facepipe.crops import read_training_inputs
from facepipe.cvae import (
    CVAEConfig,
    build_model,
    encoder_sizes,
    epoch_checkpoints,
    load_checkpoint,
    load_cvae,
    split_train_validation,
    train_cvae,
)
from facepipe.cvae.model import norm_groups
from facepipe.formats import (
    CVAE_BEST_CHECKPOINT,
    CVAE_LOG_COLUMNS,
    CVAE_LOG_CSV,
    cvae_checkpoint_name,
    write_json_atomic,
)
from facepipe.settings import TrainSettings

TRAINING = dict(image_size=32, latent_dim=16, base_channels=16, batch_size=8, epochs=3, seed=3, identity_weight=0.0)


@pytest.fixture(scope="session")
def johns_clusters(tmp_path_factory, data_dir):
    """dlib_johns detected (every face found), and a cluster_results.csv whose clusters are the identities."""
    from facepipe.detect import DetectorParams, detect
    from facepipe.formats import DETECTIONS_CSV, read_csv, sidecar_path
    from facepipe.labels import attach_labels

    root = data_dir("dlib_johns")
    work = tmp_path_factory.mktemp("johns")
    crops = work / "crops"
    detect(
        [root / "images"],
        crops,
        DetectorParams(detector="haar", min_neighbors=5, largest_only=True),
        show_progress=False,
    )
    names = read_csv(crops / DETECTIONS_CSV)["crop"].astype(str).tolist()
    labels = attach_labels(names, root / "manifest.csv", crops)
    labels = labels[labels["matched"]]
    identities = sorted(labels["identity"].unique())
    results = work / "cluster_results.csv"
    pd.DataFrame(
        {"name": labels["name"], "cluster": labels["identity"].map(identities.index), "distance": 0.0}
    ).to_csv(results, index=False)
    write_json_atomic(sidecar_path(results), {"crops_dir": str(crops), "k": len(identities)})
    return results


@pytest.fixture(scope="session")
def trained(tmp_path_factory, johns_clusters, johns_embeddings):
    """A short uninterrupted run; every epoch checkpoint kept. On the clusters with their embeddings named, as
    every later run in the session sees them (the base's crops are picked by them)."""
    weights = tmp_path_factory.mktemp("weights_full")
    summary = train_cvae(
        johns_clusters,
        TrainSettings(keep_last=TRAINING["epochs"], **TRAINING),
        weights_dir=weights,
        show_progress=False,
    )
    return weights, summary


def test_layer_sizes_follow_the_image_size():
    for size in (64, 96, 128, 224):
        config = CVAEConfig(image_size=size, latent_dim=8, base_channels=8, clusters=[0, 4, 9])
        model = build_model(config).eval()
        images = torch.rand(2, 3, size, size)
        labels = torch.tensor([0, 2])
        with torch.no_grad():
            reconstruction, mu, logvar = model(images, labels, torch.randn(2, 8))
        assert reconstruction.shape == images.shape
        assert mu.shape == logvar.shape == (2, 8)
        assert 0 <= reconstruction.min() and reconstruction.max() <= 1
    assert encoder_sizes(224)[-1] == 7 and encoder_sizes(64)[-1] == 4 and encoder_sizes(96)[-1] == 6
    with pytest.raises(FacepipeError, match="divisible by 4"):
        encoder_sizes(90)


def test_any_channel_count_the_settings_admit_builds_a_model():
    """--base-channels 40 (a last block of 20 channels) and a widest block of 100 once failed in GroupNorm;
    every width that built before keeps its groups, so older checkpoints decode as they did."""
    for base, widest in ((40, 256), (36, 100), (6, 256), (1, 256)):
        config = CVAEConfig(image_size=32, latent_dim=4, base_channels=base, max_channels=widest, clusters=[0, 1])
        model = build_model(config).eval()
        with torch.no_grad():
            reconstruction, _, _ = model(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))
        assert reconstruction.shape == (2, 3, 32, 32)
        assert all(norm.num_channels % norm.num_groups == 0 for norm in model.norms)
    assert [norm_groups(c) for c in (1, 6, 8, 16, 32, 256)] == [1, 6, 8, 8, 8, 8]  # min(8, c), as before
    assert [norm_groups(c) for c in (20, 50, 100, 12)] == [4, 2, 4, 4]


def test_the_condition_changes_the_decoded_face():
    """A plain decoder draws each cluster differently from the start; one based on the pixel means starts out
    drawing exactly each cluster's mean."""
    config = dict(image_size=32, latent_dim=8, base_channels=8, clusters=[0, 1])
    plain = build_model(CVAEConfig(**config, decoder_base="none")).eval()
    based = build_model(CVAEConfig(**config, decoder_base="mean")).eval()
    means = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
    based.set_base(means)
    with torch.no_grad():
        faces = plain.decode(torch.zeros(2, 8), torch.tensor([0, 1]))
        drawn = based.decode(torch.randn(2, 8), torch.tensor([0, 1]))
    assert not torch.equal(faces[0], faces[1])
    assert torch.allclose(drawn, means, atol=1e-5)


def test_validation_split_is_stratified_and_seeded():
    labels = torch.arange(5).repeat_interleave(10).numpy()
    train, val = split_train_validation(labels, 0.2, seed=1)
    assert len(set(train) | set(val)) == 50 and not set(train) & set(val)
    assert sorted(labels[val].tolist()) == sorted([0, 1, 2, 3, 4] * 2)
    again = split_train_validation(labels, 0.2, seed=1)[1]
    assert (again == val).all()


def test_training_loss_falls_and_is_logged(tmp_path, trained, johns_clusters):
    """The log's parts add up to its loss; the loss falls in training (shown with a plain decoder: one based on
    the crops' per-pixel median, the default, starts near its crops and may not fall in 3 short epochs)."""
    weights, summary = trained
    log = pd.read_csv(weights / CVAE_LOG_CSV)
    assert list(log.columns) == CVAE_LOG_COLUMNS
    assert log["epoch"].tolist() == [1, 2, 3]
    plain = train_cvae(
        johns_clusters,
        TrainSettings(**dict(TRAINING, decoder_base="none")),
        weights_dir=tmp_path / "plain",
        show_progress=False,
    )
    plain_log = pd.read_csv(plain.weights_dir / CVAE_LOG_CSV)
    assert plain_log["train_loss"].iloc[-1] < plain_log["train_loss"].iloc[0]
    config = load_checkpoint(weights / cvae_checkpoint_name(3))["config"]
    parts = log["train_recon"] + config["beta"] * log["train_kl"] + config["mean_anchor"] * log["train_anchor"]
    assert (log["train_loss"] - parts).abs().max() < 1e-3 * log["train_loss"].max()
    assert summary.val_count >= 5 and summary.train_count + summary.val_count == len(pd.read_csv(johns_clusters))
    assert sorted(epoch_checkpoints(weights)) == [1, 2, 3]
    assert (weights / CVAE_BEST_CHECKPOINT).is_file()


def test_mean_anchor_pulls_the_centre_face_to_the_cluster_pixel_mean(tmp_path, johns_clusters):
    """With a plain decoder (one that does not start from the pixel mean), the anchor pulls the z = 0 face there
    (at 100, the default before issue 29: the default 1 pulls less hard, so the face can be sharper)."""
    plain = dict(TRAINING, decoder_base="none")
    weights = train_cvae(
        johns_clusters,
        TrainSettings(**dict(plain, mean_anchor=100.0)),
        weights_dir=tmp_path / "anchored",
        show_progress=False,
    ).weights_dir
    anchored = pd.read_csv(weights / CVAE_LOG_CSV)
    free = train_cvae(
        johns_clusters,
        TrainSettings(**dict(plain, mean_anchor=0.0)),
        weights_dir=tmp_path / "free",
        show_progress=False,
    )
    unanchored = pd.read_csv(free.weights_dir / CVAE_LOG_CSV)
    assert load_checkpoint(weights / cvae_checkpoint_name(3))["config"]["mean_anchor"] > 0
    # 15 steps at 32 px: anchored 47 vs 64 summed squared error; the anchored run's falls every epoch
    assert anchored["val_anchor"].iloc[-1] < 0.85 * unanchored["val_anchor"].iloc[-1]
    assert anchored["train_anchor"].is_monotonic_decreasing
    with pytest.raises(FacepipeError, match="mean-anchor"):
        train_cvae(
            johns_clusters,
            TrainSettings(**dict(TRAINING, mean_anchor=-1.0)),
            weights_dir=tmp_path / "bad",
            show_progress=False,
        )


def test_checkpoint_holds_only_plain_data(trained):
    weights, _ = trained
    checkpoint = torch.load(weights / cvae_checkpoint_name(3), map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 3
    assert isinstance(checkpoint["config"], dict) and checkpoint["config"]["image_size"] == 32
    assert set(checkpoint["model"]) == set(build_model(CVAEConfig.from_dict(checkpoint["config"])).state_dict())
    model, config, _ = load_cvae(weights / CVAE_BEST_CHECKPOINT)
    assert config.clusters == [0, 1, 2, 3, 4] and not model.training


def test_resume_after_a_kill_equals_the_uninterrupted_run(tmp_path, johns_clusters, trained):
    full, _ = trained
    killed = tmp_path / "weights"
    killed.mkdir()
    shutil.copy(full / cvae_checkpoint_name(1), killed / cvae_checkpoint_name(1))  # the run died during epoch 2
    (killed / ".cvae_epoch_2.pt.facepipe-k1lled_0.tmp.pt").write_bytes(b"half a file")  # atomic_path's, killed
    with pytest.raises(FacepipeError, match="--resume"):  # more epochs than the killed run asked for: --resume
        train_cvae(
            johns_clusters,
            TrainSettings(**dict(TRAINING, epochs=TRAINING["epochs"] + 1)),
            weights_dir=killed,
            show_progress=False,
        )
    # the killed command, rerun as it was, goes on from its last epoch
    summary = train_cvae(
        johns_clusters,
        TrainSettings(keep_last=TRAINING["epochs"], **TRAINING),
        weights_dir=killed,
        show_progress=False,
    )
    assert summary.epochs_run == 2
    resumed, expected = (
        load_checkpoint(killed / cvae_checkpoint_name(3)),
        load_checkpoint(full / cvae_checkpoint_name(3)),
    )
    for key, tensor in expected["model"].items():
        assert torch.equal(resumed["model"][key], tensor), key
    columns = [c for c in CVAE_LOG_COLUMNS if c != "seconds"]
    pd.testing.assert_frame_equal(
        pd.read_csv(killed / CVAE_LOG_CSV)[columns], pd.read_csv(full / CVAE_LOG_CSV)[columns]
    )
    assert not list(killed.glob(".*.tmp*"))
    again = train_cvae(
        johns_clusters, TrainSettings(**TRAINING), weights_dir=killed, resume=True, show_progress=False
    )
    assert again.epochs_run == 0
    rerun = train_cvae(
        johns_clusters, TrainSettings(**TRAINING), weights_dir=killed, show_progress=False
    )  # a finished run is skipped
    assert rerun.epochs_run == 0 and "nothing to do" in rerun.line()


def test_a_run_with_the_adversarial_term_resumes_to_the_same_weights_and_discriminator(tmp_path, johns_clusters):
    """--adversarial-weight: the patch discriminator and its optimizer are in every checkpoint, so a run killed
    after epoch 1 and rerun ends with the same CVAE and discriminator, bit for bit; the term is logged apart
    from the loss (which picks cvae_best.pt), and a checkpoint of that run without its discriminator cannot be
    resumed from (one line)."""
    settings = TrainSettings(**dict(TRAINING, adversarial_weight=10.0, keep_last=3))
    full = train_cvae(johns_clusters, settings, weights_dir=tmp_path / "full", show_progress=False).weights_dir
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copy(full / cvae_checkpoint_name(1), killed / cvae_checkpoint_name(1))
    assert train_cvae(johns_clusters, settings, weights_dir=killed, show_progress=False).epochs_run == 2
    resumed, expected = (load_checkpoint(folder / cvae_checkpoint_name(3)) for folder in (killed, full))
    for part in ("model", "discriminator"):
        assert set(resumed[part]) == set(expected[part]) and resumed[part]
        for key, tensor in expected[part].items():
            assert torch.equal(resumed[part][key], tensor), (part, key)
    log = pd.read_csv(full / CVAE_LOG_CSV)
    assert log["train_adversarial"].notna().all() and log["val_adversarial"].notna().all()
    config = expected["config"]
    parts = log["train_recon"] + config["beta"] * log["train_kl"] + config["mean_anchor"] * log["train_anchor"]
    assert (log["train_loss"] - parts).abs().max() < 1e-3 * log["train_loss"].max()  # without the term
    stripped = tmp_path / "stripped"
    stripped.mkdir()
    checkpoint = load_checkpoint(full / cvae_checkpoint_name(1))
    del checkpoint["discriminator"]
    torch.save(checkpoint, stripped / cvae_checkpoint_name(1))
    with pytest.raises(FacepipeError, match="lacks discriminator"):
        train_cvae(johns_clusters, settings, weights_dir=stripped, show_progress=False)


def test_a_run_made_before_the_newer_terms_resumes_with_them_off_to_the_same_weights(tmp_path, johns_clusters):
    """An epoch checkpoint whose config predates --free-bits, --anchor-blur and --identity-views (no such keys)
    continues, with them off, to the uninterrupted run's weights bit for bit; asked to resume with one on, it
    is refused and the setting named."""
    from facepipe.cvae import save_checkpoint

    off = dict(TRAINING, identity_views=0.0)
    full = tmp_path / "full"
    train_cvae(johns_clusters, TrainSettings(**off, keep_last=3), weights_dir=full, show_progress=False)
    weights = tmp_path / "weights"
    weights.mkdir()
    older = load_checkpoint(full / cvae_checkpoint_name(1))
    for key in ("free_bits", "anchor_blur", "identity_views"):
        del older["config"][key]
    save_checkpoint(weights / cvae_checkpoint_name(1), older)
    with pytest.raises(FacepipeError, match="anchor_blur"):
        train_cvae(
            johns_clusters, TrainSettings(**dict(off, anchor_blur=1.0)), weights_dir=weights, show_progress=False
        )
    summary = train_cvae(johns_clusters, TrainSettings(**off), weights_dir=weights, show_progress=False)
    assert summary.epochs_run == 2
    resumed, expected = (
        load_checkpoint(weights / cvae_checkpoint_name(3)),
        load_checkpoint(full / cvae_checkpoint_name(3)),
    )
    for key, tensor in expected["model"].items():
        assert torch.equal(resumed["model"][key], tensor), key


def test_force_removes_only_what_train_cvae_recorded_writing(tmp_path, trained):
    """Issue 28: --force deletes the checkpoints, log and landmarks train-cvae recorded (cvae_outputs.json),
    and refuses, changing nothing, while a checkpoint-named file it did not write is in the way."""
    from facepipe.cvae.training import _checkpoints_to_continue
    from facepipe.formats import CVAE_RECORD_JSON, LOCK_FILE

    weights = tmp_path / "weights"
    shutil.copytree(trained[0], weights)
    (weights / cvae_checkpoint_name(9)).write_bytes(b"the user's own model")
    (weights / "notes.txt").write_text("the user's notes")
    before = {p.name: p.read_bytes() for p in weights.iterdir()}
    with pytest.raises(FacepipeError, match="was not written by train-cvae"):
        _checkpoints_to_continue(weights, TRAINING["epochs"], resume=False, force=True)
    assert {p.name: p.read_bytes() for p in weights.iterdir()} == before
    (weights / cvae_checkpoint_name(9)).rename(tmp_path / "moved.pt")
    assert _checkpoints_to_continue(weights, TRAINING["epochs"], resume=False, force=True) == {}
    assert sorted(p.name for p in weights.iterdir() if p.name != LOCK_FILE) == [CVAE_RECORD_JSON, "notes.txt"]
    assert (tmp_path / "moved.pt").read_bytes() == b"the user's own model"


def test_resume_refuses_changed_settings(tmp_path, johns_clusters, trained):
    full, _ = trained
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(full / cvae_checkpoint_name(1), weights / cvae_checkpoint_name(1))
    with pytest.raises(FacepipeError, match="beta"):
        train_cvae(
            johns_clusters,
            TrainSettings(**dict(TRAINING, beta=4.0)),
            weights_dir=weights,
            resume=True,
            show_progress=False,
        )


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, johns_clusters, trained):
    full, _ = trained
    weights = tmp_path / "weights"
    weights.mkdir()
    data = (full / cvae_checkpoint_name(1)).read_bytes()
    (weights / cvae_checkpoint_name(1)).write_bytes(data[: len(data) // 2])
    with pytest.raises(FacepipeError, match="corrupt"):
        load_checkpoint(weights / cvae_checkpoint_name(1))
    with pytest.raises(FacepipeError, match="corrupt"):
        train_cvae(johns_clusters, TrainSettings(**TRAINING), weights_dir=weights, resume=True, show_progress=False)
    (weights / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(FacepipeError, match="not a readable CVAE checkpoint"):
        load_cvae(weights / "garbage.pt")
    foreign = weights / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(FacepipeError, match="not a facepipe CVAE checkpoint"):
        load_checkpoint(foreign)


def test_missing_crops_and_bad_inputs_are_clear_errors(tmp_path, johns_clusters):
    frame = pd.read_csv(johns_clusters)
    broken = tmp_path / "cluster_results.csv"
    frame.assign(name=frame["name"].str.replace(".jpg", "_gone.jpg")).to_csv(broken, index=False)
    crops_dir = read_training_inputs(johns_clusters).crops_dir
    with pytest.raises(FacepipeError, match="could not be read"):
        train_cvae(
            broken, TrainSettings(**TRAINING), crops_dir=crops_dir, weights_dir=tmp_path / "w", show_progress=False
        )
    with pytest.raises(FacepipeError, match="names the crops folder|does not name"):
        read_training_inputs(broken)
    with pytest.raises(FacepipeError, match="divisible by 4"):
        train_cvae(
            johns_clusters,
            TrainSettings(**dict(TRAINING, image_size=30)),
            weights_dir=tmp_path / "w",
            show_progress=False,
        )


# ---------------------------------------------------------------- generate


@pytest.fixture(scope="session")
def johns_embeddings(johns_clusters):
    """dlib-resnet128 embeddings of the johns crops, named in the cluster results' sidecar like cluster does."""
    from facepipe.embed import embed
    from facepipe.formats import read_json, sidecar_path

    output = johns_clusters.parent / "image_features.csv"
    embed(
        read_training_inputs(johns_clusters).crops_dir, output, model="dlib-resnet128", workers=1, show_progress=False
    )
    meta = read_json(sidecar_path(johns_clusters))
    write_json_atomic(sidecar_path(johns_clusters), dict(meta, embeddings=output.name, model="dlib-resnet128"))
    return output


def test_generate_writes_faces_means_samples_and_sheet(tmp_path, trained):
    from click.testing import CliRunner
    from PIL import Image

    from facepipe.cli import main
    from facepipe.formats import GENERATED_SHEET_PNG, generated_face_names

    weights, _ = trained
    out = tmp_path / "inference_results"
    result = CliRunner().invoke(
        main,
        [
            "generate",
            str(weights),
            "--all",
            "-o",
            str(out),
            "--no-evaluate",
            "--samples",
            "3",
            "--device",
            "cpu",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    for cluster in range(5):
        files = generated_face_names(cluster)
        assert Image.open(out / files["face"]).size == (32, 32)
        assert Image.open(out / files["mean"]).size == (32, 32)
        assert Image.open(out / files["samples"]).size == (3 * 32, 32)
    assert Image.open(out / GENERATED_SHEET_PNG).size[0] > 5 * 32

    single = tmp_path / "one"
    # the checkpoint is the argument (the naming rule: inputs are arguments)
    result = CliRunner().invoke(
        main,
        [
            "generate",
            "--cluster",
            "2",
            str(weights),
            "-o",
            str(single),
            "--no-evaluate",
            "--samples",
            "3",
            "--device",
            "cpu",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    for kind in ("face", "samples", "mean"):
        name = generated_face_names(2)[kind]
        assert (single / name).read_bytes() == (out / name).read_bytes(), kind  # same seed, same faces
    assert not (single / generated_face_names(1)["face"]).exists()


def test_generate_removes_the_faces_of_an_earlier_call_and_nothing_of_the_users(tmp_path, trained):
    """Issue 18, case 6: a folder that held the faces of an earlier call (cluster 1) keeps none of them once
    generate has written cluster 2's. Issue 28: only what that call recorded writing goes; the user's own
    ``cluster_party.png`` and a ``cluster_99.png`` no generate wrote stay, byte for byte."""
    from click.testing import CliRunner

    from facepipe.cli import main
    from facepipe.formats import generated_face_names

    weights, _ = trained
    out = tmp_path / "inference_results"
    out.mkdir()
    users = {out / "cluster_party.png": b"the user's party", out / "cluster_99.png": b"not generate's"}
    for path, data in users.items():
        path.write_bytes(data)
    options = ["-o", str(out), "--no-evaluate", "--samples", "1", "--device", "cpu", "-q"]
    earlier = CliRunner().invoke(main, ["generate", str(weights), "--cluster", "1", *options])
    assert earlier.exit_code == 0, earlier.output
    result = CliRunner().invoke(main, ["generate", str(weights), "--cluster", "2", *options])
    assert result.exit_code == 0, result.output
    assert not [name for name in generated_face_names(1).values() if (out / name).exists()]
    assert sorted(p.name for p in out.glob("cluster_*.png")) == sorted(
        [*generated_face_names(2).values(), "cluster_99.png", "cluster_party.png"]
    )
    assert {path: path.read_bytes() for path in users} == users
    face = out / generated_face_names(2)["face"]
    face.write_bytes(b"retouched by the user")
    refused = CliRunner().invoke(main, ["generate", str(weights), "--cluster", "2", *options])
    assert refused.exit_code == 1 and "changed since facepipe wrote it" in refused.output
    assert face.read_bytes() == b"retouched by the user"


def test_generate_usage_errors(tmp_path, trained):
    from click.testing import CliRunner

    from facepipe.cli import main

    weights, _ = trained
    result = CliRunner().invoke(main, ["generate", str(weights), "-o", str(tmp_path)])
    assert result.exit_code == 2 and "--all" in result.output
    result = CliRunner().invoke(main, ["generate", str(weights), "--cluster", "7", "-o", str(tmp_path)])
    assert result.exit_code == 1 and "not in this model" in result.output
    broken = tmp_path / "broken.pt"
    broken.write_bytes((weights / CVAE_BEST_CHECKPOINT).read_bytes()[:1000])
    result = CliRunner().invoke(main, ["generate", str(broken), "--all", "-o", str(tmp_path)])
    assert result.exit_code == 1 and "corrupt" in result.output and "Traceback" not in result.output


def test_fidelity_scores_real_crops_as_their_own_people(tmp_path, johns_clusters, johns_embeddings):
    """The evaluation path on faces whose identity is known: each cluster's most typical crop, shrunk to 64 px
    like a generated face, must come out nearest its own centroid; a face of the wrong person must not."""
    import numpy as np

    from facepipe.crops import load_crops
    from facepipe.formats import read_embeddings
    from facepipe.generate import evaluate_fidelity
    from facepipe.identity import cluster_centroids

    inputs = read_training_inputs(johns_clusters)
    ids, centroids = cluster_centroids(read_embeddings(johns_embeddings), inputs.names, inputs.clusters)
    embeddings = read_embeddings(johns_embeddings)
    row_of = {n: i for i, n in enumerate(embeddings.names)}
    typical = []
    for index, cluster in enumerate(ids):
        members = [n for n, c in zip(inputs.names, inputs.clusters) if c == cluster]
        vectors = embeddings.vectors[[row_of[n] for n in members]]
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        typical.append(members[int(np.argmax(vectors @ centroids[index]))])
    faces = load_crops(typical, inputs.crops_dir, 64, show_progress=False)
    shifted = np.roll(faces, 1, axis=0)  # cluster i gets the face of cluster i - 1
    report = evaluate_fidelity(faces, shifted, ids, inputs, johns_embeddings)
    assert report["model"] == "dlib-resnet128" and report["clusters_evaluated"] == 5
    assert report["cvae"]["correct"] == 5
    assert report["pixel_mean"]["correct"] == 0
    assert [row["pixel_mean_nearest"] for row in report["per_cluster"]] == [ids[i - 1] for i in range(5)]
    assert report["centroids"].startswith("recomputed")

    from facepipe.formats import CENTROIDS_CSV, write_centroids

    saved = tmp_path / "cluster_results.csv"  # as the cluster stage leaves it: with centroids.csv beside it
    shutil.copy(johns_clusters, saved)
    shutil.copy(str(johns_clusters) + ".json", str(saved) + ".json")
    write_centroids(tmp_path / CENTROIDS_CSV, centroids * 3.0)  # k-means centroids need not be unit length
    with_saved = evaluate_fidelity(faces, shifted, ids, read_training_inputs(saved), johns_embeddings)
    assert CENTROIDS_CSV in with_saved["centroids"]
    for row, expected in zip(with_saved["per_cluster"], report["per_cluster"]):
        assert row["cvae_nearest"] == expected["cvae_nearest"]
        assert row["cvae_cosine_to_own"] == pytest.approx(expected["cvae_cosine_to_own"], abs=1e-5)


def test_identity_term_pulls_the_centre_faces_towards_their_centroids(
    tmp_path, johns_clusters, johns_embeddings, trained
):
    """--identity-weight: the logged identity term (1 - cosine to the cluster's centroid) is part of the loss and
    falls, a resumed run ends as an uninterrupted one, and generate's own evaluation finds the z = 0 faces nearer
    their centroids than without it; off, it is not measured; clusters whose embeddings it cannot use are
    refused before anything is written."""
    import numpy as np

    from facepipe.formats import Embeddings, read_embeddings, sidecar_path, write_embeddings
    from facepipe.generate import generate
    from facepipe.identity import DEFAULT_IDENTITY_WEIGHT, clustered_embeddings_model, identity_weight_for

    plain, _ = trained
    assert pd.read_csv(plain / CVAE_LOG_CSV)["train_identity"].isna().all()
    weight = 1000.0
    run = train_cvae(
        johns_clusters,
        TrainSettings(**dict(TRAINING, identity_weight=weight)),
        weights_dir=tmp_path / "identity",
        show_progress=False,
    )
    log = pd.read_csv(run.weights_dir / CVAE_LOG_CSV)
    config = load_checkpoint(run.weights_dir / CVAE_BEST_CHECKPOINT)["config"]
    anchor_weight, draw_share = config["mean_anchor"], config["draw_identity"]
    assert draw_share > 0 and log["train_draw_identity"].notna().all() and log["val_draw_identity"].isna().all()
    parts = (
        log["train_recon"]
        + config["beta"] * log["train_kl"]
        + anchor_weight * log["train_anchor"]
        + weight * (log["train_identity"] + draw_share * log["train_draw_identity"])
    )
    assert (log["train_loss"] - parts).abs().max() < 1e-3 * log["train_loss"].max()
    assert log["train_identity"].iloc[-1] < log["train_identity"].iloc[0]
    # The term is deterministic: a resumed run still ends bit for bit the same (training runs on a fixed thread
    # count with dynamic thread adjustment off, so a loaded machine does not change the ResNet's gradient sums).
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    train_cvae(
        johns_clusters,
        TrainSettings(**dict(TRAINING, identity_weight=weight)),
        weights_dir=uninterrupted,
        show_progress=False,
    )
    train_cvae(
        johns_clusters,
        TrainSettings(**dict(TRAINING, identity_weight=weight, epochs=1)),
        weights_dir=resumed,
        show_progress=False,
    )
    train_cvae(
        johns_clusters,
        TrainSettings(**dict(TRAINING, identity_weight=weight)),
        weights_dir=resumed,
        resume=True,
        show_progress=False,
    )
    expected = load_checkpoint(uninterrupted / cvae_checkpoint_name(3))["model"]
    for key, tensor in load_checkpoint(resumed / cvae_checkpoint_name(3))["model"].items():
        assert torch.equal(tensor, expected[key]), key
    cosine = {}
    for name, weights in (("plain", plain), ("identity", run.weights_dir)):
        report = generate(
            weights, out_dir=tmp_path / f"faces_{name}", evaluate=True, device="cpu", show_progress=False
        )
        cosine[name] = np.mean([row["cvae_cosine_to_own"] for row in report.fidelity["per_cluster"]])
    print(f"mean cosine of the z = 0 faces to their centroids: {cosine}")
    assert cosine["identity"] > cosine["plain"]

    other = tmp_path / "other"
    other.mkdir()
    results = other / "cluster_results.csv"
    shutil.copy(johns_clusters, results)
    write_json_atomic(sidecar_path(results), {"crops_dir": str(read_training_inputs(johns_clusters).crops_dir)})
    refused = tmp_path / "refused"
    with pytest.raises(FacepipeError, match="name no embeddings"):
        train_cvae(
            results, TrainSettings(**dict(TRAINING, identity_weight=1.0)), weights_dir=refused, show_progress=False
        )
    embeddings = read_embeddings(johns_embeddings)
    write_embeddings(
        other / "features.csv",
        Embeddings(embeddings.names, embeddings.vectors, dict(embeddings.meta, model="vggface2-resnet50")),
    )
    write_json_atomic(
        sidecar_path(results),
        {"crops_dir": str(read_training_inputs(johns_clusters).crops_dir), "embeddings": "features.csv"},
    )
    with pytest.raises(FacepipeError, match="needs dlib-resnet128 embeddings.*vggface2-resnet50"):
        train_cvae(
            results, TrainSettings(**dict(TRAINING, identity_weight=1.0)), weights_dir=refused, show_progress=False
        )
    assert not refused.exists()  # refused before anything is written
    for bad in (-1.0, "strong"):
        with pytest.raises(FacepipeError, match="identity-weight"):
            train_cvae(
                johns_clusters,
                TrainSettings(**dict(TRAINING, identity_weight=bad)),
                weights_dir=refused,
                show_progress=False,
            )
    # "auto" (the default): on for dlib-resnet128 clusters, off for others, as the checkpoint records
    assert identity_weight_for("auto", clustered_embeddings_model(johns_clusters)) == DEFAULT_IDENTITY_WEIGHT
    assert identity_weight_for("auto", clustered_embeddings_model(results)) == 0.0
    auto = train_cvae(
        results,
        TrainSettings(**dict(TRAINING, epochs=1, identity_weight="auto")),
        weights_dir=tmp_path / "auto",
        show_progress=False,
    )
    assert load_checkpoint(auto.weights_dir / CVAE_BEST_CHECKPOINT)["config"]["identity_weight"] == 0.0


def test_flip_augmentation_mirrors_left_and_right_only():
    from facepipe.cvae import CachedCrops

    images = torch.arange(2 * 4 * 5 * 3, dtype=torch.uint8).view(2, 4, 5, 3)
    dataset = CachedCrops(images, torch.tensor([0, 1]))
    flipped, label = dataset[(1, True)]
    assert label == 1
    assert torch.equal(flipped[:, 0], images[1, :, 4]) and torch.equal(flipped[0, 0], images[1, 0, 4])
    assert torch.equal(dataset[(0, False)][0], images[0])


def test_aligned_crops_line_up_their_landmarks_and_sharpen_the_mean(johns_clusters, trained):
    """--align dlib5: the crops of a person put their eyes and mouth on the same pixels (landmarks found again on
    the aligned faces spread far less than on the crops resized whole), so their pixel mean is sharper; the
    landmarks each crop was aligned on are recorded in alignment.csv, and aligning from them gives the same faces."""
    import numpy as np

    from facepipe.crops import CropAligner, load_crops
    from facepipe.face_measures import laplacian_sharpness
    from facepipe.formats import ALIGNMENT_CSV, read_alignment
    from facepipe.images import load_image_rgb
    from facepipe.models.dlib_resnet import CropLandmarks, chip_to_image

    def image_to_face(points, size):
        """Crop pixel -> pixel of its aligned face: the inverse of the face's sampling map."""
        import dlib

        shape = dlib.full_object_detection(
            dlib.rectangle(0, 0, 1, 1), [dlib.point(int(x), int(y)) for x, y in points]
        )
        affine = np.vstack([chip_to_image(shape, size, TrainSettings.align_padding), [0, 0, 1]])
        return (np.linalg.inv(affine) @ np.vstack([points.T, np.ones(len(points))]))[:2].T

    inputs = read_training_inputs(johns_clusters)
    size = 64
    aligner = CropAligner(inputs.crops_dir)
    aligned = load_crops(inputs.names, inputs.crops_dir, size, False, aligner)
    whole = load_crops(inputs.names, inputs.crops_dir, size, False)
    side = load_image_rgb(inputs.crops_dir / inputs.names[0]).shape[0]
    landmarks = np.stack([aligner.landmarks[name] for name in inputs.names]).astype(float)
    where = {
        "whole": landmarks * size / side,  # where each crop's landmarks land in the faces trained on
        "aligned": np.stack([image_to_face(points, size) for points in landmarks]),
    }
    spread, sharpness = {}, {}
    for kind, faces in (("aligned", aligned), ("whole", whole)):
        spread[kind] = np.mean(
            [where[kind][inputs.clusters == c].std(axis=0).mean() for c in np.unique(inputs.clusters)]
        )
        # what the mean keeps of its crops' sharpness (the framings differ, so each against its own crops)
        sharpness[kind] = np.mean(
            [
                laplacian_sharpness(faces[inputs.clusters == c].mean(axis=0, keepdims=True))[0]
                / laplacian_sharpness(faces[inputs.clusters == c]).mean()
                for c in np.unique(inputs.clusters)
            ]
        )
    print(
        f"landmark spread within a person (px at {size}): {spread}; "
        f"sharpness of the pixel means / their crops': {sharpness}"
    )
    assert spread["aligned"] < 0.5 * spread["whole"]
    assert sharpness["aligned"] > sharpness["whole"]
    # the aligned faces show their own landmarks there too (dlib finds them again, within a pixel or two)
    finder = CropLandmarks(TrainSettings.align_padding)
    found = np.stack([[(p.x, p.y) for p in finder(face).parts()] for face in aligned[:10]])
    assert np.abs(found - where["aligned"][:10]).mean() < 2.0

    weights, _ = trained  # trained with the default alignment
    recorded = read_alignment(weights / ALIGNMENT_CSV)
    assert set(recorded) == set(inputs.names)
    for name in inputs.names[:5]:
        assert np.array_equal(recorded[name], aligner.landmarks[name])
    replayed = CropAligner(inputs.crops_dir, known=recorded)
    assert np.array_equal(load_crops(inputs.names, inputs.crops_dir, size, False, replayed), aligned)
    assert replayed._finder is None  # nothing had to be found again


def test_identity_on_random_draws_makes_them_the_person(tmp_path, johns_clusters, johns_embeddings):
    """--draw-identity: with the identity term also on random draws, generate's draws are nearer their own
    cluster's centroid (cosine, by dlib) than when only the z = 0 faces are pulled (shown with a plain decoder,
    whose early draws are far from the person; one based on the pixel means starts near it; and the objective
    before issue 29, beta 1, anchor 100, unmasked crops: with the defaults now the draws without the term are
    already nearer, 0.918 vs 0.925 with it; with that objective 0.906 without the term and 0.924 with it); the
    report of generate scores the draws and measures the sharpness of every kind of face."""
    from facepipe.generate import generate

    cosine = {}
    for share in (0.0, 1.0):
        run = train_cvae(
            johns_clusters,
            TrainSettings(
                **dict(
                    TRAINING,
                    image_size=64,
                    epochs=20,
                    identity_weight=1000.0,
                    draw_identity=share,
                    decoder_base="none",
                    beta=1.0,
                    mean_anchor=100.0,
                    face_mask="none",
                )
            ),
            weights_dir=tmp_path / f"draws_{share:g}",
            show_progress=False,
        )
        report = generate(
            run.weights_dir,
            out_dir=tmp_path / f"faces_{share:g}",
            samples=4,
            evaluate=True,
            device="cpu",
            show_progress=False,
        ).fidelity
        assert report["random_draws"]["of"] == 20
        assert set(report["sharpness"]) >= {"cvae", "pixel_mean", "crops", "draws"}
        cosine[share] = report["random_draws"]["mean_cosine_to_own"]
    print(f"mean cosine of the random draws to their centroids, by draw identity share: {cosine}")
    assert cosine[1.0] > cosine[0.0] + 0.01


def test_checkpoints_of_older_versions_still_load_as_unaligned_plain_decoders(trained):
    """A config written before --align and --decoder-base describes the model it was: unaligned crops, a plain decoder."""
    weights, _ = trained
    config = load_checkpoint(weights / CVAE_BEST_CHECKPOINT)["config"]
    assert config["alignment"] == "dlib5" and config["decoder_base"] == "median"
    older = {
        key: value
        for key, value in config.items()
        if key
        not in (
            "alignment",
            "align_padding",
            "face_mask",
            "decoder_base",
            "detail_weight",
            "draw_identity",
            "identity_jitter",
            "identity_blur",
            "adversarial_weight",
            "free_bits",
            "identity_views",
            "anchor_blur",
            "base_crops",
        )
    }
    restored = CVAEConfig.from_dict(older)
    assert restored.alignment == "none" and restored.decoder_base == "none" and restored.draw_identity == 0.0
    assert restored.face_mask == "none" and restored.detail_weight == 0.0 and restored.identity_blur == 0.0
    assert restored.adversarial_weight == 0.0  # no discriminator: none is needed to load or resume it
    assert restored.free_bits == restored.identity_views == restored.anchor_blur == 0.0
    assert restored.base_crops == 0  # its base: every crop
    # one written before --face-mask but with aligned crops is an aligned, unmasked model
    assert CVAEConfig.from_dict({k: v for k, v in config.items() if k != "face_mask"}).face_mask == "none"


def test_a_loss_that_goes_nan_stops_training_with_one_line_and_no_checkpoint(tmp_path, johns_clusters, trained):
    """A run whose loss becomes nan (here: resumed from a checkpoint whose weights a fault made nan) ends with
    exit 1 and one line, writing no checkpoint of that epoch, instead of reporting it trained."""
    from click.testing import CliRunner

    from facepipe.cli import main

    full, _ = trained
    weights = tmp_path / "weights"
    shutil.copytree(full, weights)
    last = weights / cvae_checkpoint_name(TRAINING["epochs"])
    checkpoint = torch.load(last, weights_only=True)
    for key, tensor in checkpoint["model"].items():
        if tensor.is_floating_point() and key != "base_logits":  # the base is set from the crops again
            tensor.fill_(float("nan"))
    torch.save(checkpoint, last)
    best = (weights / CVAE_BEST_CHECKPOINT).read_bytes()
    options = {
        "--image-size": 32,
        "--latent-dim": 16,
        "--base-channels": 16,
        "--batch-size": 8,
        "--seed": 3,
        "--identity-weight": 0,
        "--epochs": TRAINING["epochs"] + 1,
    }
    result = CliRunner().invoke(
        main,
        [
            "train-cvae",
            str(johns_clusters),
            "-o",
            str(weights),
            "--resume",
            "-q",
            *[str(part) for option in options.items() for part in option],
        ],
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert f"training diverged in epoch {TRAINING['epochs'] + 1}: train loss is nan" in result.output
    assert not (weights / cvae_checkpoint_name(TRAINING["epochs"] + 1)).exists()
    assert (weights / CVAE_BEST_CHECKPOINT).read_bytes() == best


# Waits until another process holds the weights folder, then runs train-cvae into it (torch imported first,
# so that it asks while the training goes on).
REFUSED_TRAINING = """
import sys, time
from pathlib import Path
import facepipe.cvae
from facepipe.cli import main
from facepipe.formats import LOCK_FILE
results, weights = sys.argv[1:3]
print("ready", flush=True)
lock, deadline = Path(weights) / LOCK_FILE, time.monotonic() + 60
while not (lock.is_file() and lock.stat().st_size) and time.monotonic() < deadline:
    time.sleep(0.005)
sys.argv = ["facepipe", "train-cvae", results, "-o", weights, "-q"]
main()
"""


def test_a_command_refused_during_training_changes_no_weight(tmp_path, johns_clusters, trained):
    """Same inputs, same bytes: a second command refused against the folder while it trains (the odd one of
    ten runs in issue 28) leaves every epoch's weights as those of a training without it."""
    import subprocess
    import sys

    full, _ = trained
    again = tmp_path / "weights"
    child = subprocess.Popen(
        [sys.executable, "-c", REFUSED_TRAINING, str(johns_clusters), str(again)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        train_cvae(
            johns_clusters,
            TrainSettings(keep_last=TRAINING["epochs"], **TRAINING),
            weights_dir=again,
            show_progress=False,
        )
        _, refused = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 1 and "is in use by another facepipe command" in refused, refused
    for epoch in range(1, TRAINING["epochs"] + 1):
        expected = load_checkpoint(full / cvae_checkpoint_name(epoch))["model"]
        trained_again = load_checkpoint(again / cvae_checkpoint_name(epoch))["model"]
        assert all(torch.equal(trained_again[key], tensor) for key, tensor in expected.items()), epoch


def test_a_training_beside_busy_cpus_ends_with_the_same_weights(tmp_path, johns_clusters, trained):
    """Same inputs, same bytes under load (issue 28): an epoch trained while processes keep every CPU busy
    ends with the weights of the epoch trained without them."""
    import subprocess
    import sys

    from facepipe.common import usable_cpus

    full, _ = trained
    busy = tmp_path / "weights"
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(usable_cpus() + 1)]
    try:
        train_cvae(johns_clusters, TrainSettings(**dict(TRAINING, epochs=1)), weights_dir=busy, show_progress=False)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    expected = load_checkpoint(full / cvae_checkpoint_name(1))["model"]
    for key, tensor in load_checkpoint(busy / cvae_checkpoint_name(1))["model"].items():
        assert torch.equal(tensor, expected[key]), key


@pytest.mark.fast
def test_reproducible_torch_trains_on_every_usable_cpu_and_restores_the_thread_count():
    """Inside the block the thread count is the CPUs this process may use, whatever it was set to before (a
    count that load or a caller changed would sum gradients in another order); after it, the caller's again."""
    from facepipe.common import reproducible_torch, usable_cpus

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, usable_cpus() - 1) if usable_cpus() > 1 else 2)
    caller = torch.get_num_threads()
    try:
        with reproducible_torch():
            assert torch.get_num_threads() == usable_cpus()
        assert torch.get_num_threads() == caller
    finally:
        torch.set_num_threads(threads)


def test_the_face_is_sharper_than_the_pixel_mean_and_the_draws_differ_as_the_person(
    tmp_path, johns_clusters, johns_embeddings
):
    """train-cvae's defaults on real crops (64 px; fewer epochs and a smaller batch than the defaults): the CVAE
    face is sharper than the pixel mean of the same (masked, aligned) crops, the random draws differ from each
    other in more than brightness and contrast, and every face and draw is still its person by dlib; the sheet
    shows them all at the model's size."""
    from PIL import Image

    from facepipe.formats import GENERATED_SHEET_PNG
    from facepipe.generate import generate

    run = train_cvae(
        johns_clusters,
        TrainSettings(image_size=64, epochs=15, batch_size=8),
        weights_dir=tmp_path / "weights",
        show_progress=False,
    )
    report = generate(run.weights_dir, out_dir=tmp_path / "faces", samples=4, device="cpu", show_progress=False)
    fidelity = report.fidelity
    print(report.line())
    sharpness, diversity = fidelity["sharpness"], fidelity["draw_diversity"]
    assert sharpness["cvae_relative"] > sharpness["pixel_mean_relative"]
    assert all(row["cvae_sharpness"] > row["pixel_mean_sharpness"] for row in fidelity["per_cluster"])
    assert diversity["standardised_difference_relative"] > 0.1
    assert all(row["draws_standardised_difference"] > 0.05 for row in fidelity["per_cluster"])
    assert fidelity["cvae"]["correct"] == fidelity["clusters_evaluated"] == 5
    assert fidelity["random_draws"]["correct"] == fidelity["random_draws"]["of"] == 20
    assert fidelity["realism"]["crops_count"] == len(read_training_inputs(johns_clusters).names)
    assert Image.open(tmp_path / "faces" / GENERATED_SHEET_PNG).size[0] >= 6 * 96


@pytest.mark.fast
def test_the_identity_terms_blur_keeps_coarse_shapes_and_stops_a_fine_pattern_and_its_gradient():
    """gaussian_blurred (what the identity term sees of a face) keeps a flat image and a coarse ramp, removes a
    pixel checkerboard (the cross-hatch an unblurred identity gradient wrote), and a loss behind it cannot push
    that checkerboard into the faces (its gradient through the blur is about 0 inside the border)."""
    import torch

    from facepipe.cvae.model import gaussian_blurred

    side = torch.arange(32, dtype=torch.float32)
    ramp = (side[None, :] / 31).expand(32, 32)[None, None].repeat(2, 3, 1, 1)
    checkerboard = ((side[:, None] + side[None, :]) % 2)[None, None].repeat(2, 3, 1, 1)
    flat = torch.full_like(ramp, 0.3)
    assert torch.equal(gaussian_blurred(ramp, 0.0), ramp)
    assert torch.allclose(gaussian_blurred(flat, 1.0), flat, atol=1e-6)
    assert (gaussian_blurred(ramp, 1.0) - ramp)[..., 4:-4].abs().max() < 1e-4
    assert gaussian_blurred(checkerboard - 0.5, 1.0).abs().max() < 0.01
    faces = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    (gaussian_blurred(faces, 1.0) * (checkerboard - 0.5)).sum().backward()
    assert faces.grad[..., 4:-4, 4:-4].abs().max() < 0.01  # inside the reflected border


@pytest.mark.fast
def test_face_measures_tell_blur_brightness_and_distribution_apart():
    """The measures of fidelity.json on synthetic images: a blurred image scores less sharp, a brighter and
    lower-contrast copy differs in pixels but not once standardised, and KID is about 0 for two samples of one
    distribution and clearly above it for a shifted one."""
    import cv2
    import numpy as np

    from facepipe.face_measures import kernel_distance, laplacian_sharpness, pairwise_difference

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    blurred = cv2.GaussianBlur(image, (0, 0), 1.5)
    sharpness = laplacian_sharpness(np.stack([image, blurred]))
    assert sharpness[1] < 0.2 * sharpness[0]
    dimmer = (image * 0.5 + 40).astype(np.uint8)
    assert pairwise_difference(np.stack([image, dimmer])) > 0.1
    assert pairwise_difference(np.stack([image, dimmer]), standardise=True) < 0.02
    assert (
        pairwise_difference(np.stack([image, rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)]), standardise=True)
        > 0.5
    )
    same = [rng.normal(0, 1, (200, 16)) for _ in range(2)]
    shifted = kernel_distance(same[0] + 1.0, same[1])
    print(f"KID, same distribution {kernel_distance(*same):.4f}, shifted {shifted:.4f}")
    assert abs(kernel_distance(*same)) < 0.1 * shifted


def test_the_patch_discriminator_learns_that_real_crops_are_sharp_and_pushes_a_blurred_face_to_detail(
    johns_clusters,
):
    """The adversarial term on real crops (dlib_johns, aligned and masked at 64 px as train-cvae makes them):
    trained with its hinge loss on some crops against the same crops blurred (what a VAE's mean-seeking decoder
    draws), the patch discriminator scores other, unseen crops above their blurred copies, and the generator's
    part of the term, descended in small steps on a blurred face, gives it back detail (its Laplacian sharpness
    grows): the sharpness comes from the objective, not from a filter."""
    import numpy as np

    from facepipe.crops import load_crops, masked_faces
    from facepipe.cvae import crop_aligner
    from facepipe.cvae.model import build_discriminator, gaussian_blurred, hinge_losses
    from facepipe.face_measures import laplacian_sharpness

    inputs = read_training_inputs(johns_clusters)
    config = CVAEConfig(clusters=sorted(int(c) for c in set(inputs.clusters)))
    crops = load_crops(inputs.names, inputs.crops_dir, 64, False, crop_aligner(config, inputs.crops_dir, None))
    crops = masked_faces(crops, np.asarray(inputs.clusters), sorted(set(inputs.clusters)), config.align_padding)
    images = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    seen, unseen = images[::2], images[1::2]
    torch.manual_seed(0)
    discriminator = build_discriminator(config)
    optimizer = torch.optim.Adam(discriminator.parameters(), 1e-3, betas=(0.5, 0.9))
    for _ in range(60):
        own, _ = hinge_losses(discriminator, seen, gaussian_blurred(seen, 1.0))
        optimizer.zero_grad()
        own.backward()
        optimizer.step()
    discriminator.eval()
    blurred = gaussian_blurred(unseen, 1.0)
    with torch.no_grad():
        real, fake = discriminator(unseen).mean(dim=(1, 2, 3)), discriminator(blurred).mean(dim=(1, 2, 3))
    print(f"mean score of unseen crops {real.mean():.2f}, of their blurred copies {fake.mean():.2f}")
    assert (real > fake).float().mean() > 0.9
    faces = blurred.clone().requires_grad_(True)
    for _ in range(20):
        _, generator = hinge_losses(discriminator, unseen, faces)
        (gradient,) = torch.autograd.grad(generator, faces)
        with torch.no_grad():
            faces -= 0.02 * gradient / gradient.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
            faces.clamp_(0, 1)

    def sharpness(batch):
        return laplacian_sharpness((batch.detach().permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8))

    before, after = sharpness(blurred), sharpness(faces)
    print(
        f"sharpness of the blurred faces {before.mean():.1f} -> {after.mean():.1f} (crops {sharpness(unseen).mean():.1f})"
    )
    assert (after > before).all()


def _johns_faces_as_trained(johns_clusters):
    """The johns crops aligned and masked at 64 px as train-cvae makes them: (images (N, 3, 64, 64) in [0, 1],
    condition indices, the config, the inputs)."""
    import numpy as np

    from facepipe.crops import load_crops, masked_faces
    from facepipe.cvae import crop_aligner

    inputs = read_training_inputs(johns_clusters)
    clusters = sorted(int(c) for c in set(inputs.clusters))
    config = CVAEConfig(clusters=clusters)
    crops = load_crops(inputs.names, inputs.crops_dir, 64, False, crop_aligner(config, inputs.crops_dir, None))
    conditions = np.array([clusters.index(int(c)) for c in inputs.clusters])
    crops = masked_faces(crops, conditions, range(len(clusters)), config.align_padding)
    return torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0, torch.from_numpy(conditions), config, inputs


def test_the_base_is_the_median_of_an_odd_number_of_crops_nearest_the_centroid(johns_clusters, johns_embeddings):
    """--base-crops on real crops (dlib_johns, 11 photos a person, aligned and masked at 64 px): each person's base is
    made of an odd number, at most base_crops, of their crops, those dlib puts nearest the person's centroid; their
    per-pixel median keeps more of the crops' detail (Laplacian sharpness) than the median of all 11."""
    import numpy as np

    from facepipe.crops import cluster_pixel_means
    from facepipe.face_measures import laplacian_sharpness
    from facepipe.formats import read_embeddings
    from facepipe.identity import central_members, cluster_centroids
    from facepipe.models import unit_rows

    images, conditions, config, inputs = _johns_faces_as_trained(johns_clusters)
    conditions = conditions.numpy()
    embeddings = read_embeddings(johns_embeddings)
    people = range(len(config.clusters))
    sizes = np.bincount(conditions)
    for count in (0, 1, 6, 7, 100):
        chosen = central_members(embeddings, inputs.names, conditions, count)
        kept = np.bincount(conditions[chosen], minlength=len(sizes))
        wanted = sizes if count == 0 else np.minimum(count, sizes) - (1 - np.minimum(count, sizes) % 2)
        assert (kept == wanted).all(), (count, kept, wanted)
    chosen = central_members(embeddings, inputs.names, conditions, 7)
    _, centroids = cluster_centroids(embeddings, inputs.names, conditions)
    row_of = {name: row for row, name in enumerate(embeddings.names)}
    cosine = (unit_rows(embeddings.vectors[[row_of[n] for n in inputs.names]]) * centroids[conditions]).sum(axis=1)
    is_chosen = np.isin(np.arange(len(conditions)), chosen)
    for person in people:
        mine = conditions == person
        assert cosine[mine & is_chosen].min() >= cosine[mine & ~is_chosen].max()
    crops = (images.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
    every, central = (
        laplacian_sharpness(
            (cluster_pixel_means(crops[rows], conditions[rows], people, median=True) + 0.5).astype(np.uint8)
        )
        for rows in (np.arange(len(conditions)), chosen)
    )
    print(f"sharpness of the medians of all crops {every.round()}, of the 7 nearest the centroid {central.round()}")
    assert (central > every).all()


def test_the_identity_terms_degraded_views_are_worse_photos_of_the_same_person(johns_clusters, johns_embeddings):
    """--identity-views on real crops (dlib_johns, aligned and masked at 64 px): the views the identity term sees in
    training are blurred (less Laplacian sharpness) and noisy, differ from draw to draw, repeat for the same
    generator seed, are the faces themselves at strength 0, and dlib still finds every view of a crop nearest
    its own person's centroid, so the term pulls towards an identity that survives a worse photo."""
    import numpy as np

    from facepipe.cvae.model import degraded_views
    from facepipe.face_measures import laplacian_sharpness
    from facepipe.formats import read_embeddings
    from facepipe.identity import build_identity_term

    images, conditions, config, inputs = _johns_faces_as_trained(johns_clusters)
    means = np.stack([images[conditions == c].mean(dim=0).permute(1, 2, 0).numpy() for c in range(5)])
    term = build_identity_term(
        read_embeddings(johns_embeddings),
        johns_embeddings,
        inputs.crops_dir,
        inputs.names,
        conditions.numpy(),
        (means * 255).astype(np.uint8),
        "cpu",
        config.align_padding,
    )

    def views(seed):
        return degraded_views(images, torch.Generator().manual_seed(seed), 1.0, 1.0)

    def sharpness(batch):
        return laplacian_sharpness((batch.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8))

    assert torch.equal(degraded_views(images, torch.Generator().manual_seed(0), 0.0, 0.0), images)
    first, again, other = views(0), views(0), views(1)
    assert torch.equal(first, again) and not torch.equal(first, other)
    print(
        f"sharpness of the crops {sharpness(images).mean():.0f}, of their degraded views {sharpness(first).mean():.0f}"
    )
    assert sharpness(first).mean() < sharpness(images).mean()
    with torch.no_grad():
        distances = torch.stack(
            [term(first, torch.full_like(conditions, cluster)) for cluster in range(len(config.clusters))], dim=1
        )
    assert torch.equal(distances.argmin(dim=1), conditions)


def test_the_blurred_mean_anchor_leaves_a_crops_detail_free_and_holds_its_coarse_face(johns_clusters):
    """--anchor-blur on real crops (dlib_johns, aligned and masked at 64 px): compared blurred by 2 px, a face that
    is its person's pixel mean plus one crop's fine detail (the crop less its blur: what a mean lacks) costs a
    small part of what it costs unblurred, while that mean made 5% brighter costs as much blurred as unblurred.
    So the blurred anchor holds the face's coarse shape and colour to the mean, not its detail."""
    from facepipe.cvae.model import cvae_loss, gaussian_blurred

    images, conditions, _, _ = _johns_faces_as_trained(johns_clusters)
    means = torch.stack([images[conditions == c].mean(dim=0) for c in range(5)])[conditions]
    detailed = means + images - gaussian_blurred(images, 2.0)
    brighter = means + 0.05

    def anchor(faces, sigma):
        zeros = torch.zeros(len(faces), 4)
        parts = cvae_loss(faces, faces, zeros, zeros, faces, means, None, None, 0.1, 1.0, 0.0, 0.0, anchor_blur=sigma)
        return float(parts[3])

    print(
        f"anchor, blurred by 2 px / unblurred: detail {anchor(detailed, 2.0):.2f} / {anchor(detailed, 0.0):.2f}, "
        f"5% brighter {anchor(brighter, 2.0):.2f} / {anchor(brighter, 0.0):.2f}"
    )
    assert anchor(detailed, 2.0) < 0.2 * anchor(detailed, 0.0)
    assert anchor(brighter, 2.0) > 0.95 * anchor(brighter, 0.0)


def test_free_bits_leave_the_kl_of_a_dimension_below_the_floor_untrained(johns_clusters):
    """--free-bits on real crops (dlib_johns at 64 px through a fresh CVAE): the KL the loss reports is the true
    one whatever the floor; with the floor above every dimension's KL the encoder's gradient is that of the
    reconstruction alone (beta 0), and with no floor the KL pulls on it."""
    from facepipe.cvae.model import cvae_loss

    images, conditions, config, _ = _johns_faces_as_trained(johns_clusters)
    images, conditions = images[:16], conditions[:16]
    torch.manual_seed(0)
    model = build_model(config)
    noise = torch.randn(len(images), config.latent_dim, generator=torch.Generator().manual_seed(1))

    def gradient_and_kl(beta, free_bits):
        model.zero_grad()
        reconstruction, mu, logvar = model(images, conditions, noise)
        centre = model.decode(torch.zeros_like(mu), conditions)
        parts = cvae_loss(
            reconstruction, images, mu, logvar, centre, images, None, None, beta, 0.0, 0.0, 0.0, free_bits=free_bits
        )
        parts[0].backward()
        return model.to_mu.weight.grad.clone(), float(parts[2].detach())

    plain, kl = gradient_and_kl(0.0, 0.0)
    floored, floored_kl = gradient_and_kl(1.0, 1e3)
    pulled, pulled_kl = gradient_and_kl(1.0, 0.0)
    assert kl == floored_kl == pulled_kl > 0
    assert torch.allclose(floored, plain, atol=1e-6)
    assert not torch.allclose(pulled, plain, atol=1e-3)


def test_the_median_base_is_sharper_than_the_mean_and_is_where_the_decoder_starts(johns_clusters):
    """--decoder-base median on real crops (dlib_johns, aligned and masked at 64 px): each person's per-pixel median
    keeps more of the crops' detail (Laplacian sharpness) than their mean, and a CVAE built on it decodes, before
    any training, that median for every code."""
    import numpy as np

    from facepipe.crops import cluster_pixel_means
    from facepipe.face_measures import laplacian_sharpness

    images, conditions, config, _ = _johns_faces_as_trained(johns_clusters)
    crops = (images.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
    people = range(len(config.clusters))
    means, medians = (
        cluster_pixel_means(crops, conditions.numpy(), people, median=median) for median in (False, True)
    )
    sharpness = {
        name: laplacian_sharpness((values + 0.5).astype(np.uint8))
        for name, values in (("mean", means), ("median", medians))
    }
    print(f"sharpness of the pixel means {sharpness['mean'].round()}, of the medians {sharpness['median'].round()}")
    assert (sharpness["median"] > sharpness["mean"]).all()
    model = build_model(CVAEConfig(image_size=64, clusters=config.clusters, decoder_base="median")).eval()
    model.set_base(torch.from_numpy(medians / 255.0).float().permute(0, 3, 1, 2))
    labels = torch.tensor(list(people))
    with torch.no_grad():
        decoded = model.decode(torch.randn(len(labels), model.config.latent_dim), labels)
    assert np.abs(decoded.permute(0, 2, 3, 1).numpy() * 255 - medians).max() < 1.0
