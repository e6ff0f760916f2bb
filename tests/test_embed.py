"""embed: dlib verification accuracy on LFW, the PyTorch port against dlib, the VGGFace2 stage path,
file round-trips, resume (also after a kill), bad crops, model mismatch."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers import cosines

from facepipe.cli import EXIT_PARTIAL, main
from facepipe.common import FacepipeError, file_sha256
from facepipe.detect import DetectorParams, detect
from facepipe.embed import embed
from facepipe.formats import (
    DETECTIONS_CSV,
    Embeddings,
    embed_checkpoint_path,
    embed_errors_path,
    read_embeddings,
    read_embeddings_checkpoint,
    sidecar_path,
    write_embeddings,
)
from facepipe.images import load_image_rgb
from facepipe.labels import attach_labels


def verification_pairs(identities: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All same-identity pairs, and as many different-identity pairs drawn at random (seeded)."""
    same = [(i, j) for i, j in itertools.combinations(range(len(identities)), 2) if identities[i] == identities[j]]
    rng = np.random.default_rng(seed)
    different: set[tuple[int, int]] = set()
    while len(different) < len(same):
        i, j = sorted(rng.choice(len(identities), size=2, replace=False))
        if identities[i] != identities[j]:
            different.add((int(i), int(j)))
    pairs = np.array(same + sorted(different))
    return pairs, np.arange(len(pairs)) < len(same)


def best_threshold(distances: np.ndarray, is_same: np.ndarray) -> float:
    """The distance threshold (pairs closer than it are called 'same') with the highest accuracy."""
    order = np.argsort(distances)
    sorted_distances, sorted_same = distances[order], is_same[order]
    same_below = np.cumsum(sorted_same)
    different_above = (~is_same).sum() - np.cumsum(~sorted_same)
    best = int(np.argmax(same_below + different_above))
    return float((sorted_distances[best] + sorted_distances[min(best + 1, len(order) - 1)]) / 2)


def cross_validated_accuracy(distances: np.ndarray, is_same: np.ndarray, folds: int = 10, seed: int = 0) -> float:
    """LFW protocol: each fold is judged with the threshold that is best on the other nine."""
    order = np.random.default_rng(seed).permutation(len(distances))
    correct = 0
    for fold in np.array_split(order, folds):
        train = np.setdiff1d(order, fold)
        threshold = best_threshold(distances[train], is_same[train])
        correct += int(((distances[fold] < threshold) == is_same[fold]).sum())
    return correct / len(distances)


def verification_accuracy(embeddings: Embeddings, identities) -> tuple[float, float, int]:
    """(10-fold cross-validated accuracy, accuracy at dlib's threshold 0.6, number of pairs)."""
    pairs, is_same = verification_pairs(np.asarray(identities))
    vectors = embeddings.vectors
    distances = np.linalg.norm(vectors[pairs[:, 0]] - vectors[pairs[:, 1]], axis=1)
    return cross_validated_accuracy(distances, is_same), float(((distances < 0.6) == is_same).mean()), len(pairs)


def test_dlib_lfw_verification_accuracy(lfw_dlib_embeddings, lfw_crops, data_dir):
    """The accuracies printed here are the ones in docs/commands.md."""
    embeddings = read_embeddings(lfw_dlib_embeddings)
    assert embeddings.model == "dlib-resnet128" and embeddings.dim == 128
    assert Path(embeddings.meta["crops_dir"]) == lfw_crops
    assert embeddings.meta["face_margin"] == 0.2  # read from detect.json beside the crops
    detections = pd.read_csv(lfw_crops / DETECTIONS_CSV)
    assert embeddings.names == detections["crop"].tolist()
    assert not embed_errors_path(lfw_dlib_embeddings).read_text().strip().split("\n")[1:]
    labels = attach_labels(embeddings.names, data_dir("lfw") / "manifest.csv", lfw_crops)
    assert labels["matched"].all()
    accuracy_cv, accuracy_06, pairs = verification_accuracy(embeddings, labels["identity"])
    print(
        f"dlib-resnet128 LFW verification: {len(embeddings.names)} crops, {pairs} pairs (half same-person): "
        f"accuracy {accuracy_cv:.4f} with a 10-fold cross-validated threshold, {accuracy_06:.4f} at 0.6"
    )
    assert accuracy_cv >= 0.95
    assert accuracy_06 >= 0.95


def test_ready_face_chips_without_detect_json(data_dir, tmp_path):
    """A folder of 150x150 dlib chips (no detect.json): the face is found by dlib's HOG detector."""
    johns = data_dir("dlib_johns")
    output = tmp_path / "johns.csv"
    summary = embed(johns / "images", output, model="dlib-resnet128", show_progress=False)
    embeddings = read_embeddings(output)
    assert summary.embedded == summary.crops == len(embeddings.names) == 55
    assert embeddings.meta["face_margin"] is None and "HOG" in embeddings.meta["preprocessing"]
    assert all(name.count("/") == 1 for name in embeddings.names)  # person/file.jpg, relative to the folder
    labels = attach_labels(embeddings.names, johns / "manifest.csv", johns / "images")
    accuracy_cv, accuracy_06, pairs = verification_accuracy(embeddings, labels["identity"])
    print(
        f"dlib-resnet128 on dlib_johns chips: {pairs} pairs, accuracy {accuracy_cv:.4f} (CV), {accuracy_06:.4f} at 0.6"
    )
    assert accuracy_06 >= 0.9


def test_whole_crop_keeps_the_scalp_and_is_recorded(data_dir, tmp_path):
    """--dlib-crop whole embeds the whole squared crop (no landmark chip); the sidecar says so, and reusing
    an output made with the other crop is refused."""
    images = sorted((data_dir("dlib_johns") / "images").rglob("*.jpg"))[:6]
    aligned, whole = tmp_path / "aligned.npz", tmp_path / "whole.npz"
    embed(images, aligned, model="dlib-resnet128", show_progress=False)
    embed(images, whole, model="dlib-resnet128", dlib_crop="whole", show_progress=False)
    a, w = read_embeddings(aligned), read_embeddings(whole)
    assert a.meta["crop"] == "aligned" and w.meta["crop"] == "whole"
    assert "whole crop" in w.meta["preprocessing"] and "get_face_chip" not in w.meta["preprocessing"]
    similarity = cosines(a.vectors, w.vectors)
    assert (similarity < 0.999).all() and (similarity > 0.5).all()  # another view of the same face
    with pytest.raises(FacepipeError):
        embed(images, whole, model="dlib-resnet128", show_progress=False)
    with pytest.raises(FacepipeError, match="dlib-resnet128 only"):
        embed(images, tmp_path / "v.npz", model="vggface2-resnet50", dlib_crop="whole", show_progress=False)


def test_larger_chip_padding_is_another_view_and_is_recorded(data_dir, tmp_path):
    """--dlib-padding 0.5 keeps more of the head in the aligned chip: other vectors of the same faces, the
    padding in the sidecar, an output made with another padding refused, nonsense paddings refused."""
    images = sorted((data_dir("dlib_johns") / "images").rglob("*.jpg"))[:6]
    default, wide = tmp_path / "default.npz", tmp_path / "wide.npz"
    embed(images, default, model="dlib-resnet128", show_progress=False)
    embed(images, wide, model="dlib-resnet128", dlib_padding=0.5, show_progress=False)
    d, w = read_embeddings(default), read_embeddings(wide)
    assert d.meta["chip_padding"] == 0.25 and w.meta["chip_padding"] == 0.5
    assert "padding 0.5" in w.meta["preprocessing"]
    similarity = cosines(d.vectors, w.vectors)
    assert (similarity < 0.999).all() and (similarity > 0.5).all()
    with pytest.raises(FacepipeError, match="settings"):
        embed(images, wide, model="dlib-resnet128", show_progress=False)
    with pytest.raises(FacepipeError, match="from 0 to 2"):
        embed(images, tmp_path / "x.npz", model="dlib-resnet128", dlib_padding=3.0, show_progress=False)
    with pytest.raises(FacepipeError, match="aligned crop only"):
        embed(
            images,
            tmp_path / "y.npz",
            model="dlib-resnet128",
            dlib_crop="whole",
            dlib_padding=0.5,
            show_progress=False,
        )
    with pytest.raises(FacepipeError, match="dlib-resnet128 only"):
        embed(images, tmp_path / "v.npz", model="vggface2-resnet50", dlib_padding=0.5, show_progress=False)


def test_mirror_gives_a_face_and_its_mirror_image_one_vector_and_is_recorded(data_dir, tmp_path):
    """dlib-resnet128 averages each chip's vector with its mirror image's by default: a photo and its mirror
    image then get nearly one vector, much nearer than dlib's single views make them; --no-dlib-mirror gives
    the single view. The sidecar records it, new faces are embedded the same way (sidecars from before it:
    single views), and an output made the other way is refused."""
    import cv2

    from facepipe.models.registry import embedder_settings

    images = sorted((data_dir("dlib_johns") / "images").rglob("*.jpg"))[:6]
    mirrored = []
    for image in images:
        mirrored.append(tmp_path / f"mirrored_{image.name}")
        cv2.imwrite(str(mirrored[-1]), cv2.flip(cv2.imread(str(image)), 1))
    both, single = tmp_path / "both.npz", tmp_path / "single.npz"
    embed([*images, *mirrored], both, model="dlib-resnet128", show_progress=False)
    embed([*images, *mirrored], single, model="dlib-resnet128", dlib_mirror=False, show_progress=False)
    b, s = read_embeddings(both), read_embeddings(single)
    count = len(images)
    gap_both = 1 - cosines(b.vectors[:count], b.vectors[count:])
    gap_single = 1 - cosines(s.vectors[:count], s.vectors[count:])
    assert (gap_both < 0.5 * gap_single).all(), (gap_both, gap_single)
    assert (cosines(b.vectors, s.vectors) > 0.9).all() and (cosines(b.vectors, s.vectors) < 0.9999).all()
    assert b.meta["mirror"] is True and s.meta["mirror"] is False and "mirror image" in b.meta["preprocessing"]
    assert embedder_settings(b.meta)["dlib_mirror"] is True and embedder_settings(s.meta)["dlib_mirror"] is False
    assert embedder_settings({k: v for k, v in b.meta.items() if k != "mirror"})["dlib_mirror"] is False
    with pytest.raises(FacepipeError, match="settings"):
        embed([*images, *mirrored], single, model="dlib-resnet128", show_progress=False)
    with pytest.raises(FacepipeError, match="dlib-resnet128 only"):
        embed(images, tmp_path / "v.npz", model="vggface2-resnet50", dlib_mirror=False, show_progress=False)


def test_pytorch_port_matches_dlib(lfw_crops):
    """The network runs in PyTorch with the .dat weights; dlib's own implementation must agree."""
    import dlib

    from facepipe.models.dlib_resnet import RESNET_FILE, DlibResNet128Embedder, model_file

    embedder = DlibResNet128Embedder(face_margin=0.2, device="cpu")
    crops = sorted(lfw_crops.glob("*.jpg"))[::150][:8]
    chips = [embedder.prepare(load_image_rgb(path)) for path in crops]
    ours = embedder.embed_prepared(chips)
    reference = np.array(dlib.face_recognition_model_v1(str(model_file(RESNET_FILE))).compute_face_descriptor(chips))
    error = np.abs(ours - reference).max(axis=1) / np.abs(reference).max(axis=1)
    print(f"PyTorch port vs dlib: max relative error {error.max():.2e} over {len(chips)} chips")
    assert error.max() < 1e-4


def test_differentiable_alignment_matches_dlibs_chip(lfw_crops):
    """chip_grid + embed_aligned (what train-cvae's identity term runs) align a crop as dlib's get_face_chip
    does, for the aligned and the whole crop, also from a 64 px copy (a generated face's size), and pass
    gradients back to the pixels."""
    import torch
    import torch.nn.functional as F

    from facepipe.models.dlib_resnet import DlibResNet128Embedder

    crops = [load_image_rgb(path) for path in sorted(lfw_crops.glob("*.jpg"))[::200][:6]]
    pixels = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
    small = F.interpolate(pixels, size=64, mode="area").requires_grad_(True)
    for crop in ("aligned", "whole"):
        embedder = DlibResNet128Embedder(face_margin=0.2, device="cpu", crop=crop)
        reference = embedder.embed(crops)
        grids = torch.from_numpy(np.stack([embedder.chip_grid(rgb) for rgb in crops]))
        with torch.no_grad():
            full_size = embedder.embed_aligned(pixels, grids).numpy()
        from_small = embedder.embed_aligned(small, grids)
        agreement = cosines(full_size, reference).min(), cosines(from_small.detach().numpy(), reference).min()
        print(f"{crop}: cosine to dlib's chip >= {agreement[0]:.5f} (full size), {agreement[1]:.4f} (64 px)")
        assert agreement[0] > 0.9995 and agreement[1] > 0.98
        small.grad = None
        from_small.sum().backward()
        assert small.grad.abs().sum(dim=(1, 2, 3)).min() > 0


def test_aligned_faces_give_dlibs_chip_by_one_fixed_grid(lfw_crops):
    """A crop aligned by train-cvae (crops.align_face, padding 0.5) holds dlib's own chip as its centred square
    (identity.aligned_chip_grid): embedded through that grid it gives the crop's own embedding."""
    import torch

    from facepipe.crops import CropAligner
    from facepipe.identity import aligned_chip_grid
    from facepipe.models.dlib_resnet import CHIP_SIZE, DlibResNet128Embedder

    paths = sorted(lfw_crops.glob("*.jpg"))[::150][:8]
    crops = [load_image_rgb(path) for path in paths]
    embedder = DlibResNet128Embedder(face_margin=0.2, device="cpu")
    aligner = CropAligner(lfw_crops, padding=0.5)
    faces = np.stack([aligner(path.name, rgb, 224) for path, rgb in zip(paths, crops)])
    pixels = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255.0
    grid = torch.from_numpy(aligned_chip_grid(0.5, embedder.padding, CHIP_SIZE))
    with torch.no_grad():
        through_grid = embedder.embed_aligned(pixels, grid.expand(len(faces), -1, -1, -1)).numpy()
    agreement = cosines(through_grid, embedder.embed(crops))
    print(f"cosine to the crops' own embeddings: min {agreement.min():.5f}")
    assert agreement.min() > 0.999


def detect_some(data_dir, out: Path, people=("Colin_Powell", "Tony_Blair"), per_person=5) -> Path:
    photos = [
        p for person in people for p in sorted((data_dir("lfw") / "images" / person).glob("*.jpg"))[:per_person]
    ]
    detect(photos, out, DetectorParams(detector="haar", min_neighbors=5, largest_only=True), show_progress=False)
    return out


def test_csv_and_npz_hold_the_same_float32_values(data_dir, tmp_path):
    crops = detect_some(data_dir, tmp_path / "crops")
    embed(crops, tmp_path / "e.csv", model="dlib-resnet128", show_progress=False)
    embed(crops, tmp_path / "e.npz", model="dlib-resnet128", show_progress=False)
    from_csv, from_npz = read_embeddings(tmp_path / "e.csv"), read_embeddings(tmp_path / "e.npz")
    assert from_csv.names == from_npz.names == pd.read_csv(crops / DETECTIONS_CSV)["crop"].tolist()
    assert from_csv.vectors.dtype == from_npz.vectors.dtype == np.float32
    assert np.allclose(from_csv.vectors, from_npz.vectors, rtol=0, atol=1e-6)  # two runs of the network
    write_embeddings(tmp_path / "again.csv", from_npz)  # and an exact round trip through CSV
    assert np.array_equal(read_embeddings(tmp_path / "again.csv").vectors, from_npz.vectors)
    for path, meta in ((tmp_path / "e.csv", from_csv.meta), (tmp_path / "e.npz", from_npz.meta)):
        assert meta.pop("data_sha256") == file_sha256(path)  # each sidecar commits its own data file
    assert from_csv.meta == from_npz.meta


def test_rerun_skips_done_crops_and_force_redoes_them(data_dir, tmp_path):
    crops = detect_some(data_dir, tmp_path / "crops")
    output = tmp_path / "image_features.csv"
    first = embed(crops, output, model="dlib-resnet128", show_progress=False)
    assert first.embedded_now == first.crops == 10 and first.skipped == 0
    content = output.read_bytes()
    second = embed(crops, output, model="dlib-resnet128", show_progress=False)
    assert second.embedded_now == 0 and second.skipped == 10
    assert output.read_bytes() == content
    detect_some(data_dir, crops, people=("Colin_Powell", "Tony_Blair", "Venus_Williams"))  # 5 more crops
    third = embed(crops, output, model="dlib-resnet128", show_progress=False)
    assert third.crops == 15 and third.embedded_now == 5 and third.skipped == 10
    assert len(read_embeddings(output).names) == 15
    forced = embed(crops, output, model="dlib-resnet128", force=True, show_progress=False)
    assert forced.embedded_now == 15 and forced.skipped == 0


def test_killed_run_leaves_readable_files_and_resumes(lfw_crops, tmp_path):
    crop_list = tmp_path / "crops.txt"  # 40 crops, listed in a text file
    crop_list.write_text("\n".join(str(p) for p in sorted(lfw_crops.glob("*.jpg"))[:40]) + "\n")
    output = tmp_path / "image_features.csv"
    script = (
        "from facepipe.embed import embed; "
        f"embed({str(crop_list)!r}, {str(output)!r}, model='dlib-resnet128', batch_size=1, workers=1, "
        "checkpoint_seconds=0, show_progress=False)"
    )
    progress_file = embed_checkpoint_path(output)
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if progress_file.is_file() and len(read_embeddings_checkpoint(progress_file).names) >= 5:
                break
            time.sleep(0.01)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    partial = read_embeddings_checkpoint(progress_file)  # complete and consistent, whenever the kill came
    assert 5 <= len(partial.names) < 40 and not output.exists()
    rest = embed(crop_list, output, model="dlib-resnet128", show_progress=False)
    assert rest.skipped == len(partial.names) and rest.embedded == rest.crops == 40
    assert not progress_file.exists() and not list(tmp_path.glob(".*.tmp*"))
    final = read_embeddings(output)
    assert final.names[: len(partial.names)] == partial.names
    assert np.array_equal(final.vectors[: len(partial.names)], partial.vectors)


def test_bad_crops_are_recorded_and_the_run_goes_on(data_dir, tmp_path):
    good = sorted((data_dir("dlib_johns") / "images" / "John_Salley").glob("*.jpg"))[:3]
    crops = tmp_path / "crops"
    (crops / "sub").mkdir(parents=True)
    for path in good:
        shutil.copy(path, crops / "sub" / path.name)
    (crops / "truncated.jpg").write_bytes(good[0].read_bytes()[:400])
    (crops / "empty.jpg").write_bytes(b"")
    (crops / "notes.jpg").write_text("not a picture\n")
    output = tmp_path / "out" / "image_features.csv"
    result = CliRunner().invoke(main, ["embed", str(crops), "--model", "dlib-resnet128", "-o", str(output), "-q"])
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert "3 errors" in result.output
    errors = pd.read_csv(embed_errors_path(output))
    assert sorted(Path(p).name for p in errors["path"]) == ["empty.jpg", "notes.jpg", "truncated.jpg"]
    assert errors["reason"].str.len().min() > 5
    assert read_embeddings(output).names == [f"sub/{p.name}" for p in good]


def test_no_readable_crop_is_an_error(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(FacepipeError, match="none of the 1 crops"):
        embed(tmp_path, tmp_path / "out.csv", model="dlib-resnet128", show_progress=False)


@pytest.fixture(scope="module")
def vggface_fixture(fixtures_dir):
    return fixtures_dir("vggface_resnet50")


def test_vggface2_through_the_stage_matches_keras_vggface(vggface_fixture, tmp_path):
    output = tmp_path / "vgg.npz"
    summary = embed(
        vggface_fixture / "crops",
        output,
        model="vggface2-resnet50",
        weights=vggface_fixture / "vggface_resnet50_notop_random.h5",
        batch_size=8,
        show_progress=False,
    )
    assert summary.embedded == 24 and summary.dim == 2048
    ours = read_embeddings(output)
    reference = pd.read_csv(vggface_fixture / "reference_embeddings.csv")
    reference_by_name = dict(zip(reference["name"], reference.drop(columns="name").to_numpy(np.float64)))
    errors = [
        np.abs(vector - reference_by_name[name]).max() / np.abs(reference_by_name[name]).max()
        for name, vector in zip(ours.names, ours.vectors)
    ]
    print(f"vggface2-resnet50 through embed(): max relative error {max(errors):.2e} on {len(errors)} crops")
    assert max(errors) < 1e-4
    assert ours.meta["model"] == "vggface2-resnet50" and len(ours.meta["weights_sha256"]) == 64


def test_other_model_on_existing_output_needs_force(vggface_fixture, tmp_path):
    crops = sorted((vggface_fixture / "crops").glob("*.png"))[:4]
    output = tmp_path / "image_features.csv"
    embed(crops, output, model="dlib-resnet128", show_progress=False)
    before = output.read_bytes()
    vgg = dict(
        model="vggface2-resnet50", weights=vggface_fixture / "vggface_resnet50_notop_random.h5", show_progress=False
    )
    with pytest.raises(FacepipeError, match="dlib-resnet128 embeddings.*--force"):
        embed(crops, output, **vgg)
    assert output.read_bytes() == before
    embed(crops, output, force=True, **vgg)
    assert read_embeddings(output).dim == 2048
    assert json.loads(sidecar_path(output).read_text())["model"] == "vggface2-resnet50"


def test_output_without_sidecar_is_not_guessed(data_dir, tmp_path):
    crops = detect_some(data_dir, tmp_path / "crops", people=("Tony_Blair",), per_person=2)
    output = tmp_path / "image_features.csv"
    embed(crops, output, model="dlib-resnet128", show_progress=False)
    os.remove(sidecar_path(output))
    with pytest.raises(FacepipeError, match="no sidecar"):
        embed(crops, output, model="dlib-resnet128", show_progress=False)
