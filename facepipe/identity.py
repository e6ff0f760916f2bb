"""Who a cluster is, for the aggregated faces: each cluster's embedding centroid (generate --evaluate scores
faces against it) and train-cvae's identity term, which pulls each cluster's z = 0 face towards it."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from facepipe.common import FacepipeError, is_auto
from facepipe.crops import grouped_crops
from facepipe.formats import (
    CLUSTER_SIDECAR_FIELDS,
    EMBEDDINGS_SIDECAR_FIELDS,
    path_in_sidecar,
    read_sidecar,
)
from facepipe.images import load_image_rgb
from facepipe.models import DIFFERENTIABLE_MODELS, DifferentiableEmbedder, unit_rows
from facepipe.settings import TrainSettings, check_settings

DEFAULT_IDENTITY_WEIGHT = 1000.0  # what identity_weight "auto" means for clusters from one of DIFFERENTIABLE_MODELS
JITTER_DEGREES, JITTER_SCALE, JITTER_SHIFT = 6.0, 0.06, 0.04  # the identity term's random views (strength 1)


def clustered_embeddings_path(cluster_results: Path, embeddings: str | Path | None = None) -> Path:
    """``embeddings`` if given, else the embeddings file the clusters came from (named by their sidecar)."""
    if embeddings is not None:
        return Path(embeddings)
    return path_in_sidecar(
        cluster_results,
        "embeddings",
        CLUSTER_SIDECAR_FIELDS,
        "{sidecar} does not name the embeddings the clusters came from; pass --embeddings",
    )


def at_crop_size(faces: Sequence[np.ndarray], crops_dir: Path, crop_name: str) -> list[np.ndarray]:
    """Faces of any size (uint8 RGB) resized bicubically to the side of the crops (``crop_name`` is one of them:
    detect writes them all at one size), so that an embedder finds the face where it finds it in a crop (the
    crop is the face box grown by detect's margin on each side, whatever its pixel size)."""
    import cv2

    side = load_image_rgb(crops_dir / crop_name).shape[0]
    return [cv2.resize(rgb, (side, side), interpolation=cv2.INTER_CUBIC) for rgb in faces]


def clustered_embeddings_model(cluster_results: Path) -> str | None:
    """The model of the embeddings the clusters came from; None when the sidecars do not tell."""
    try:
        return read_sidecar(clustered_embeddings_path(cluster_results), EMBEDDINGS_SIDECAR_FIELDS).get("model")
    except FacepipeError:
        return None


def identity_weight_for(weight: float | str, model: str | None) -> float:
    """The identity term's weight for clusters from ``model`` embeddings (None: not known): ``"auto"`` is
    DEFAULT_IDENTITY_WEIGHT for one of DIFFERENTIABLE_MODELS, else 0; a number is checked (``settings.TrainSettings``;
    above 0 only for DIFFERENTIABLE_MODELS) and returned."""
    if is_auto(weight):
        return DEFAULT_IDENTITY_WEIGHT if model in DIFFERENTIABLE_MODELS else 0.0
    check_settings(TrainSettings, identity_weight=weight)
    value = float(weight)
    if value > 0 and model not in DIFFERENTIABLE_MODELS:
        source = (
            f"came from {model} embeddings" if model else "name no embeddings (with their model) in their sidecar"
        )
        raise FacepipeError(
            f"the identity term needs {' or '.join(DIFFERENTIABLE_MODELS)} embeddings, and the clusters "
            f"{source}: use --identity-weight 0"
        )
    return value


def _unit_vectors(embeddings, names: Sequence[str]) -> np.ndarray:
    """The L2-normalised embeddings of the crops ``names``, in their order (float64)."""
    row_of = {name: row for row, name in enumerate(embeddings.names)}
    missing = [n for n in names if n not in row_of]
    if missing:
        raise FacepipeError(
            f"{len(missing)} clustered crops have no embedding (e.g. {missing[0]}): wrong embeddings file?"
        )
    return unit_rows(embeddings.vectors[[row_of[n] for n in names]].astype(np.float64))


def cluster_centroids(embeddings, names: Sequence[str], cluster_of: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Unit-length centroid of each cluster: the mean of its members' L2-normalised embeddings, normalised.

    Crops in the unknown group (UNKNOWN_CLUSTER) are left out: it has no centroid.
    """
    names, cluster_of = grouped_crops(names, cluster_of)
    return _centroids_of(_unit_vectors(embeddings, names), cluster_of)


def _centroids_of(vectors: np.ndarray, cluster_of: np.ndarray) -> tuple[list[int], np.ndarray]:
    """The cluster ids in ``cluster_of`` (sorted) and the unit-length mean of each one's unit ``vectors``."""
    ids = sorted(int(c) for c in np.unique(cluster_of))
    return ids, unit_rows(np.stack([vectors[cluster_of == c].mean(axis=0) for c in ids]))


def central_members(embeddings, names: Sequence[str], cluster_of: np.ndarray, count: int) -> np.ndarray:
    """Rows of ``names`` (indices, sorted) that stand for their cluster: in each cluster the at most ``count``
    members whose embeddings lie nearest its centroid (``cluster_centroids``), and an odd number of them
    where it has more than one (a per-pixel median of an even number of crops is the mean of the middle two,
    which blurs). ``count`` 0: every member. ``cluster_of`` holds no UNKNOWN_CLUSTER."""
    cluster_of = np.asarray(cluster_of)
    if count <= 0:
        return np.arange(len(names))
    vectors = _unit_vectors(embeddings, names)
    ids, centroids = _centroids_of(vectors, cluster_of)
    chosen = []
    for cluster, centroid in zip(ids, centroids):
        members = np.flatnonzero(cluster_of == cluster)
        kept = min(count, len(members))
        kept -= 1 - kept % 2
        nearest = members[np.argsort(-(vectors[members] @ centroid), kind="stable")]
        chosen.extend(nearest[:kept])
    return np.sort(np.asarray(chosen, dtype=np.int64))


def aligned_chip_grid(align_padding: float, chip_padding: float, chip_size: int) -> np.ndarray:
    """Where dlib's chip (``chip_padding``) lies in a face aligned by ``crops.align_face`` with ``align_padding``,
    as a ``F.grid_sample`` grid (chip_size, chip_size, 2): both put the landmark template at the same place
    relative to their padding, so the chip is a centred square of the aligned face."""
    steps = (np.arange(chip_size) + 0.5) / chip_size
    where = ((2 * chip_padding + 1) * steps - chip_padding + align_padding) / (2 * align_padding + 1)
    x, y = np.meshgrid(2 * where - 1, 2 * where - 1)
    return np.stack([x, y], axis=-1).astype(np.float32)


class IdentityTerm:
    """1 - cosine between the embedding of a generated face and its cluster's centroid, differentiable in the face.

    Faces are aligned as the crops were: landmark-aligned faces (train-cvae --align dlib5) all by the same
    centred square (``aligned_chip_grid``); unaligned ones with one alignment per cluster, the one the embedder
    finds on the pixel mean of the cluster's training crops (what the mean anchor pulls the z = 0 face towards).
    """

    def __init__(self, embedder, grids, centroids, jitter: float = 0.0):
        self.embedder = embedder
        self.grids = grids
        self.centroids = centroids
        self.jitter = jitter

    def __call__(self, faces, conditions, generator=None):
        """faces (n, 3, S, S) in [0, 1] of the clusters with condition indices ``conditions`` -> (n,).

        With a ``generator`` (in training) and ``jitter`` > 0, each face is seen through a random similarity
        transform (``jittered``), so that the faces learn what the embedder finds in every such view, not
        pixel patterns that move one view's embedding only.
        """
        import torch.nn.functional as F

        grids = self.grids[conditions]
        if generator is not None and self.jitter > 0:
            grids = jittered(grids, generator, self.jitter)
        vectors = self.embedder.embed_aligned(faces, grids)
        return 1.0 - F.cosine_similarity(vectors.float(), self.centroids[conditions], dim=1)


def jittered(grids, generator, strength: float = 1.0):
    """Sampling grids (n, H, W, 2) each turned, scaled and shifted about the image centre at random: up to
    ``strength`` times JITTER_DEGREES, JITTER_SCALE (on a log scale) and JITTER_SHIFT (of the side)."""
    import torch

    uniform = (torch.rand(len(grids), 4, generator=generator) * 2 - 1).to(grids.device) * strength
    angle = uniform[:, 0] * np.deg2rad(JITTER_DEGREES)
    scale = torch.exp(uniform[:, 1] * JITTER_SCALE)
    shift = uniform[:, 2:] * JITTER_SHIFT * 2  # grid coordinates span 2 per side
    cos, sin = (scale * torch.cos(angle))[:, None, None], (scale * torch.sin(angle))[:, None, None]
    x, y = grids[..., 0], grids[..., 1]
    return torch.stack(
        [cos * x - sin * y + shift[:, 0, None, None], sin * x + cos * y + shift[:, 1, None, None]], dim=-1
    )


def build_identity_term(
    embeddings,
    embeddings_path: Path,
    crops_dir: Path,
    names: Sequence[str],
    conditions: np.ndarray,
    means: np.ndarray,
    device: str,
    align_padding: float | None = None,
    jitter: float = 0.0,
) -> IdentityTerm:
    """The identity term for the training crops ``names`` (condition index ``conditions``), whose per-condition
    pixel means are ``means`` (uint8, (clusters, S, S, 3)), with ``embeddings``, the clusters' (read from
    ``embeddings_path``; of one of DIFFERENTIABLE_MODELS: see ``identity_weight_for``); ``align_padding`` is
    that of landmark-aligned crops, None for unaligned ones; ``jitter`` the strength of the random views in
    training."""
    import torch

    from facepipe.models.dlib_resnet import CHIP_SIZE
    from facepipe.models.registry import embedder_like

    ids, centroids = cluster_centroids(embeddings, names, conditions)
    if ids != list(range(len(means))):
        raise FacepipeError("every cluster needs at least one training crop for the identity term")
    embedder = embedder_like(embeddings, embeddings_path, device)
    if not isinstance(embedder, DifferentiableEmbedder):
        raise FacepipeError(
            f"{embedder.name} cannot be run differentiably: the identity term needs one of "
            f"{', '.join(DIFFERENTIABLE_MODELS)}"
        )
    embedder.network.requires_grad_(False)
    if align_padding is None:
        grids = [embedder.chip_grid(mean) for mean in at_crop_size(means, crops_dir, names[0])]
    else:
        grids = [aligned_chip_grid(align_padding, embedder.padding, CHIP_SIZE)] * len(means)
    return IdentityTerm(
        embedder, torch.from_numpy(np.stack(grids)).to(device), torch.from_numpy(centroids).float().to(device), jitter
    )
