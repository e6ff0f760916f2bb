"""The embedder registry: each model's name, the class that embeds with it, the precisions it runs in, its
own options and where its weights come from; ``load_embedder`` builds one by name, ``embedder_like`` the one
that made a set of embeddings. A new embedder is one entry here (and its module beside this one).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from facepipe.common import FacepipeError
from facepipe.formats import Embeddings, sidecar_path
from facepipe.models import DLIB_RESNET128, MODEL_NAMES, PRECISIONS, VGGFACE2_RESNET50, Embedder
from facepipe.settings import EmbedSettings


@dataclass(frozen=True)
class EmbedderEntry:
    """One model: ``module:class`` of its embedder, the precisions it runs in, whether its options are the
    dlib chip's (``--dlib-crop``, ``--dlib-padding``), and the function that finds (or fetches) its weights
    file (None: the model's package ships them)."""

    name: str
    embedder: str
    precisions: tuple[str, ...]
    dlib_options: bool
    weights: Callable[..., Path] | None = None
    bf16_where_native: bool = False  # precision "auto": bf16 where the hardware computes it natively

    def embedder_class(self) -> type:
        module, _, name = self.embedder.partition(":")
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError as error:
            raise FacepipeError(f"{self.name} is not available in this installation ({error})") from None


def _vggface2_weights(weights, show_progress: bool) -> Path:
    from facepipe.models.weights import ensure_vggface2_weights

    return ensure_vggface2_weights(weights, show_progress=show_progress)


EMBEDDERS = {
    VGGFACE2_RESNET50: EmbedderEntry(
        VGGFACE2_RESNET50,
        "facepipe.models.vggface2:VGGFace2ResNet50Embedder",
        PRECISIONS,
        dlib_options=False,
        weights=_vggface2_weights,
        bf16_where_native=True,
    ),
    DLIB_RESNET128: EmbedderEntry(
        DLIB_RESNET128, "facepipe.models.dlib_resnet:DlibResNet128Embedder", ("fp32",), dlib_options=True
    ),
}
assert tuple(EMBEDDERS) == MODEL_NAMES


def native_bf16(device: str = "auto") -> bool:
    """True where bfloat16 is computed natively: a CUDA device that supports it, or a CPU with AMX-BF16 or
    AVX-512 BF16 (Linux's /proc/cpuinfo flags); bf16 ran vggface2-resnet50 at 33 crops/s against fp32's 21 on
    such an AMD CPU, 112 against 39 on an AMX Xeon, at a cosine to fp32 of 0.999994 (benchmarks/README.md)."""
    import torch

    from facepipe.common import resolve_device

    if resolve_device(device).startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def load_embedder(
    model: str = EmbedSettings.model,
    *,
    weights: str | os.PathLike | None = EmbedSettings.weights,
    batch_size: int = EmbedSettings.batch_size,
    device: str = EmbedSettings.device,
    precision: str = EmbedSettings.precision,
    face_margin: float | None = None,
    dlib_crop: str = EmbedSettings.dlib_crop,
    dlib_padding: float = EmbedSettings.dlib_padding,
    dlib_mirror: bool = EmbedSettings.dlib_mirror,
    show_progress: bool = True,
) -> Embedder:
    """Build the named model (``EMBEDDERS``). ``face_margin`` tells dlib where the face is in a detect crop (see
    dlib_resnet). ``precision`` "auto": bf16 where the model and the hardware compute it natively, else fp32."""
    if model not in EMBEDDERS:
        raise FacepipeError(f"unknown model {model!r}: choose one of {', '.join(MODEL_NAMES)}")
    entry = EMBEDDERS[model]
    if precision not in (*PRECISIONS, "auto"):
        raise FacepipeError(f"unknown precision {precision!r}: use fp32, bf16 or auto")
    if precision == "auto":
        precision = "bf16" if entry.bf16_where_native and native_bf16(device) else "fp32"
    if precision not in entry.precisions:
        raise FacepipeError(f"{model} runs in {' or '.join(entry.precisions)} only; drop --precision {precision}")
    if entry.dlib_options:
        return entry.embedder_class()(
            face_margin=face_margin,
            device=device,
            batch_size=batch_size,
            crop=dlib_crop,
            padding=dlib_padding,
            mirror=dlib_mirror,
        )
    if (dlib_crop, dlib_padding, dlib_mirror) != (
        EmbedSettings.dlib_crop,
        EmbedSettings.dlib_padding,
        EmbedSettings.dlib_mirror,
    ):
        raise FacepipeError("--dlib-crop, --dlib-padding and --no-dlib-mirror apply to dlib-resnet128 only")
    kind = entry.embedder_class()
    return kind(entry.weights(weights, show_progress), device=device, precision=precision, batch_size=batch_size)


def embedder_settings(meta: dict) -> dict:
    """The embed settings an embeddings sidecar records (model, precision, dlib crop, padding and mirror), so
    that new faces are embedded the way the crops were."""
    padding = meta.get("chip_padding")
    settings = {
        "model": meta.get("model"),
        "precision": meta.get("precision") or "fp32",
        "dlib_crop": meta.get("crop") or EmbedSettings.dlib_crop,
        "dlib_padding": EmbedSettings.dlib_padding if padding is None else float(padding),
    }
    if meta.get("model") == DLIB_RESNET128:
        settings["dlib_mirror"] = bool(meta.get("mirror"))  # dlib sidecars from before the mirror: single views
    return settings


def embedder_like(
    embeddings: Embeddings, source: str | os.PathLike, device: str = "auto", face_margin: float | None = None
) -> Embedder:
    """The embedder that made ``embeddings`` (read from ``source``), set up as its sidecar says
    (``embedder_settings``, and its face margin) but in fp32, as the fidelity checks compare; ``face_margin``
    replaces the recorded margin, for faces framed otherwise than the crops (e.g. landmark-aligned ones)."""
    if not embeddings.model:
        raise FacepipeError(f"{sidecar_path(source)} does not say which model made the embeddings")
    face_margin = embeddings.meta.get("face_margin") if face_margin is None else face_margin
    settings = dict(embedder_settings(embeddings.meta), model=embeddings.model, precision="fp32")
    return load_embedder(**settings, device=device, face_margin=face_margin, show_progress=False)
