"""CVAE checkpoints: written atomically, read with ``torch.load(weights_only=True)``, found in a weights folder;
and how a run aligned its crops (its ``alignment.csv``)."""

from __future__ import annotations

import io
import random
import re
from pathlib import Path

import numpy as np

from facepipe.common import FacepipeError, write_bytes_atomic
from facepipe.crops import CropAligner
from facepipe.cvae.model import CVAEConfig, build_model
from facepipe.formats import (
    ALIGNMENT_CSV,
    CVAE_BEST_CHECKPOINT,
    CVAE_CHECKPOINT_FORMAT,
    checked_fields,
    read_alignment,
)

CHECKPOINT_PATTERN = re.compile(r"^cvae_epoch_(\d+)\.pt$")


def crop_aligner(config: CVAEConfig, crops_dir: Path, weights_dir: str | Path | None) -> CropAligner | None:
    """How a run aligns its crops: None when it was trained unaligned, else a ``CropAligner`` that starts from
    the landmarks recorded in the ``alignment.csv`` of ``weights_dir`` (if given and there)."""
    if config.alignment == "none":
        return None
    recorded = None if weights_dir is None else Path(weights_dir) / ALIGNMENT_CSV
    known = read_alignment(recorded) if recorded is not None and recorded.is_file() else None
    return CropAligner(crops_dir, config.align_padding, known)


def rng_states() -> dict:
    import torch

    _, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": list(python_state), "gauss": gauss},
    }


def restore_rng_states(states: dict) -> None:
    import torch

    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = states["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss"]))


def save_checkpoint(path: str | Path, checkpoint: dict) -> None:
    """Write a checkpoint atomically (tensors, numbers, strings, lists and dicts only: loadable with weights_only).
    It is serialised in memory first: torch.save into a file on a full disk raises "basic_ios::clear", where
    ``write_bytes_atomic`` raises the OSError (no space left) that names the file."""
    import torch

    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    write_bytes_atomic(path, buffer.getvalue())


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
        raise FacepipeError(
            f"{path} is not a readable CVAE checkpoint (truncated or corrupt?): {first_line}"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CVAE_CHECKPOINT_FORMAT:
        raise FacepipeError(f"{path} is not a facepipe CVAE checkpoint")
    missing = [k for k in ("config", "model", "epoch") if k not in checkpoint]
    if missing:
        raise FacepipeError(f"{path} is an incomplete CVAE checkpoint (no {', '.join(missing)})")
    return checked_fields(checkpoint, path, {"config": dict, "model": dict, "epoch": int})


def load_cvae(path: str | Path, device: str = "cpu"):
    """Load a trained model for inference: returns (model in eval mode on ``device``, CVAEConfig, checkpoint dict)."""
    checkpoint = load_checkpoint(path)
    config = CVAEConfig.from_dict(checkpoint["config"])
    model = build_model(config)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise FacepipeError(
            f"{path}: weights do not fit the model its config describes: {str(error).splitlines()[0]}"
        ) from None
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
