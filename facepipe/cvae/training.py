"""Stage 4: train the conditional VAE on the crops of a clustering, each crop's cluster its condition.

An epoch's data order, flips, noise and random views depend only on (seed, epoch) and every checkpoint holds
the optimizer and the RNG states, so a killed and resumed run ends with the same weights as an uninterrupted
one. The layers and the loss are in ``cvae.model``, the checkpoint files in ``cvae.checkpoints``.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

from facepipe.common import (
    FacepipeError,
    progress,
    remove_own_temporaries,
    reproducible_torch,
    resolve_device,
    seed_everything,
)
from facepipe.crops import cluster_pixel_means, load_crops, masked_faces, read_training_inputs
from facepipe.cvae.checkpoints import (
    CHECKPOINT_PATTERN,
    crop_aligner,
    epoch_checkpoints,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from facepipe.cvae.model import (
    BEFORE_THEY_EXISTED,
    CVAEConfig,
    build_discriminator,
    build_model,
    cvae_loss,
    degraded_views,
    gaussian_blurred,
    hinge_losses,
)
from facepipe.formats import (
    ALIGNMENT_CSV,
    CVAE_BEST_CHECKPOINT,
    CVAE_CHECKPOINT_FORMAT,
    CVAE_LOG_COLUMNS,
    CVAE_LOG_CSV,
    CVAE_RECORD_JSON,
    checked_fields,
    cvae_checkpoint_name,
    output_hashes,
    read_embeddings,
    write_alignment,
    write_csv_atomic,
    write_json_atomic,
)
from facepipe.identity import (
    build_identity_term,
    central_members,
    clustered_embeddings_model,
    clustered_embeddings_path,
    identity_weight_for,
)
from facepipe.limits import usable_workers
from facepipe.locks import locks_output
from facepipe.owned import holds_recorded, recorded_outputs, remove_recorded
from facepipe.settings import TrainSettings

LOSS_PARTS = ("loss", "recon", "kl", "anchor", "identity", "draw_identity", "adversarial")
# Settings that must match for --resume to continue a run (epochs may grow; the rest may not change).
RESUME_KEYS = (
    "image_size",
    "alignment",
    "align_padding",
    "face_mask",
    "decoder_base",
    "latent_dim",
    "base_channels",
    "max_channels",
    "beta",
    "free_bits",
    "mean_anchor",
    "anchor_blur",
    "detail_weight",
    "identity_weight",
    "draw_identity",
    "identity_jitter",
    "identity_blur",
    "identity_views",
    "adversarial_weight",
    "learning_rate",
    "batch_size",
    "val_fraction",
    "seed",
    "clusters",
    "data_fingerprint",
)


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


@dataclass
class _Adversary:
    """The adversarial term's patch discriminator (``model.build_discriminator``) and its Adam optimizer."""

    discriminator: object
    optimizer: object

    @classmethod
    def of(cls, config: CVAEConfig, device: str) -> "_Adversary | None":
        """A fresh one for ``config``, None when its adversarial weight is 0 (no discriminator is built)."""
        import torch

        if config.adversarial_weight <= 0:
            return None
        discriminator = build_discriminator(config).to(device)
        return cls(
            discriminator, torch.optim.Adam(discriminator.parameters(), config.learning_rate, betas=(0.5, 0.9))
        )

    def state(self) -> dict:
        """What a checkpoint keeps of it."""
        return {
            "discriminator": self.discriminator.state_dict(),
            "discriminator_optimizer": self.optimizer.state_dict(),
        }

    def load(self, checkpoint: dict) -> None:
        self.discriminator.load_state_dict(checkpoint["discriminator"])
        self.optimizer.load_state_dict(checkpoint["discriminator_optimizer"])


def _epoch_generator(seed: int, epoch: int):
    """The generator that fixes an epoch's data order, flips and noise: a function of (seed, epoch) only."""
    import torch

    return torch.Generator().manual_seed(
        int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:8], "little") >> 1
    )


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

    @classmethod
    def nothing_to_do(cls, state: "_Progress", weights_dir: Path, seconds: float, device: str) -> "TrainSummary":
        """The summary of a rerun whose folder already holds every epoch asked for."""
        return cls(
            0,
            state.epoch,
            state.best_epoch,
            state.best_val,
            state.history[-1] if state.history else {},
            weights_dir,
            seconds,
            device,
            0,
            0,
        )

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
    """Refuse to continue a run whose settings differ; a setting its older version did not record is what it did
    then (``BEFORE_THEY_EXISTED``), so a run made before a term existed continues with the term off."""
    previous = {**BEFORE_THEY_EXISTED, **checkpoint["config"]}
    current = config.to_dict()
    changed = [k for k in RESUME_KEYS if previous.get(k) != current.get(k)]
    if changed:
        raise FacepipeError(
            f"{path} was trained with different {', '.join(changed)}: use the same settings to continue "
            f"(or skip) that run, or --force to start over"
        )


def _run_epoch(
    model,
    optimizer,
    dataset,
    order,
    flips,
    noise_generator,
    cluster_means,
    identity_term,
    adversary,
    config,
    device,
    train: bool,
    workers: int,
):
    """One pass over ``order``; returns per-image means of loss, recon, KL, anchor, identity, draw identity and
    the adversarial term (the loss is without it: cvae_best.pt is not picked by a moving discriminator).

    ``cluster_means`` (clusters, 3, S, S) are the targets of the z = 0 decodes; the anchor term is always
    measured but only trained on when ``config.mean_anchor`` > 0. ``identity_term`` (an ``IdentityTerm``, or
    None when ``config.identity_weight`` is 0 and the identity is not measured) scores the same z = 0 faces
    and, in training with ``config.draw_identity`` > 0, one face per cluster of the batch decoded from a random z.
    ``adversary`` (an ``_Adversary``, or None) judges the reconstructions, the z = 0 faces and, in training,
    those random draws against the batch's crops, and is trained on them after each step of the CVAE."""
    import torch

    on_cuda = device.startswith("cuda")
    totals = np.zeros(len(LOSS_PARTS))
    model.train(train)
    if adversary is not None:
        adversary.discriminator.train(train)
    for images, labels in _batches(dataset, order, flips, config.batch_size, device, workers):
        noise = torch.randn(len(labels), config.latent_dim, generator=noise_generator).to(device) if train else None
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda):
            with torch.set_grad_enabled(train):
                reconstruction, mu, logvar = model(images, labels, noise)
            with torch.set_grad_enabled(
                train and (config.mean_anchor > 0 or identity_term is not None or adversary is not None)
            ):
                # each cluster's z = 0 face once, then one per image (its gradient sums over the images)
                present, image_to_present = torch.unique(labels, return_inverse=True)
                present_faces = model.decode(mu.new_zeros(len(present), mu.shape[1]), present)
                draws = None
                if train and (adversary is not None or (identity_term is not None and config.draw_identity > 0)):
                    z = torch.randn(len(present), config.latent_dim, generator=noise_generator).to(device)
                    draws = model.decode(z.to(mu.dtype), present)  # one random draw per cluster
                identity, draw_identity = _identity_scores(
                    identity_term, present_faces, draws, present, config, noise_generator if train else None
                )
                identity = None if identity is None else identity[image_to_present]
                adversarial = judged = None
                if adversary is not None:
                    generated = [reconstruction, present_faces] + ([] if draws is None else [draws])
                    judged, adversarial = hinge_losses(adversary.discriminator, images, torch.cat(generated))
        loss, recon, kl, anchor, identity, draw_identity = cvae_loss(
            reconstruction,
            images,
            mu,
            logvar,
            present_faces[image_to_present],
            cluster_means[labels],
            identity,
            draw_identity,
            config.beta,
            config.mean_anchor,
            config.identity_weight,
            config.draw_identity,
            config.detail_weight,
            config.free_bits,
            config.anchor_blur * config.image_size / 64,
        )
        parts = [loss, recon, kl, anchor, identity, draw_identity]
        loss = loss if adversarial is None else loss + config.adversarial_weight * adversarial
        if train:
            _step(optimizer, loss)
            if adversary is not None:  # then the discriminator, on the same crops and faces
                _step(adversary.optimizer, judged)
        parts.append(recon.new_full((), math.nan) if adversarial is None else adversarial)
        totals += np.array([part.item() for part in parts]) * len(labels)
    return totals / max(1, len(order))


def _batches(dataset, order, flips, batch_size: int, device: str, workers: int):
    """The crops of ``order`` (flipped where ``flips``) in batches on ``device``: (images (N, 3, S, S) in [0, 1],
    condition indices)."""
    import torch
    from torch.utils.data import DataLoader

    keys = list(zip(order.tolist(), flips.tolist()))
    on_cuda = device.startswith("cuda")
    loader = DataLoader(
        dataset,
        batch_sampler=[keys[i : i + batch_size] for i in range(0, len(keys), batch_size)],
        num_workers=workers,
        pin_memory=on_cuda,
        persistent_workers=False,
    )
    for images, labels in loader:
        images = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        if on_cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        yield images, labels.to(device, non_blocking=True)


def _identity_scores(identity_term, faces, draws, conditions, config: CVAEConfig, generator):
    """The identity term (None, None without one) of each cluster's z = 0 face (``faces``, of the clusters with
    condition indices ``conditions``) and, with ``config.draw_identity`` > 0, of the random ``draws`` (None in
    validation), in one pass; the faces are seen through random views, and degraded ones with
    ``config.identity_views`` > 0 (``degraded_views``), when a ``generator`` is given (training)."""
    import torch

    if identity_term is None:
        return None, None
    count = len(conditions)
    if draws is not None and config.draw_identity > 0:
        faces, conditions = torch.cat([faces, draws]), torch.cat([conditions, conditions])
    scale = config.image_size / 64
    faces = gaussian_blurred(faces, config.identity_blur * scale)
    if generator is not None:
        faces = degraded_views(faces, generator, config.identity_views, config.identity_views * scale)
    scores = identity_term(faces, conditions, generator)
    return scores[:count], (scores[count:] if len(scores) > count else None)


def _step(optimizer, loss) -> None:
    """One optimizer step on ``loss``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _refuse_non_finite(row: dict, weights_dir: Path) -> None:
    """Stop a run whose loss went to nan or infinity (a learning rate or a weight too large): no checkpoint of
    that epoch is written, so nothing claims it trained."""
    broken = [key for key in ("train_loss", "val_loss") if not math.isfinite(row[key])]
    if broken:
        kept = f"; the checkpoints of epochs before it are kept in {weights_dir}" if row["epoch"] > 1 else ""
        raise FacepipeError(
            f"training diverged in epoch {row['epoch']}: {broken[0].replace('_', ' ')} is "
            f"{row[broken[0]]} (too high a --learning-rate, --beta or other weight, or a damaged "
            f"checkpoint resumed){kept}"
        )


def _is_output_name(name: str) -> bool:
    """A name train-cvae writes into its weights folder."""
    return (
        name in (CVAE_BEST_CHECKPOINT, CVAE_LOG_CSV, ALIGNMENT_CSV, CVAE_RECORD_JSON)
        or CHECKPOINT_PATTERN.fullmatch(name) is not None
    )


def _record(weights_dir: Path, written: list[Path] = (), removed: list[Path] = ()) -> dict[str, str]:
    """Update the record of what train-cvae wrote into ``weights_dir`` (``cvae_outputs.json``): the sha256 of
    the files ``written`` added, those ``removed`` (or gone) dropped; returns it."""
    outputs = recorded_outputs(weights_dir / CVAE_RECORD_JSON)
    outputs.update(output_hashes(weights_dir, written))
    gone = {path.name for path in removed}
    outputs = {name: digest for name, digest in outputs.items() if name not in gone and (weights_dir / name).exists()}
    write_json_atomic(weights_dir / CVAE_RECORD_JSON, {"outputs": outputs})
    return outputs


def _checkpoints_to_continue(weights_dir: Path, epochs: int, resume: bool, force: bool) -> dict[int, Path]:
    """The epoch checkpoints a run in ``weights_dir`` continues from (none after ``force``, which deletes those
    train-cvae recorded writing, and refuses to start while others are in the way)."""
    weights_dir.mkdir(parents=True, exist_ok=True)
    remove_own_temporaries(weights_dir, _is_output_name)
    existing = epoch_checkpoints(weights_dir)
    if force:
        recorded = recorded_outputs(weights_dir / CVAE_RECORD_JSON)
        in_the_way = [
            path
            for path in [
                *existing.values(),
                *(weights_dir / name for name in (CVAE_BEST_CHECKPOINT, CVAE_LOG_CSV, ALIGNMENT_CSV)),
            ]
            if os.path.lexists(path) and not holds_recorded(path, recorded.get(path.name, ""))
        ]
        if in_the_way:
            raise FacepipeError(
                f"{in_the_way[0]} was not written by train-cvae (or was changed since), so --force "
                "does not remove it: move it away, or train into another folder"
            )
        removed, _ = remove_recorded(weights_dir, recorded)
        _record(weights_dir, removed=removed)
        return {}
    if existing and not resume and max(existing) < epochs and not _stopped_short_of(existing, epochs):
        raise FacepipeError(
            f"{weights_dir} already holds checkpoints up to epoch {max(existing)}: "
            f"pass --resume to continue that run or --force to start over"
        )
    return existing


def _stopped_short_of(existing: dict[int, Path], epochs: int) -> bool:
    """True when the last checkpoint is of a run that asked for these ``epochs`` and stopped before them (killed,
    Ctrl-C, a full disk): a plain rerun of that command goes on from it (``--resume`` asks to go beyond a
    finished run)."""
    return load_checkpoint(existing[max(existing)])["config"].get("epochs") == epochs


@dataclass
class _Progress:
    """Where a run stands: the last epoch done, the log rows, the best validation loss and its epoch."""

    epoch: int = 0
    history: list = field(default_factory=list)
    best_val: float = math.inf
    best_epoch: int = 0


def _restore(model, optimizer, adversary, existing: dict[int, Path], config: CVAEConfig) -> _Progress:
    """Load the last checkpoint of ``existing`` into the model, the optimizer, the adversary (if not None) and the
    RNGs (if there is one)."""
    if not existing:
        return _Progress()
    last_path = existing[max(existing)]
    checkpoint = load_checkpoint(last_path)
    _check_resumable(checkpoint, config, last_path)
    kinds = {"optimizer": dict, "rng": dict, "history": list, "best_val_loss": numbers.Real, "best_epoch": int}
    if adversary is not None:
        kinds.update(discriminator=dict, discriminator_optimizer=dict)
    checked_fields(checkpoint, last_path, kinds, list(kinds))
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if adversary is not None:
            adversary.load(checkpoint)
        restore_rng_states(checkpoint["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
        raise FacepipeError(
            f"{last_path} cannot be resumed from (damaged?): {str(error).splitlines()[0]}; "
            "rerun with --force to start again"
        ) from None
    return _Progress(
        checkpoint["epoch"], list(checkpoint["history"]), float(checkpoint["best_val_loss"]), checkpoint["best_epoch"]
    )


@dataclass
class _TrainingData:
    """The crops in memory, their condition indices, the split, the clusters' pixel means and the identity term."""

    dataset: CachedCrops
    train_rows: np.ndarray
    val_rows: np.ndarray
    cluster_means: object  # (clusters, 3, S, S) float tensor in [0, 1] on the device
    identity_term: object  # identity.IdentityTerm, or None when its weight is 0


def _training_data(inputs, config: CVAEConfig, weights_dir: Path, device: str, show_progress: bool) -> _TrainingData:
    """Load (and align) the crops once, record their landmarks, and build what the epochs need."""
    import torch

    index_of = {cluster: i for i, cluster in enumerate(config.clusters)}
    labels = torch.tensor([index_of[int(c)] for c in inputs.clusters], dtype=torch.long)
    train_rows, val_rows = split_train_validation(labels.numpy(), config.val_fraction, config.seed)
    aligner = crop_aligner(config, inputs.crops_dir, weights_dir)
    crops = load_crops(inputs.names, inputs.crops_dir, config.image_size, show_progress, aligner)
    if config.face_mask != "none":
        crops = masked_faces(crops, labels.numpy(), range(config.num_classes), config.align_padding, train_rows)
    images = torch.from_numpy(crops)
    if aligner is not None:
        write_alignment(weights_dir / ALIGNMENT_CSV, {name: aligner.landmarks[name] for name in inputs.names})
        _record(weights_dir, [weights_dir / ALIGNMENT_CSV])
    # The targets of the z = 0 faces: each cluster's training crops (its base_crops nearest the centroid), unflipped,
    # as (clusters, 3, S, S) in [0, 1]: their pixel mean, or with decoder_base "median" their per-pixel median (the
    # decoder's base either way).
    train_names, train_labels = [inputs.names[row] for row in train_rows], labels.numpy()[train_rows]
    embeddings_path = embeddings = None
    if config.base_crops > 0 or config.identity_weight > 0:
        embeddings_path = clustered_embeddings_path(inputs.cluster_results)
        embeddings = read_embeddings(embeddings_path)
    base_rows = train_rows
    if config.base_crops > 0:
        base_rows = train_rows[central_members(embeddings, train_names, train_labels, config.base_crops)]
    means = cluster_pixel_means(
        images.numpy()[base_rows],
        labels.numpy()[base_rows],
        range(config.num_classes),
        median=config.decoder_base == "median",
    )
    cluster_means = torch.from_numpy(means / 255.0).float().permute(0, 3, 1, 2).contiguous().to(device)
    identity_term = None
    if config.identity_weight > 0:
        identity_term = build_identity_term(
            embeddings,
            embeddings_path,
            inputs.crops_dir,
            train_names,
            train_labels,
            (means + 0.5).astype(np.uint8),
            device,
            None if aligner is None else config.align_padding,
            config.identity_jitter,
        )
    return _TrainingData(CachedCrops(images, labels), train_rows, val_rows, cluster_means, identity_term)


def _train_one_epoch(
    model, optimizer, adversary, data: _TrainingData, config: CVAEConfig, epoch: int, device: str, workers: int
) -> dict:
    """Train one epoch and measure the validation loss -> the epoch's row of ``cvae_log.csv``; with PyTorch's
    deterministic kernels, so that the weights depend on the inputs and settings alone."""
    import torch

    started = time.perf_counter()
    generator = _epoch_generator(config.seed, epoch)
    order = torch.from_numpy(data.train_rows)[torch.randperm(len(data.train_rows), generator=generator)]
    flips = torch.rand(len(order), generator=generator) < 0.5
    with reproducible_torch():
        train_means = _run_epoch(
            model,
            optimizer,
            data.dataset,
            order,
            flips,
            generator,
            data.cluster_means,
            data.identity_term,
            adversary,
            config,
            device,
            True,
            workers,
        )
        val_means = train_means
        if len(data.val_rows):
            no_flips = torch.zeros(len(data.val_rows), dtype=torch.bool)
            val_means = _run_epoch(
                model,
                None,
                data.dataset,
                torch.from_numpy(data.val_rows),
                no_flips,
                None,
                data.cluster_means,
                data.identity_term,
                adversary,
                config,
                device,
                False,
                workers,
            )
    return {
        "epoch": epoch,
        **{f"train_{k}": float(v) for k, v in zip(LOSS_PARTS, train_means)},
        **{f"val_{k}": float(v) for k, v in zip(LOSS_PARTS, val_means)},
        "seconds": time.perf_counter() - started,
    }


def _save_epoch(
    weights_dir: Path,
    model,
    optimizer,
    adversary,
    config: CVAEConfig,
    state: _Progress,
    improved: bool,
    data: _TrainingData,
    keep_last: int,
) -> None:
    """The epoch's checkpoint (and ``cvae_best.pt`` when it improved), the log, and the old checkpoints removed."""
    checkpoint = {
        "format": CVAE_CHECKPOINT_FORMAT,
        "epoch": state.epoch,
        "config": config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_states(),
        "history": state.history,
        "best_val_loss": state.best_val,
        "best_epoch": state.best_epoch,
        "split": {"train": len(data.train_rows), "val": len(data.val_rows)},
        **({} if adversary is None else adversary.state()),
    }
    written = [weights_dir / cvae_checkpoint_name(state.epoch), weights_dir / CVAE_LOG_CSV]
    save_checkpoint(written[0], checkpoint)
    if improved:
        save_checkpoint(weights_dir / CVAE_BEST_CHECKPOINT, checkpoint)
        written.append(weights_dir / CVAE_BEST_CHECKPOINT)
    write_csv_atomic(
        pd.DataFrame(state.history, columns=CVAE_LOG_COLUMNS), weights_dir / CVAE_LOG_CSV, float_format="%.6g"
    )
    outputs = _record(weights_dir, written)
    old = {
        name: digest
        for name, digest in outputs.items()
        if CHECKPOINT_PATTERN.fullmatch(name)
        and int(CHECKPOINT_PATTERN.fullmatch(name).group(1)) <= state.epoch - keep_last
    }
    removed, _ = remove_recorded(weights_dir, old)  # only checkpoints this folder's runs recorded, unchanged
    if removed:
        _record(weights_dir, removed=removed)


def _model_config(settings: TrainSettings) -> CVAEConfig:
    """The checkpoint's record of ``settings``: every setting it shares with ``CVAEConfig`` (``align`` as its
    ``alignment``; the identity weight and the data's fields are filled in once the data is read)."""
    shared = {f.name for f in fields(CVAEConfig)} & set(TrainSettings.spec()) - {"identity_weight"}
    return CVAEConfig(alignment=settings.align, **{name: getattr(settings, name) for name in sorted(shared)})


@locks_output(lambda args: args["weights_dir"])
def train_cvae(
    cluster_results: str | Path,
    settings: TrainSettings | None = None,
    *,
    crops_dir: str | Path | None = None,
    weights_dir: str | Path = "weights",
    resume: bool = False,
    force: bool = False,
    show_progress: bool = True,
) -> TrainSummary:
    """Train the CVAE on the crops of ``cluster_results`` (not the unknown group); each epoch writes
    ``cvae_epoch_N.pt`` (the last ``keep_last`` kept), ``cvae_best.pt`` when the validation loss improves, and
    ``cvae_log.csv`` into ``weights_dir``; a killed (or full-disk) run, called again as it was, continues to the
    same weights, and ``resume`` continues a finished run to more ``epochs``. ``settings``: train-cvae's
    (``settings.TrainSettings``, its defaults when None); ``align``, ``face_mask``: see ``CVAEConfig``;
    ``identity_weight`` "auto": see ``identity.identity_weight_for``; ``base_crops`` is 0 (every crop) for
    clusters whose sidecars name no embeddings (no centroid to pick the crops nearest it)."""
    import torch

    started = time.perf_counter()
    settings = settings or TrainSettings()
    config = _model_config(settings)
    config.check()  # every setting, before any input is read
    device = resolve_device(settings.device)
    epochs, seed, keep_last, workers = settings.epochs, settings.seed, settings.keep_last, settings.workers
    inputs = read_training_inputs(cluster_results, crops_dir)
    embeddings_model = clustered_embeddings_model(inputs.cluster_results)
    identity_weight = identity_weight_for(settings.identity_weight, embeddings_model)
    config = replace(
        config,
        clusters=sorted(int(c) for c in np.unique(inputs.clusters)),
        identity_weight=float(identity_weight),
        base_crops=settings.base_crops if embeddings_model is not None else 0,  # no centroids: every crop
        cluster_results=str(inputs.cluster_results),
        crops_dir=str(inputs.crops_dir),
        data_fingerprint=inputs.fingerprint(),
    )
    weights_dir = Path(weights_dir)
    existing = _checkpoints_to_continue(weights_dir, epochs, resume, force)

    seed_everything(seed)
    model = build_model(config).to(device)
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    adversary = _Adversary.of(config, device)
    state = _restore(model, optimizer, adversary, existing, config)
    first_epoch = state.epoch + 1
    if state.epoch >= epochs:
        return TrainSummary.nothing_to_do(state, weights_dir, time.perf_counter() - started, device)
    data = _training_data(inputs, config, weights_dir, device, show_progress)
    model.set_base(data.cluster_means)

    bar = progress(range(first_epoch, epochs + 1), desc="train-cvae", unit="epoch", enabled=show_progress)
    for epoch in bar:
        row = _train_one_epoch(model, optimizer, adversary, data, config, epoch, device, usable_workers(workers))
        _refuse_non_finite(row, weights_dir)
        state.epoch = epoch
        state.history.append(row)
        improved = row["val_loss"] < state.best_val
        if improved:
            state.best_val, state.best_epoch = row["val_loss"], epoch
        _save_epoch(weights_dir, model, optimizer, adversary, config, state, improved, data, keep_last)
        bar.set_postfix(train=f"{row['train_loss']:.1f}", val=f"{row['val_loss']:.1f}", kl=f"{row['train_kl']:.1f}")

    return TrainSummary(
        epochs - first_epoch + 1,
        epochs,
        state.best_epoch,
        state.best_val,
        state.history[-1],
        weights_dir,
        time.perf_counter() - started,
        device,
        len(data.train_rows),
        len(data.val_rows),
    )
