"""Stage 5: one aggregated face per cluster, decoded by the CVAE at z = 0, beside the pixel mean of its crops
(aligned as the CVAE's training crops were), and random draws of the cluster's faces.

With ``evaluate=True`` the aggregated faces and the draws are embedded with the model that made the clusters
and scored by identity fidelity (is the face nearest, by cosine, to its own cluster's centroid?); their
sharpness, the spread of the draws and a kernel distance to the crops are set beside the crops' own
(``face_measures``).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from facepipe import __version__
from facepipe.common import FacepipeError, progress, remove_own_temporaries, resolve_device
from facepipe.crops import CropAligner, cluster_pixel_means, load_crops, masked_faces, read_training_inputs
from facepipe.cvae import crop_aligner, find_checkpoint, load_cvae
from facepipe.face_measures import (
    kernel_distance,
    laplacian_sharpness,
    pairwise_cosine_distance,
    pairwise_difference,
    relative,
)
from facepipe.formats import (
    CENTROIDS_CSV,
    FIDELITY_JSON,
    GENERATE_RECORD_JSON,
    GENERATED_SHEET_PNG,
    Embeddings,
    generated_face_names,
    output_hashes,
    read_centroids,
    read_embeddings,
    write_json_atomic,
)
from facepipe.identity import at_crop_size, cluster_centroids, clustered_embeddings_path
from facepipe.images import load_image_rgb, save_image_atomic
from facepipe.locks import locks_output
from facepipe.models import unit_rows
from facepipe.owned import left_alone_phrase, recorded_outputs, refuse_changed, remove_recorded
from facepipe.settings import GenerateSettings

SHEET_SAMPLES = 4  # random draws shown per cluster on the sheet (all of them go to cluster_N_samples.png)
SHEET_CELL = 96  # smallest side of one face on the sheet


@dataclass
class GenerateSummary:
    """What a generate run wrote."""

    clusters: list[int]
    out_dir: Path
    sheet: Path
    fidelity: dict | None
    seconds: float
    left_alone: list[Path] = field(default_factory=list)  # outputs of an earlier call the user changed since

    def line(self) -> str:
        text = f"generate: {len(self.clusters)} cluster face(s) + pixel means -> {self.out_dir} (sheet {self.sheet.name})"
        if self.fidelity:
            cvae, mean = self.fidelity["cvae"], self.fidelity["pixel_mean"]
            text += (
                f"; fidelity CVAE {cvae['correct']}/{self.fidelity['clusters_evaluated']}, "
                f"pixel mean {mean['correct']}/{self.fidelity['clusters_evaluated']}"
            )
            draws = self.fidelity.get("random_draws")
            if draws:
                text += f", random draws {draws['correct']}/{draws['of']}"
            text += _measures_text(self.fidelity)
        return text + f"{left_alone_phrase(self.left_alone)} in {self.seconds:.1f}s"


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _measures_text(fidelity: dict) -> str:
    """``; sharpness / crops' CVAE a, pixel mean b; draw diversity / crops' c (standardised d)`` from fidelity.json."""
    sharpness, diversity = fidelity["sharpness"], fidelity["draw_diversity"]
    text = (
        f"; sharpness / crops' CVAE {_ratio(sharpness['cvae_relative'])}, "
        f"pixel mean {_ratio(sharpness['pixel_mean_relative'])}"
    )
    if fidelity.get("random_draws"):
        text += (
            f"; draw diversity / crops' {_ratio(diversity['pixel_difference_relative'])} "
            f"(standardised {_ratio(diversity['standardised_difference_relative'])})"
        )
    return text


def _to_uint8(images) -> np.ndarray:
    """(N, 3, S, S) float tensor in [0, 1] -> (N, S, S, 3) uint8."""
    return (images.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def decode_faces(
    model,
    config,
    clusters: Sequence[int],
    samples: int = 0,
    seed: int = 0,
    device: str = "cpu",
    temperature: float = 1.0,
):
    """Decode z = 0 for each cluster -> uint8 (n, S, S, 3), and ``samples`` draws z ~ N(0, temperature^2 I)
    per cluster.

    The draws of a cluster depend only on (seed, cluster), so one cluster alone gives the same faces as --all.
    """
    import torch

    index_of = {cluster: i for i, cluster in enumerate(config.clusters)}
    labels = torch.tensor([index_of[c] for c in clusters], dtype=torch.long, device=device)
    with torch.no_grad():
        faces = _to_uint8(model.decode(torch.zeros(len(clusters), config.latent_dim, device=device), labels))
        drawn = []
        for cluster, label in zip(clusters, labels):
            if samples <= 0:
                drawn.append(np.empty((0, config.image_size, config.image_size, 3), dtype=np.uint8))
                continue
            generator = torch.Generator().manual_seed(seed * 1_000_003 + cluster)
            z = temperature * torch.randn(samples, config.latent_dim, generator=generator).to(device)
            drawn.append(_to_uint8(model.decode(z, label.repeat(samples))))
    return faces, drawn


def pixel_means(
    names: Sequence[str],
    cluster_of: np.ndarray,
    clusters: Sequence[int],
    crops_dir: Path,
    size: int,
    show_progress: bool = True,
    aligner: CropAligner | None = None,
    face_mask: bool = False,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The pixel-wise mean of each cluster's crops at ``size`` (aligned by ``aligner``, if given, and over grey
    through each cluster's face mask with ``face_mask``: ``crops.masked_faces``) -> uint8 (n, size, size, 3), and
    each cluster's crops as they were averaged (uint8 (count, size, size, 3))."""
    wanted = np.isin(cluster_of, list(clusters))
    chosen = [name for name, keep in zip(names, wanted) if keep]
    images = load_crops(chosen, crops_dir, size, show_progress, aligner)
    chosen_clusters = cluster_of[wanted]
    if face_mask:
        images = masked_faces(images, chosen_clusters, clusters, aligner.padding)
    means = (cluster_pixel_means(images, chosen_clusters, clusters) + 0.5).astype(np.uint8)
    return means, [images[chosen_clusters == cluster] for cluster in clusters]


def contact_sheet(
    clusters: Sequence[int], counts: Sequence[int], means: np.ndarray, faces: np.ndarray, drawn: Sequence[np.ndarray]
) -> np.ndarray:
    """One image with a tile per cluster: caption, then pixel mean | CVAE z = 0 | up to 4 random draws."""
    import cv2
    from PIL import Image, ImageDraw

    cell = max(SHEET_CELL, faces.shape[1])
    shown_draws = min(SHEET_SAMPLES, max((len(d) for d in drawn), default=0))
    caption, gap = 14, 6
    tile_w, tile_h = cell * (2 + shown_draws) + gap, cell + caption + gap
    columns = max(1, min(len(clusters), round(math.sqrt(len(clusters) * tile_h / tile_w * 1.5)) or 1))
    rows = math.ceil(len(clusters) / columns)
    sheet = Image.new("RGB", (columns * tile_w + gap, rows * tile_h + gap + caption), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((gap, 2), "each tile: pixel mean | CVAE z=0 | random draws", fill=(0, 0, 0))

    def resized(rgb):
        return cv2.resize(rgb, (cell, cell), interpolation=cv2.INTER_CUBIC) if rgb.shape[0] != cell else rgb

    for position, (cluster, count) in enumerate(zip(clusters, counts)):
        left = gap + (position % columns) * tile_w
        top = gap + caption + (position // columns) * tile_h
        draw.text((left, top), f"cluster {cluster} ({count} crops)", fill=(0, 0, 0))
        row = [means[position], faces[position], *drawn[position][:shown_draws]]
        for slot, rgb in enumerate(row):
            sheet.paste(Image.fromarray(resized(rgb)), (left + slot * cell, top + caption))
    return np.asarray(sheet)


def saved_or_recomputed_centroids(inputs, embeddings) -> tuple[list[int], np.ndarray, str]:
    """The cluster stage's ``centroids.csv`` beside the cluster results (normalised to unit length) when it
    matches them, else centroids recomputed from the embeddings; returns (cluster ids, centroids, source)."""
    saved = inputs.cluster_results.parent / CENTROIDS_CSV
    if saved.is_file():
        centroids = read_centroids(saved).astype(np.float64)
        ids = sorted(int(c) for c in np.unique(inputs.clusters))
        if ids == list(range(len(centroids))) and centroids.shape[1] == embeddings.dim:
            unit = unit_rows(centroids)
            return ids, unit, f"{saved} (the cluster stage's centroids); nearest = highest cosine"
    ids, unit = cluster_centroids(embeddings, inputs.names, inputs.clusters)
    return (
        ids,
        unit,
        "recomputed: mean of each cluster's L2-normalised embeddings, normalised; nearest = highest cosine",
    )


def identity_fidelity(
    vectors: np.ndarray, own: Sequence[int], centroid_ids: Sequence[int], centroids: np.ndarray
) -> dict:
    """For each face vector: its nearest centroid by cosine; the share of faces nearest their own cluster's."""
    vectors = vectors.astype(np.float64)
    vectors = unit_rows(vectors)
    similarity = vectors @ centroids.T
    nearest = [int(centroid_ids[i]) for i in similarity.argmax(axis=1)]
    own_column = [list(centroid_ids).index(c) for c in own]
    correct = int(sum(n == c for n, c in zip(nearest, own)))
    return {
        "correct": correct,
        "fraction": correct / max(1, len(own)),
        "nearest": nearest,
        "cosine_to_own": [float(similarity[i, j]) for i, j in enumerate(own_column)],
    }


def _kind_scores(vectors: np.ndarray, owners: Sequence[int], centroid_ids, centroids) -> dict:
    scores = identity_fidelity(vectors, owners, centroid_ids, centroids)
    return {
        "correct": scores["correct"],
        "of": len(owners),
        "fraction": scores["fraction"],
        "mean_cosine_to_own": float(np.mean(scores["cosine_to_own"])),
        **scores,
    }


def evaluate_fidelity(
    faces: np.ndarray,
    means: np.ndarray,
    clusters: Sequence[int],
    inputs,
    embeddings_path: Path,
    device: str = "cpu",
    aligner: CropAligner | None = None,
    drawn: Sequence[np.ndarray] = (),
    crops: Sequence[np.ndarray] | None = None,
) -> dict:
    """Embed the CVAE faces, the pixel means and the random draws (``drawn``, per cluster) like the crops were
    embedded, score each (see identity_fidelity), and set them beside each cluster's crops (``crops``, per
    cluster, at the CVAE's size, from ``pixel_means``; None leaves those measures out): sharpness, the spread of
    the draws, and a kernel distance to the crops in the embedding (``face_measures``).

    Faces are resized to the crops' own size first (``at_crop_size``). Landmark-aligned faces (``aligner``) are
    scored against centroids of the crops aligned the same way, unaligned ones against the cluster stage's.
    """
    from facepipe.models.registry import embedder_like

    embeddings = read_embeddings(embeddings_path)
    side = load_image_rgb(inputs.crops_dir / inputs.names[0]).shape[0]
    if aligner is None:
        centroid_ids, centroids, centroid_source = saved_or_recomputed_centroids(inputs, embeddings)
        embedder = embedder_like(embeddings, embeddings_path, device=device)
        row_of = {name: row for row, name in enumerate(embeddings.names)}
        crop_vectors = embeddings.vectors[[row_of[name] for name in inputs.names]]
    else:
        embedder = embedder_like(embeddings, embeddings_path, device=device, face_margin=aligner.padding)
        aligned = load_crops(inputs.names, inputs.crops_dir, side, False, aligner)
        crop_vectors = embedder.embed(list(aligned))
        centroid_ids, centroids = cluster_centroids(
            Embeddings(inputs.names, crop_vectors), inputs.names, inputs.clusters
        )
        centroid_source = (
            f"the crops aligned as the CVAE's (padding {aligner.padding:g}), embedded again: mean of "
            "each cluster's L2-normalised embeddings, normalised; nearest = highest cosine"
        )

    def embedded(images):
        return embedder.embed(at_crop_size(images, inputs.crops_dir, inputs.names[0]))

    vectors = {"cvae": embedded(faces), "pixel_mean": embedded(means)}
    cvae, mean = (_kind_scores(vectors[kind], clusters, centroid_ids, centroids) for kind in ("cvae", "pixel_mean"))
    draw_owners = [c for c, tiles in zip(clusters, drawn) for _ in range(len(tiles))]
    draws = None
    if draw_owners:
        vectors["random_draws"] = embedded([tile for tiles in drawn for tile in tiles])
        draws = _kind_scores(vectors["random_draws"], draw_owners, centroid_ids, centroids)
    crops = [np.empty((0, *faces.shape[1:]), np.uint8)] * len(clusters) if crops is None else list(crops)
    sharpness = _sharpness(faces, means, drawn, crops)
    sharpness_of = {kind: sharpness.pop(f"{kind}_per_cluster") for kind in ("cvae", "pixel_mean", "crops")}
    per_cluster = _per_cluster_rows(clusters, cvae, mean, sharpness_of)
    crop_rows = {cluster: np.flatnonzero(inputs.clusters == cluster) for cluster in clusters}
    diversity = _draw_diversity(
        drawn, crops, vectors.get("random_draws"), draw_owners, clusters, crop_vectors, crop_rows
    )
    for row, spread in zip(per_cluster, diversity.pop("per_cluster")):
        row.update(spread)
    summary = ("correct", "of", "fraction", "mean_cosine_to_own")
    return _finite_or_none(
        {
            "model": embeddings.model,
            "embeddings": str(Path(embeddings_path).resolve()),
            "centroids": centroid_source,
            "clusters_evaluated": len(clusters),
            "clusters_total": len(centroid_ids),
            "cvae": {k: cvae[k] for k in summary},
            "pixel_mean": {k: mean[k] for k in summary},
            "random_draws": None if draws is None else {k: draws[k] for k in summary},
            "sharpness": sharpness,
            "draw_diversity": diversity,
            "realism": _realism(vectors, crop_vectors[np.concatenate(list(crop_rows.values()))], embeddings.model),
            "per_cluster": per_cluster,
        }
    )


def _per_cluster_rows(clusters: Sequence[int], cvae: dict, mean: dict, sharpness_of: dict) -> list[dict]:
    """fidelity.json's row of each cluster: its CVAE face's and pixel mean's nearest centroid and cosine, and the
    sharpness of each kind of face."""
    return [
        {
            "cluster": int(c),
            "cvae_nearest": cvae["nearest"][i],
            "cvae_cosine_to_own": cvae["cosine_to_own"][i],
            "pixel_mean_nearest": mean["nearest"][i],
            "pixel_mean_cosine_to_own": mean["cosine_to_own"][i],
            **{f"{kind}_sharpness": values[i] for kind, values in sharpness_of.items()},
        }
        for i, c in enumerate(clusters)
    ]


def _sharpness(
    faces: np.ndarray, means: np.ndarray, drawn: Sequence[np.ndarray], crops: Sequence[np.ndarray]
) -> dict:
    """Sharpness (``laplacian_sharpness``) of the faces, pixel means and draws, and each relative to the median of
    its cluster's crops at the same size."""
    crop_medians = [float(np.median(laplacian_sharpness(c))) if len(c) else math.nan for c in crops]
    face_values, mean_values = laplacian_sharpness(faces), laplacian_sharpness(means)
    draw_values = [float(np.mean(laplacian_sharpness(d))) if len(d) else math.nan for d in drawn] or [math.nan] * len(
        faces
    )
    return {
        "measure": "variance of the Laplacian of the grey levels (0..255) at the CVAE's image size; relative: "
        "to the median of the cluster's crops (aligned as trained) at that size, mean over clusters",
        "cvae": float(face_values.mean()),
        "pixel_mean": float(mean_values.mean()),
        "crops": float(np.nanmean(crop_medians)) if np.isfinite(crop_medians).any() else math.nan,
        "draws": float(np.nanmean(draw_values)) if np.isfinite(draw_values).any() else None,
        "cvae_relative": relative(face_values, crop_medians),
        "pixel_mean_relative": relative(mean_values, crop_medians),
        "draws_relative": relative(draw_values, crop_medians),
        "cvae_per_cluster": face_values.tolist(),
        "pixel_mean_per_cluster": mean_values.tolist(),
        "crops_per_cluster": crop_medians,
    }


def _draw_diversity(drawn, crops, draw_vectors, draw_owners, clusters, crop_vectors, crop_rows) -> dict:
    """How much each cluster's draws differ from each other, beside how much its crops do: in pixels, in pixels
    after each face's brightness and contrast are taken out (``standardised``), and in the embedding."""
    owners = np.asarray(draw_owners)
    rows = []
    for cluster, tiles, real in zip(clusters, drawn, crops):
        rows.append(
            {
                "draws_pixel_difference": pairwise_difference(tiles),
                "crops_pixel_difference": pairwise_difference(real),
                "draws_standardised_difference": pairwise_difference(tiles, standardise=True),
                "crops_standardised_difference": pairwise_difference(real, standardise=True),
                "draws_embedding_distance": pairwise_cosine_distance(draw_vectors[owners == cluster])
                if draw_vectors is not None
                else math.nan,
                "crops_embedding_distance": pairwise_cosine_distance(crop_vectors[crop_rows[cluster]]),
            }
        )
    result = {
        "measure": "mean over pairs of a cluster's draws (and of its crops) of the mean absolute pixel difference "
        "(levels 0..1); standardised: each face first brought to mean 0 and deviation 1, so that "
        "brightness and contrast do not count; embedding: 1 - cosine of their embeddings; relative: "
        "draws / crops, mean over clusters"
    }
    for measure in ("pixel_difference", "standardised_difference", "embedding_distance"):
        result[f"{measure}_relative"] = relative(
            [r[f"draws_{measure}"] for r in rows], [r[f"crops_{measure}"] for r in rows]
        )
    result["per_cluster"] = rows
    return result


def _realism(vectors: dict, crop_vectors: np.ndarray, model: str) -> dict:
    """KID (``kernel_distance``) between the generated faces (CVAE faces and draws together) and the clusters'
    real crops, and between the pixel means and the crops, in the embedding of ``model``, with the counts."""
    generated = np.concatenate([vectors["cvae"], *([vectors["random_draws"]] if "random_draws" in vectors else [])])
    return {
        "measure": f"KID (unbiased; kernel (cosine + 1)^3) in the {model} embedding, the one the identity "
        "term trains on, so not independent: see benchmarks/bench_cvae.py for the judge's",
        "cvae_and_draws": kernel_distance(generated, crop_vectors),
        "cvae_and_draws_count": len(generated),
        "pixel_mean": kernel_distance(vectors["pixel_mean"], crop_vectors),
        "pixel_mean_count": len(vectors["pixel_mean"]),
        "crops_count": len(crop_vectors),
    }


def _finite_or_none(value):
    """The report with every NaN or infinity as None (null in JSON)."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


_FACE_FILE = re.compile(r"cluster_[0-9]+(_mean|_samples)?\.png")


def _is_output_name(name: str) -> bool:
    """A name generate writes (``generated_face_names``, the sheet, fidelity.json, generate.json)."""
    return (
        name in (GENERATED_SHEET_PNG, FIDELITY_JSON, GENERATE_RECORD_JSON) or _FACE_FILE.fullmatch(name) is not None
    )


def _clusters_to_generate(clusters: Sequence[int] | None, config) -> list[int]:
    """The clusters asked for (None: all the model knows), each one the model knows."""
    clusters = list(config.clusters) if clusters is None else clusters
    not_in_model = [c for c in clusters if c not in config.clusters]
    if not_in_model:
        raise FacepipeError(
            f"cluster(s) {', '.join(map(str, not_in_model))} not in this model; it knows "
            f"{', '.join(map(str, config.clusters))}"
        )
    if not clusters:
        raise FacepipeError("no cluster to generate")
    return clusters


def _write_faces(
    out_dir: Path, clusters: Sequence[int], faces: np.ndarray, means: np.ndarray, drawn, show_progress: bool
) -> set[Path]:
    """Each cluster's CVAE face, pixel mean and (where ``drawn`` holds any) random draws, as images in ``out_dir``
    (``generated_face_names``); returns the files written."""
    written = set()
    for position, cluster in enumerate(
        progress(clusters, desc="writing faces", unit="cluster", enabled=show_progress)
    ):
        files = generated_face_names(cluster)
        save_image_atomic(out_dir / files["face"], faces[position])
        save_image_atomic(out_dir / files["mean"], means[position])
        written |= {out_dir / files["face"], out_dir / files["mean"]}
        if len(drawn[position]):
            save_image_atomic(out_dir / files["samples"], np.concatenate(list(drawn[position]), axis=1))
            written.add(out_dir / files["samples"])
    return written


@locks_output(lambda args: args["out_dir"])
def generate(
    checkpoint: str | Path = "weights",
    *,
    out_dir: str | Path = "inference_results",
    clusters: Sequence[int] | None = None,
    samples: int = GenerateSettings.samples,
    temperature: float = GenerateSettings.temperature,
    seed: int = GenerateSettings.seed,
    cluster_results: str | Path | None = None,
    crops_dir: str | Path | None = None,
    evaluate: bool = GenerateSettings.evaluate,
    embeddings: str | Path | None = None,
    device: str = GenerateSettings.device,
    show_progress: bool = True,
) -> GenerateSummary:
    """Write each cluster's CVAE face (z = 0), its pixel-mean face, optional random draws (z drawn at
    ``temperature``) and one sheet.

    ``checkpoint`` is a file or a weights folder (its ``cvae_best.pt``); ``clusters=None`` means all.
    The crops and cluster assignments default to those the checkpoint was trained on. The unknown group
    (cluster -1) gets no face: the model is not trained on it (``read_training_inputs``).
    """
    started = time.perf_counter()
    GenerateSettings(samples=samples, temperature=temperature, seed=seed, evaluate=evaluate, device=device)  # checks
    device = resolve_device(device)
    checkpoint = find_checkpoint(checkpoint)
    model, config, _ = load_cvae(checkpoint, device)
    clusters = _clusters_to_generate(clusters, config)
    inputs = read_training_inputs(cluster_results or config.cluster_results, crops_dir or config.crops_dir)

    faces, drawn = decode_faces(model, config, clusters, samples, seed, device, temperature)
    same_crops = inputs.crops_dir == Path(config.crops_dir)  # the run's recorded landmarks name its own crops
    aligner = crop_aligner(config, inputs.crops_dir, checkpoint.parent if same_crops else None)
    means, crops = pixel_means(
        inputs.names,
        inputs.clusters,
        clusters,
        inputs.crops_dir,
        config.image_size,
        show_progress,
        aligner,
        config.face_mask != "none",
    )
    out_dir = Path(out_dir)
    remove_own_temporaries(out_dir, _is_output_name)
    earlier = recorded_outputs(out_dir / GENERATE_RECORD_JSON)
    refuse_changed(
        out_dir,
        earlier,
        [
            out_dir / GENERATED_SHEET_PNG,  # the images; fidelity.json is data, redone
            *(out_dir / name for c in clusters for name in generated_face_names(c).values()),
        ],
    )
    sheet_path = out_dir / GENERATED_SHEET_PNG
    written = _write_faces(out_dir, clusters, faces, means, drawn, show_progress)
    save_image_atomic(sheet_path, contact_sheet(clusters, [len(c) for c in crops], means, faces, drawn))
    written.add(sheet_path)

    fidelity = None
    if evaluate:
        embeddings_path = clustered_embeddings_path(inputs.cluster_results, embeddings)
        fidelity = evaluate_fidelity(faces, means, clusters, inputs, embeddings_path, device, aligner, drawn, crops)
        write_json_atomic(out_dir / FIDELITY_JSON, fidelity)
        written.add(out_dir / FIDELITY_JSON)
    # The folder holds what this call wrote: what an earlier call recorded writing (another model, other
    # clusters, or evaluated when this one was not) is removed, unless the user changed it since.
    _, changed = remove_recorded(out_dir, earlier, keep=written)
    record = {
        "outputs": output_hashes(out_dir, sorted(written)),
        "checkpoint": str(checkpoint),
        "facepipe_version": __version__,
    }
    write_json_atomic(out_dir / GENERATE_RECORD_JSON, record)
    return GenerateSummary(list(clusters), out_dir, sheet_path, fidelity, time.perf_counter() - started, changed)
