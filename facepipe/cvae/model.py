"""The conditional VAE itself: its settings (``CVAEConfig``), its layers and its loss.

The label enters both the encoder (one-hot, concatenated to the flattened convolutional features) and
the decoder (one-hot, concatenated to z, and a scale and shift per block). Layer sizes follow from the
image size: the encoder halves the image until it is at most 7 pixels (or odd), the decoder doubles it
back exactly. With ``decoder_base`` "mean" (or "median") the decoder adds its output to the logits of the
cluster's pixel mean (or per-pixel median), so it starts from that face and learns how a crop, or a draw,
differs from it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from facepipe import __version__
from facepipe.common import FacepipeError
from facepipe.formats import MAX_GROUP_NUMBER, UNKNOWN_CLUSTER
from facepipe.settings import ALIGNMENTS, DECODER_BASES, FACE_MASKS, MIN_IMAGE_SIZE, TrainSettings

# The settings of a checkpoint's config that have a range (the seed, the workers and keep_last are the
# training run's, checked by train_cvae itself).
CHECKED_SETTINGS = (
    "image_size",
    "latent_dim",
    "base_channels",
    "max_channels",
    "base_crops",
    "batch_size",
    "epochs",
    "beta",
    "free_bits",
    "mean_anchor",
    "anchor_blur",
    "detail_weight",
    "identity_weight",
    "adversarial_weight",
    "learning_rate",
    "draw_identity",
    "identity_jitter",
    "identity_views",
    "align_padding",
    "val_fraction",
)
# What the settings added over time meant before they existed: unaligned, unmasked crops, a plain decoder, terms off.
BEFORE_THEY_EXISTED = {
    "alignment": "none",
    "face_mask": "none",
    "decoder_base": "none",
    "base_crops": 0,
    "mean_anchor": 0.0,
    "detail_weight": 0.0,
    "identity_weight": 0.0,
    "draw_identity": 0.0,
    "identity_jitter": 0.0,
    "identity_blur": 0.0,
    "adversarial_weight": 0.0,
    "free_bits": 0.0,
    "anchor_blur": 0.0,
    "identity_views": 0.0,
}


@dataclass
class CVAEConfig:
    """Everything that defines a CVAE and its training run; stored as a plain dict in each checkpoint. The
    defaults are train-cvae's (``settings.TrainSettings``); a key missing from an older checkpoint means what
    that version did (BEFORE_THEY_EXISTED)."""

    image_size: int = TrainSettings.image_size
    alignment: str = TrainSettings.align  # how the crops were aligned: settings.ALIGNMENTS
    align_padding: float = TrainSettings.align_padding
    face_mask: str = TrainSettings.face_mask  # settings.FACE_MASKS: "landmarks" lays the aligned crops over grey
    latent_dim: int = TrainSettings.latent_dim
    base_channels: int = TrainSettings.base_channels
    max_channels: int = TrainSettings.max_channels
    clusters: list[int] = field(default_factory=list)  # condition index i <-> cluster id clusters[i]
    decoder_base: str = TrainSettings.decoder_base  # settings.DECODER_BASES: "median" adds to the cluster's median
    base_crops: int = TrainSettings.base_crops  # of the crops nearest the cluster's centroid (0: all)
    beta: float = TrainSettings.beta
    free_bits: float = TrainSettings.free_bits  # the KL of each latent dimension is penalised above this only
    mean_anchor: float = TrainSettings.mean_anchor
    anchor_blur: float = TrainSettings.anchor_blur  # the anchor compares the face and the mean low-passed
    detail_weight: float = TrainSettings.detail_weight  # the error of the images' Laplacians, beside the pixels'
    identity_weight: float = 0.0  # the number train_cvae resolved its "auto" to
    draw_identity: float = TrainSettings.draw_identity
    identity_jitter: float = TrainSettings.identity_jitter
    identity_views: float = TrainSettings.identity_views  # random blur and noise the identity term sees in training
    identity_blur: float = TrainSettings.identity_blur  # the identity term sees the faces low-passed
    adversarial_weight: float = TrainSettings.adversarial_weight  # a patch discriminator's, on the decoded faces
    learning_rate: float = TrainSettings.learning_rate
    batch_size: int = TrainSettings.batch_size
    epochs: int = TrainSettings.epochs
    val_fraction: float = TrainSettings.val_fraction
    seed: int = TrainSettings.seed
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
        """The config a checkpoint stores, checked (``check``) before any model is built from it."""
        if not isinstance(data, dict):
            raise FacepipeError("the checkpoint's config is not a table of settings")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        config = cls(**{**BEFORE_THEY_EXISTED, **known})
        config.check()
        return config

    def check(self) -> None:
        """Refuse sizes no model should be built with (a foreign or damaged checkpoint could ask for terabytes),
        non-finite, negative or out-of-range weights (which would train NaN) and unknown choices: the one check
        of the settings, for train-cvae's arguments and for every checkpoint loaded, against the limits of
        ``settings.TrainSettings``."""
        limits = TrainSettings.spec()
        for name in CHECKED_SETTINGS:
            value = getattr(self, name)
            if not limits[name].limit.admits(value):
                raise FacepipeError(
                    f"CVAE setting {_option(name)} = {value!r} must be {limits[name].limit.describe()}"
                )
        blur = limits["identity_blur"].limit
        if not blur.admits(self.identity_blur):
            raise FacepipeError(f"CVAE setting identity_blur = {self.identity_blur!r} must be {blur.describe()}")
        encoder_sizes(self.image_size)  # and divisible by 4
        if not isinstance(self.clusters, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and UNKNOWN_CLUSTER <= c <= MAX_GROUP_NUMBER
            for c in self.clusters
        ):
            raise FacepipeError(
                f"CVAE setting clusters must be a list of cluster ids (whole numbers from "
                f"{UNKNOWN_CLUSTER} to {MAX_GROUP_NUMBER})"
            )
        for name, choices in (("alignment", ALIGNMENTS), ("face_mask", FACE_MASKS), ("decoder_base", DECODER_BASES)):
            if getattr(self, name) not in choices:
                raise FacepipeError(
                    f"CVAE setting {_option(name)} = {getattr(self, name)!r}: use {' or '.join(choices)}"
                )
        if self.face_mask != "none" and self.alignment == "none":
            raise FacepipeError(
                f"CVAE setting {_option('face_mask')} = {self.face_mask!r} needs aligned crops: "
                f"use {_option('alignment')} dlib5 or {_option('face_mask')} none"
            )


def _option(name: str) -> str:
    """A CVAE setting as the checkpoint and the command line name it: ``mean_anchor (--mean-anchor)``."""
    return f"{name} (--{'align' if name == 'alignment' else name.replace('_', '-')})"


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


def norm_groups(channels: int) -> int:
    """The groups of the decoder's normalisation of a block this wide: each channel alone up to 8 channels,
    else 8 groups, or the most (2 or 4) that divide the channels evenly (e.g. 20 channels: 4 groups)."""
    return channels if channels <= 8 else math.gcd(8, channels)


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
            self.norms = nn.ModuleList(nn.GroupNorm(norm_groups(out), out, affine=False) for out in widths)
            self.styles = nn.ModuleList(nn.Embedding(n, 2 * out) for out in widths)
            for style in self.styles:
                nn.init.zeros_(style.weight)
            self.to_rgb = nn.Conv2d(widths[-1], 3, 3, 1, 1)
            # the logits of each cluster's pixel mean (set by train_cvae, kept in the checkpoint), or zeros
            self.register_buffer("base_logits", torch.zeros(n, 3, config.image_size, config.image_size))
            if config.decoder_base != "none":  # the decoder starts out as the pixel mean (or median)
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
            """Start each cluster's decodes from its pixel mean (or median: ``cluster_means``, (clusters, 3, S, S) in
            [0, 1])."""
            if self.config.decoder_base != "none":
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


def _build_discriminator_class():
    from torch import nn
    from torch.nn.utils.parametrizations import spectral_norm

    class PatchDiscriminator(nn.Module):
        """PatchGAN: a real-or-generated score for each overlapping patch (26 px across) of images in [0, 1]
        (N, 3, S, S) -> (N, 1, S/4, S/4); spectrally normalised, so its judgement changes smoothly."""

        def __init__(self, channels: int):
            super().__init__()
            widths = (3, channels, 2 * channels, 4 * channels)
            layers = []
            for i, (current, out) in enumerate(zip(widths, widths[1:])):
                stride = 2 if i < 2 else 1
                layers += [spectral_norm(nn.Conv2d(current, out, 4 - i // 2, stride, 1)), nn.LeakyReLU(0.2)]
            self.layers = nn.Sequential(*layers, spectral_norm(nn.Conv2d(widths[-1], 1, 3, 1, 1)))

        def forward(self, images):
            return self.layers(images * 2.0 - 1.0)

    return PatchDiscriminator


_DISCRIMINATOR_CLASS = None


def build_discriminator(config: CVAEConfig):
    """A freshly initialised ``PatchDiscriminator`` for the adversarial term of ``config`` (its first convolution
    as wide as the encoder's)."""
    global _DISCRIMINATOR_CLASS
    if _DISCRIMINATOR_CLASS is None:
        _DISCRIMINATOR_CLASS = _build_discriminator_class()
    return _DISCRIMINATOR_CLASS(config.base_channels)


def hinge_losses(discriminator, real, generated):
    """The hinge losses of a patch discriminator: its own (real patches scored above 1, generated ones below -1;
    the generated images detached) and the generator's (minus the score of its patches), each a mean over
    patches and images."""
    import torch

    own = (
        torch.relu(1.0 - discriminator(real.float())).mean()
        + torch.relu(1.0 + discriminator(generated.detach().float())).mean()
    )
    discriminator.requires_grad_(False)  # the generator's loss trains the decoder only
    generator = -discriminator(generated.float()).mean()
    discriminator.requires_grad_(True)
    return own, generator


def squared_error(images, targets):
    """Squared error summed over pixels, averaged over the images of a batch."""
    return (images.float() - targets.float()).pow(2).flatten(1).sum(dim=1).mean()


def laplacians(images):
    """The 3x3 Laplacian of each channel of images (N, C, S, S): their fine detail (edges, texture)."""
    import torch

    kernel = images.new_tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).expand(images.shape[1], 1, 3, 3)
    return torch.nn.functional.conv2d(images, kernel, padding=1, groups=images.shape[1])


def gaussian_blurred(images, sigma: float):
    """Each channel of images (N, C, S, S) blurred by a Gaussian of ``sigma`` pixels (reflected at the border);
    the images themselves for sigma 0. Its gradient is blurred alike, so a loss behind it cannot write detail
    finer than sigma into the images."""
    import torch

    if sigma <= 0:
        return images
    radius = max(1, math.ceil(3 * sigma))
    steps = torch.arange(-radius, radius + 1, dtype=torch.float32, device=images.device)
    weights = torch.exp(-0.5 * (steps / sigma) ** 2)
    weights = (weights / weights.sum()).to(images.dtype)
    channels = images.shape[1]
    rows = weights.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    padded = torch.nn.functional.pad(images, (radius, radius, radius, radius), mode="reflect")
    blurred = torch.nn.functional.conv2d(padded, rows, groups=channels)
    return torch.nn.functional.conv2d(blurred, rows.transpose(2, 3), groups=channels)


# The pixel noise of the identity term's degraded views at strength 1 (``degraded_views``), images in [0, 1].
VIEW_NOISE = 0.02


def degraded_views(images, generator, strength: float, sigma: float):
    """Each image of (N, C, S, S) seen as a worse photo of it, at random (``generator``): blended towards its
    Gaussian blur of ``sigma`` pixels by a uniform share, plus Gaussian pixel noise of a uniform share of
    ``strength`` x VIEW_NOISE; the images themselves for strength 0."""
    import torch

    if strength <= 0:
        return images
    shares = torch.rand(len(images), 2, generator=generator).to(images.device, images.dtype)[:, :, None, None, None]
    noise = torch.randn(images.shape, generator=generator).to(images.device, images.dtype)
    blended = images + shares[:, 0] * (gaussian_blurred(images, sigma) - images)
    return blended + shares[:, 1] * (strength * VIEW_NOISE) * noise


def cvae_loss(
    reconstruction,
    target,
    mu,
    logvar,
    centre_faces,
    cluster_means,
    identity,
    draw_identity,
    beta: float,
    mean_anchor: float,
    identity_weight: float,
    draw_weight: float,
    detail_weight: float = 0.0,
    free_bits: float = 0.0,
    anchor_blur: float = 0.0,
):
    """Per-image means of: total = recon + beta * KL + mean_anchor * anchor
    + identity_weight * (identity + draw_weight * draw_identity).

    recon is the squared error summed over pixels, plus ``detail_weight`` times that of the images' Laplacians
    (``laplacians``: a blurred reconstruction misses them), KL is summed over z, anchor is the squared error between
    each image's cluster decoded at z = 0 (``centre_faces``) and that cluster's pixel mean (``cluster_means``), both
    blurred by a Gaussian of ``anchor_blur`` pixels (``gaussian_blurred``; 0: as they are),
    ``identity`` (per image, or None when not measured) is 1 - cosine between the embedding of that face
    and the cluster's centroid, and ``draw_identity`` (or None) the same for faces decoded from z ~ N(0, I).
    With ``free_bits`` > 0 the trained KL is each dimension's (averaged over the batch) raised to at least that many
    nats (free bits: no pull towards the prior below it); the KL returned is the true one.
    """
    recon = squared_error(reconstruction, target)
    if detail_weight > 0:
        recon = recon + detail_weight * squared_error(laplacians(reconstruction.float()), laplacians(target.float()))
    kl_each = -0.5 * (1.0 + logvar.float() - mu.float().pow(2) - logvar.float().exp())
    kl = kl_each.sum(dim=1).mean()
    trained_kl = kl if free_bits <= 0 else kl_each.mean(dim=0).clamp(min=free_bits).sum()
    anchor = squared_error(gaussian_blurred(centre_faces, anchor_blur), gaussian_blurred(cluster_means, anchor_blur))
    total = recon + beta * trained_kl + mean_anchor * anchor
    not_measured = recon.new_full((), math.nan)
    if identity is None:
        return total, recon, kl, anchor, not_measured, not_measured
    identity = identity.float().mean()
    total = total + identity_weight * identity
    if draw_identity is None:
        return total, recon, kl, anchor, identity, not_measured
    draw_identity = draw_identity.float().mean()
    return total + identity_weight * draw_weight * draw_identity, recon, kl, anchor, identity, draw_identity
