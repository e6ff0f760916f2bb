"""Stage 4: a conditional VAE over the face crops, conditioned on each crop's cluster.

The label enters both the encoder (one-hot, concatenated to the flattened convolutional features) and
the decoder (one-hot, concatenated to z, and a scale and shift per block). Layer sizes follow from the
image size: the encoder halves the image until it is at most 7 pixels (or odd), the decoder doubles it
back exactly. With ``decoder_base`` "mean" the decoder adds its output to the logits of the cluster's pixel
mean, so it starts from that face and learns how a crop, or a draw, differs from it.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from facepipe import __version__
from facepipe.common import FacepipeError, atomic_path, progress, remove_stale_temporaries, resolve_device, seed_everything
from facepipe.formats import (
    ALIGNMENT_CSV,
    CVAE_BEST_CHECKPOINT,
    CVAE_CHECKPOINT_FORMAT,
    CVAE_LOG_COLUMNS,
    CVAE_LOG_CSV,
    cvae_checkpoint_name,
    read_alignment,
    write_alignment,
    write_csv_atomic,
)
from facepipe.crops import CropAligner, check_alignment, cluster_pixel_means, load_crops, read_training_inputs
from facepipe.cvae_settings import (
    DECODER_BASES,
    DEFAULT_ALIGN_PADDING,
    DEFAULT_ALIGNMENT,
    DEFAULT_DRAW_IDENTITY,
    DEFAULT_IDENTITY_JITTER,
    MAX_DRAW_IDENTITY,
    MAX_IDENTITY_JITTER,
)
from facepipe.identity import build_identity_term, clustered_embeddings_model, identity_weight_for

CHECKPOINT_PATTERN = re.compile(r"^cvae_epoch_(\d+)\.pt$")
MIN_IMAGE_SIZE = 16
LOSS_PARTS = ("loss", "recon", "kl", "anchor", "identity", "draw_identity")
# Settings that must match for --resume to continue a run (epochs may grow; the rest may not change).
RESUME_KEYS = ("image_size", "alignment", "align_padding", "decoder_base", "latent_dim", "base_channels", "max_channels", "beta", "mean_anchor", "identity_weight",
               "draw_identity", "identity_jitter", "learning_rate", "batch_size", "val_fraction", "seed", "clusters", "data_fingerprint")


@dataclass
class CVAEConfig:
    """Everything that defines a CVAE and its training run; stored as a plain dict in each checkpoint."""

    image_size: int = 64
    alignment: str = DEFAULT_ALIGNMENT  # how the crops were aligned: cvae_settings.ALIGNMENTS
    align_padding: float = DEFAULT_ALIGN_PADDING
    latent_dim: int = 64
    base_channels: int = 32
    max_channels: int = 256
    clusters: list[int] = field(default_factory=list)  # condition index i <-> cluster id clusters[i]
    decoder_base: str = "mean"  # cvae_settings.DECODER_BASES: "mean" adds the decoder's output to the cluster's pixel mean
    beta: float = 1.0
    mean_anchor: float = 0.0
    identity_weight: float = 0.0
    draw_identity: float = 0.0
    identity_jitter: float = 0.0
    learning_rate: float = 1e-3
    batch_size: int = 32
    epochs: int = 40
    val_fraction: float = 0.1
    seed: int = 0
    cluster_results: str = ""
    crops_dir: str = ""
    data_fingerprint: str = ""
    facepipe_version: str = __version__

    @property
    def num_classes(self) -> int:
        return len(self.clusters)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CVAEConfig":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known.setdefault("alignment", "none")  # checkpoints of facepipe before --align were trained unaligned
        known.setdefault("decoder_base", "none")  # ... and decoded without the cluster's pixel mean
        return cls(**known)


def encoder_sizes(image_size: int) -> list[int]:
    """Spatial sizes after each stride-2 convolution: halve while even and above 7 (224 -> ... 7, 64 -> ... 4)."""
    if image_size < MIN_IMAGE_SIZE:
        raise FacepipeError(f"image size {image_size} is too small; use at least {MIN_IMAGE_SIZE}")
    sizes = []
    size = image_size
    while size % 2 == 0 and size > 7:
        size //= 2
        sizes.append(size)
    if len(sizes) < 2:
        raise FacepipeError(f"image size {image_size} must be divisible by 4 (e.g. 64, 96, 128, 224)")
    return sizes


def _build_model_class():
    import torch
    from torch import nn

    class ConditionalVAE(nn.Module):
        """Convolutional conditional VAE; ``forward(images, labels, noise)`` -> (reconstruction, mu, logvar)."""

        def __init__(self, config: CVAEConfig):
            super().__init__()
            self.config = config
            sizes = encoder_sizes(config.image_size)
            channels = [min(config.base_channels * 2**i, config.max_channels) for i in range(len(sizes))]
            self.bottom_size, self.bottom_channels = sizes[-1], channels[-1]
            flat = self.bottom_channels * self.bottom_size**2
            n = config.num_classes

            layers, previous = [], 3
            for out in channels:
                layers += [nn.Conv2d(previous, out, 4, 2, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
                previous = out
            self.encoder = nn.Sequential(*layers, nn.Flatten())
            self.to_mu = nn.Linear(flat + n, config.latent_dim)
            self.to_logvar = nn.Linear(flat + n, config.latent_dim)

            self.from_latent = nn.Linear(config.latent_dim + n, flat)
            # Decoder: per block, a transposed convolution then a normalisation whose scale and shift are
            # learned per cluster, so the condition shapes every resolution and not only the first layer.
            widths = [*channels[::-1][1:], max(8, config.base_channels // 2)]
            self.upsample = nn.ModuleList(
                nn.ConvTranspose2d(current, out, 4, 2, 1, bias=False) for current, out in zip(channels[::-1], widths)
            )
            self.norms = nn.ModuleList(nn.GroupNorm(min(8, out), out, affine=False) for out in widths)
            self.styles = nn.ModuleList(nn.Embedding(n, 2 * out) for out in widths)
            for style in self.styles:
                nn.init.zeros_(style.weight)
            self.to_rgb = nn.Conv2d(widths[-1], 3, 3, 1, 1)
            # the logits of each cluster's pixel mean (set by train_cvae, kept in the checkpoint), or zeros
            self.register_buffer("base_logits", torch.zeros(n, 3, config.image_size, config.image_size))
            if config.decoder_base == "mean":  # the decoder starts out as the pixel mean
                nn.init.zeros_(self.to_rgb.weight)
                nn.init.zeros_(self.to_rgb.bias)

        def condition(self, labels: torch.Tensor) -> torch.Tensor:
            return nn.functional.one_hot(labels, self.config.num_classes).to(self.to_mu.weight.dtype)

        def encode(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Images in [0, 1] (N, 3, S, S) -> mean and log-variance of q(z | x, label)."""
            features = torch.cat([self.encoder(images * 2.0 - 1.0), self.condition(labels)], dim=1)
            return self.to_mu(features), self.to_logvar(features).clamp(-20.0, 10.0)

        def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            """Latent codes and labels -> images in [0, 1] (N, 3, S, S)."""
            hidden = self.from_latent(torch.cat([z, self.condition(labels).to(z.dtype)], dim=1))
            hidden = hidden.view(-1, self.bottom_channels, self.bottom_size, self.bottom_size)
            for upsample, norm, style in zip(self.upsample, self.norms, self.styles):
                scale, shift = style(labels)[:, :, None, None].chunk(2, dim=1)
                hidden = nn.functional.leaky_relu(norm(upsample(hidden)) * (1 + scale) + shift, 0.2)
            return torch.sigmoid(self.to_rgb(hidden) + self.base_logits[labels].to(hidden.dtype))

        def set_base(self, cluster_means: torch.Tensor) -> None:
            """Start each cluster's decodes from its pixel mean (clusters, 3, S, S) in [0, 1]."""
            if self.config.decoder_base == "mean":
                self.base_logits.copy_(torch.logit(cluster_means.clamp(0.5 / 255, 254.5 / 255)))

        def forward(self, images, labels, noise=None):
            """Reconstruct; ``noise`` (N, latent) draws z = mu + sigma * noise, ``None`` decodes z = mu."""
            mu, logvar = self.encode(images, labels)
            z = mu if noise is None else mu + torch.exp(0.5 * logvar) * noise.to(mu.dtype)
            return self.decode(z, labels), mu, logvar

    return ConditionalVAE


_MODEL_CLASS = None


def build_model(config: CVAEConfig):
    """A freshly initialised ``ConditionalVAE`` for ``config`` (torch is imported only when needed)."""
    global _MODEL_CLASS
    if _MODEL_CLASS is None:
        _MODEL_CLASS = _build_model_class()
    return _MODEL_CLASS(config)


def squared_error(images, targets):
    """Squared error summed over pixels, averaged over the images of a batch."""
    return (images.float() - targets.float()).pow(2).flatten(1).sum(dim=1).mean()


def cvae_loss(reconstruction, target, mu, logvar, centre_faces, cluster_means, identity, draw_identity, beta: float,
              mean_anchor: float, identity_weight: float, draw_weight: float):
    """Per-image means of: total = recon + beta * KL + mean_anchor * anchor
    + identity_weight * (identity + draw_weight * draw_identity).

    recon is the squared error summed over pixels, KL is summed over z, anchor is the squared error between
    each image's cluster decoded at z = 0 (``centre_faces``) and that cluster's pixel mean (``cluster_means``),
    ``identity`` (per image, or None when not measured) is 1 - cosine between the embedding of that face
    and the cluster's centroid, and ``draw_identity`` (or None) the same for faces decoded from z ~ N(0, I).
    """
    recon = squared_error(reconstruction, target)
    kl = (-0.5 * (1.0 + logvar.float() - mu.float().pow(2) - logvar.float().exp()).sum(dim=1)).mean()
    anchor = squared_error(centre_faces, cluster_means)
    total = recon + beta * kl + mean_anchor * anchor
    not_measured = recon.new_full((), math.nan)
    if identity is None:
        return total, recon, kl, anchor, not_measured, not_measured
    identity = identity.float().mean()
    total = total + identity_weight * identity
    if draw_identity is None:
        return total, recon, kl, anchor, identity, not_measured
    draw_identity = draw_identity.float().mean()
    return total + identity_weight * draw_weight * draw_identity, recon, kl, anchor, identity, draw_identity


# ---------------------------------------------------------------- inputs


def split_train_validation(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split, stratified by label: each label with 2+ crops gives round(fraction * n) (at least 1) to validation."""
    rng = np.random.default_rng([seed, 7919])
    train, val = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        count = 0 if val_fraction <= 0 or len(members) < 2 else max(1, int(round(val_fraction * len(members))))
        count = min(count, len(members) - 1)
        val.extend(members[:count])
        train.extend(members[count:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


class CachedCrops:
    """Map-style dataset over the uint8 crop cache; an index is (row, flip) so augmentation is fixed by the sampler."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, key):
        row, flip = key
        image = self.images[row]  # (H, W, 3)
        return (image.flip(1) if flip else image), self.labels[row]


def _epoch_generator(seed: int, epoch: int):
    """The generator that fixes an epoch's data order, flips and noise: a function of (seed, epoch) only."""
    import torch

    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:8], "little") >> 1)


def crop_aligner(config: CVAEConfig, crops_dir: Path, weights_dir: str | Path | None) -> CropAligner | None:
    """How a run aligns its crops: None when it was trained unaligned, else a ``CropAligner`` that starts from
    the landmarks recorded in the ``alignment.csv`` of ``weights_dir`` (if given and there)."""
    if config.alignment == "none":
        return None
    recorded = None if weights_dir is None else Path(weights_dir) / ALIGNMENT_CSV
    known = read_alignment(recorded) if recorded is not None and recorded.is_file() else None
    return CropAligner(crops_dir, config.align_padding, known)


# ---------------------------------------------------------------- checkpoints


def _rng_states() -> dict:
    import torch

    _, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": list(python_state), "gauss": gauss},
    }


def _restore_rng_states(states: dict) -> None:
    import torch

    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = states["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss"]))


def save_checkpoint(path: str | Path, checkpoint: dict) -> None:
    """Write a checkpoint atomically (tensors, numbers, strings, lists and dicts only: loadable with weights_only)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """Load a CVAE checkpoint with ``torch.load(weights_only=True)``; a missing, corrupt or foreign file is a FacepipeError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FacepipeError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError... for damaged files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FacepipeError(f"{path} is not a readable CVAE checkpoint (truncated or corrupt?): {first_line}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CVAE_CHECKPOINT_FORMAT:
        raise FacepipeError(f"{path} is not a facepipe CVAE checkpoint")
    missing = [k for k in ("config", "model", "epoch") if k not in checkpoint]
    if missing:
        raise FacepipeError(f"{path} is an incomplete CVAE checkpoint (no {', '.join(missing)})")
    return checkpoint


def load_cvae(path: str | Path, device: str = "cpu"):
    """Load a trained model for inference: returns (model in eval mode on ``device``, CVAEConfig, checkpoint dict)."""
    checkpoint = load_checkpoint(path)
    config = CVAEConfig.from_dict(checkpoint["config"])
    model = build_model(config)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise FacepipeError(f"{path}: weights do not fit the model its config describes: {str(error).splitlines()[0]}") from None
    return model.to(device).eval(), config, checkpoint


def epoch_checkpoints(weights_dir: str | Path) -> dict[int, Path]:
    """The ``cvae_epoch_N.pt`` files in ``weights_dir``, by epoch."""
    weights_dir = Path(weights_dir)
    if not weights_dir.is_dir():
        return {}
    found = {}
    for path in weights_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or in a folder: ``cvae_best.pt``, else the latest ``cvae_epoch_N.pt``."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / CVAE_BEST_CHECKPOINT).is_file():
            return path / CVAE_BEST_CHECKPOINT
        checkpoints = epoch_checkpoints(path)
        if checkpoints:
            return checkpoints[max(checkpoints)]
        raise FacepipeError(f"no CVAE checkpoint in {path} (run facepipe train-cvae first)")
    raise FacepipeError(f"checkpoint not found: {path}")


# ---------------------------------------------------------------- training


@dataclass
class TrainSummary:
    """What a train-cvae run did."""

    epochs_run: int
    last_epoch: int
    best_epoch: int
    best_val_loss: float
    last: dict
    weights_dir: Path
    seconds: float
    device: str
    train_count: int
    val_count: int

    def line(self) -> str:
        if self.epochs_run == 0:
            return f"train-cvae: nothing to do, epoch {self.last_epoch} already trained in {self.weights_dir}"
        return (
            f"train-cvae: {self.epochs_run} epoch(s) on {self.device} ({self.train_count} train / {self.val_count} "
            f"validation crops), epoch {self.last_epoch}: train loss {self.last['train_loss']:.1f}, "
            f"validation loss {self.last['val_loss']:.1f}; best epoch {self.best_epoch} -> "
            f"{self.weights_dir / CVAE_BEST_CHECKPOINT} in {self.seconds:.1f}s"
        )


def _check_resumable(checkpoint: dict, config: CVAEConfig, path: Path) -> None:
    previous = checkpoint["config"]
    current = config.to_dict()
    changed = [k for k in RESUME_KEYS if previous.get(k) != current.get(k)]
    if changed:
        raise FacepipeError(
            f"{path} was trained with different {', '.join(changed)}: use the same settings to continue "
            f"(or skip) that run, or --force to start over"
        )


def _run_epoch(model, optimizer, dataset, order, flips, noise_generator, cluster_means, identity_term, config, device,
               train: bool, workers: int):
    """One pass over ``order``; returns per-image means of loss, recon, KL, anchor, identity and draw identity.

    ``cluster_means`` (clusters, 3, S, S) are the targets of the z = 0 decodes; the anchor term is always
    measured but only trained on when ``config.mean_anchor`` > 0. ``identity_term`` (an ``IdentityTerm``, or
    None when ``config.identity_weight`` is 0 and the identity is not measured) scores the same z = 0 faces
    and, in training with ``config.draw_identity`` > 0, one face per cluster of the batch decoded from a random z.
    """
    import torch
    from torch.utils.data import DataLoader

    keys = list(zip(order.tolist(), flips.tolist()))
    batches = [keys[i : i + config.batch_size] for i in range(0, len(keys), config.batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                        pin_memory=device.startswith("cuda"), persistent_workers=False)
    on_cuda = device.startswith("cuda")
    totals = np.zeros(len(LOSS_PARTS))
    model.train(train)
    for images, labels in loader:
        images = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        if on_cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        noise = torch.randn(len(labels), config.latent_dim, generator=noise_generator).to(device) if train else None
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda):
            with torch.set_grad_enabled(train):
                reconstruction, mu, logvar = model(images, labels, noise)
            with torch.set_grad_enabled(train and (config.mean_anchor > 0 or identity_term is not None)):
                # each cluster's z = 0 face once, then one per image (its gradient sums over the images)
                present, image_to_present = torch.unique(labels, return_inverse=True)
                present_faces = model.decode(mu.new_zeros(len(present), mu.shape[1]), present)
                identity = draw_identity = None
                if identity_term is not None:
                    faces, conditions = present_faces, present
                    if train and config.draw_identity > 0:  # and one random draw per cluster, in one pass
                        z = torch.randn(len(present), config.latent_dim, generator=noise_generator).to(device)
                        faces = torch.cat([faces, model.decode(z.to(mu.dtype), present)])
                        conditions = torch.cat([present, present])
                    # random views of the faces in training only
                    scores = identity_term(faces, conditions, noise_generator if train else None)
                    identity, draw_identity = scores[: len(present)][image_to_present], scores[len(present):]
                    draw_identity = draw_identity if len(draw_identity) else None
        loss, recon, kl, anchor, identity, draw_identity = cvae_loss(
            reconstruction, images, mu, logvar, present_faces[image_to_present], cluster_means[labels], identity,
            draw_identity, config.beta, config.mean_anchor, config.identity_weight, config.draw_identity)
        if train:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        totals += np.array([part.item() for part in (loss, recon, kl, anchor, identity, draw_identity)]) * len(labels)
    return totals / max(1, len(order))


def train_cvae(
    cluster_results: str | Path,
    *,
    crops_dir: str | Path | None = None,
    weights_dir: str | Path = "weights",
    image_size: int = 64,
    align: str = DEFAULT_ALIGNMENT,
    align_padding: float = DEFAULT_ALIGN_PADDING,
    latent_dim: int = 64,
    decoder_base: str = "mean",
    base_channels: int = 32,
    max_channels: int = 256,
    epochs: int = 40,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    beta: float = 1.0,
    mean_anchor: float = 100.0,
    identity_weight: float | str = "auto",
    draw_identity: float = DEFAULT_DRAW_IDENTITY,
    identity_jitter: float = DEFAULT_IDENTITY_JITTER,
    val_fraction: float = 0.1,
    seed: int = 0,
    keep_last: int = 2,
    workers: int = 0,
    device: str = "auto",
    resume: bool = False,
    force: bool = False,
    show_progress: bool = True,
) -> TrainSummary:
    """Train the CVAE on the crops of ``cluster_results``; checkpoints and the loss log go to ``weights_dir``.

    Each epoch writes ``cvae_epoch_N.pt`` (the last ``keep_last`` are kept), ``cvae_best.pt`` when the
    validation loss improves, and ``cvae_log.csv``. The data order, flips and noise of an epoch depend only
    on (seed, epoch), so ``resume=True`` after a kill ends with the same weights as an uninterrupted run.
    A folder whose run already reached ``epochs`` with the same settings is left as it is (unless ``force``).
    ``align`` "dlib5" aligns every crop on its 5 landmarks first (``crops.CropAligner``; the landmarks go to
    ``alignment.csv``), "none" resizes it whole. ``identity_weight`` "auto" turns the identity term on when the clusters' embeddings allow it
    (``identity.identity_weight_for``). Crops in the unknown group (cluster -1) are not trained on.
    """
    import torch

    started = time.perf_counter()
    if epochs < 1 or batch_size < 1 or keep_last < 1:
        raise FacepipeError("epochs, batch size and --keep-last must be at least 1")
    if mean_anchor < 0:
        raise FacepipeError("--mean-anchor must be at least 0")
    if decoder_base not in DECODER_BASES:
        raise FacepipeError(f"unknown decoder base {decoder_base!r}: use {' or '.join(DECODER_BASES)}")
    if not 0 <= identity_jitter <= MAX_IDENTITY_JITTER:
        raise FacepipeError(f"--identity-jitter must lie between 0 and {MAX_IDENTITY_JITTER:g}, got {identity_jitter:g}")
    if not 0 <= draw_identity <= MAX_DRAW_IDENTITY:
        raise FacepipeError(f"--draw-identity must lie between 0 and {MAX_DRAW_IDENTITY:g}, got {draw_identity:g}")
    if not 0 <= val_fraction < 1:
        raise FacepipeError("--val-fraction must be in [0, 1)")
    check_alignment(align, align_padding)
    device = resolve_device(device)
    inputs = read_training_inputs(cluster_results, crops_dir)
    identity_weight = identity_weight_for(identity_weight, clustered_embeddings_model(inputs.cluster_results))
    cluster_ids = sorted(int(c) for c in np.unique(inputs.clusters))
    config = CVAEConfig(image_size=image_size, alignment=align, align_padding=float(align_padding),
                        decoder_base=decoder_base, latent_dim=latent_dim, base_channels=base_channels,
                        max_channels=max_channels, clusters=cluster_ids, beta=float(beta),
                        mean_anchor=float(mean_anchor), identity_weight=float(identity_weight),
                        draw_identity=float(draw_identity), identity_jitter=float(identity_jitter),
                        learning_rate=float(learning_rate), batch_size=batch_size, epochs=epochs,
                        val_fraction=float(val_fraction), seed=seed, cluster_results=str(inputs.cluster_results),
                        crops_dir=str(inputs.crops_dir), data_fingerprint=inputs.fingerprint())
    encoder_sizes(image_size)

    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(weights_dir)
    existing = epoch_checkpoints(weights_dir)
    if force:
        for path in [*existing.values(), *(weights_dir / name for name in (CVAE_BEST_CHECKPOINT, CVAE_LOG_CSV, ALIGNMENT_CSV))]:
            path.unlink(missing_ok=True)
        existing = {}
    elif existing and not resume and max(existing) < epochs:
        raise FacepipeError(
            f"{weights_dir} already holds checkpoints up to epoch {max(existing)}: "
            f"pass --resume to continue that run or --force to start over"
        )

    seed_everything(seed)
    model = build_model(config).to(device)
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    start_epoch, history, best_val, best_epoch = 0, [], math.inf, 0
    if existing:
        last_path = existing[max(existing)]
        checkpoint = load_checkpoint(last_path)
        _check_resumable(checkpoint, config, last_path)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        _restore_rng_states(checkpoint["rng"])
        start_epoch, history = int(checkpoint["epoch"]), list(checkpoint["history"])
        best_val, best_epoch = float(checkpoint["best_val_loss"]), int(checkpoint["best_epoch"])
    if start_epoch >= epochs:
        last = history[-1] if history else {}
        return TrainSummary(0, start_epoch, best_epoch, best_val, last, weights_dir, time.perf_counter() - started,
                            device, 0, 0)

    index_of = {cluster: i for i, cluster in enumerate(cluster_ids)}
    labels = torch.tensor([index_of[int(c)] for c in inputs.clusters], dtype=torch.long)
    train_rows, val_rows = split_train_validation(labels.numpy(), val_fraction, seed)
    aligner = crop_aligner(config, inputs.crops_dir, weights_dir)
    images = torch.from_numpy(load_crops(inputs.names, inputs.crops_dir, image_size, show_progress, aligner))
    if aligner is not None:
        write_alignment(weights_dir / ALIGNMENT_CSV, {name: aligner.landmarks[name] for name in inputs.names})
    dataset = CachedCrops(images, labels)
    # The targets of the z = 0 faces: each cluster's training crops, unflipped, as (clusters, 3, S, S) in [0, 1].
    means = cluster_pixel_means(images.numpy()[train_rows], labels.numpy()[train_rows], range(len(cluster_ids)))
    cluster_means = torch.from_numpy(means / 255.0).float().permute(0, 3, 1, 2).contiguous().to(device)
    model.set_base(cluster_means)
    identity_term = None
    if identity_weight > 0:
        identity_term = build_identity_term(inputs.cluster_results, inputs.crops_dir,
                                            [inputs.names[row] for row in train_rows], labels.numpy()[train_rows],
                                            (means + 0.5).astype(np.uint8), device,
                                            None if aligner is None else config.align_padding, identity_jitter)
    no_flips = torch.zeros(len(val_rows), dtype=torch.bool)

    bar = progress(range(start_epoch + 1, epochs + 1), desc="train-cvae", unit="epoch", enabled=show_progress)
    for epoch in bar:
        epoch_started = time.perf_counter()
        generator = _epoch_generator(seed, epoch)
        order = torch.from_numpy(train_rows)[torch.randperm(len(train_rows), generator=generator)]
        flips = torch.rand(len(order), generator=generator) < 0.5
        train_means = _run_epoch(model, optimizer, dataset, order, flips, generator, cluster_means, identity_term,
                                 config, device, True, workers)
        if len(val_rows):
            val_means = _run_epoch(model, None, dataset, torch.from_numpy(val_rows), no_flips, None, cluster_means,
                                   identity_term, config, device, False, workers)
        else:
            val_means = train_means
        row = {"epoch": epoch, **{f"train_{k}": float(v) for k, v in zip(LOSS_PARTS, train_means)},
               **{f"val_{k}": float(v) for k, v in zip(LOSS_PARTS, val_means)},
               "seconds": time.perf_counter() - epoch_started}
        history.append(row)
        improved = row["val_loss"] < best_val
        if improved:
            best_val, best_epoch = row["val_loss"], epoch
        checkpoint = {
            "format": CVAE_CHECKPOINT_FORMAT, "epoch": epoch, "config": config.to_dict(),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": _rng_states(),
            "history": history, "best_val_loss": best_val, "best_epoch": best_epoch,
            "split": {"train": len(train_rows), "val": len(val_rows)},
        }
        save_checkpoint(weights_dir / cvae_checkpoint_name(epoch), checkpoint)
        if improved:
            save_checkpoint(weights_dir / CVAE_BEST_CHECKPOINT, checkpoint)
        write_csv_atomic(pd.DataFrame(history, columns=CVAE_LOG_COLUMNS), weights_dir / CVAE_LOG_CSV, float_format="%.6g")
        for old_epoch, old_path in epoch_checkpoints(weights_dir).items():
            if old_epoch <= epoch - keep_last:
                old_path.unlink(missing_ok=True)
        bar.set_postfix(train=f"{row['train_loss']:.1f}", val=f"{row['val_loss']:.1f}", kl=f"{row['train_kl']:.1f}")

    return TrainSummary(epochs - start_epoch, epochs, best_epoch, best_val, history[-1], weights_dir,
                        time.perf_counter() - started, device, len(train_rows), len(val_rows))
