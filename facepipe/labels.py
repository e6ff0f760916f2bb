"""Joining a label manifest (identity, bald, male...) to face crops."""

from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import Sequence

import numpy as np
import pandas as pd

from facepipe.common import FacepipeError
from facepipe.formats import DETECTIONS_CSV, read_csv, read_detections


def _parts(path: str) -> tuple[str, ...]:
    return tuple(p for p in PurePath(str(path).replace("\\", "/")).parts if p not in ("/", "."))


def crop_sources(names: Sequence[str], crops_dir: str | os.PathLike | None) -> dict[str, str]:
    """Map crop names to their source images, from the ``detections.csv`` beside the crops (if any)."""
    if crops_dir is None or not (Path(crops_dir) / DETECTIONS_CSV).is_file():
        return {}
    detections = read_detections(Path(crops_dir) / DETECTIONS_CSV)
    wanted = set(names)
    return {c: s for c, s in zip(detections["crop"], detections["source"]) if c in wanted}


def photo_ids(names: Sequence[str], sources: dict[str, str]) -> np.ndarray:
    """A number per face naming its source photo (``sources``: crop -> photo, from ``crop_sources``); a face
    of unknown source counts as its own photo."""
    keys = [sources.get(name, "\0" + name) for name in names]
    return np.unique(keys, return_inverse=True)[1].astype(np.int64)


def attach_labels(
    names: Sequence[str],
    manifest_path: str | os.PathLike,
    crops_dir: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Return one row per crop name with the manifest's columns (NaN where no manifest row matched).

    A manifest row matches a crop when its ``name`` column equals the crop name, or when its
    ``relpath`` (or ``name``) is a trailing part of the crop's name, of its source image's path (the
    source is read from the detections CSV in ``crops_dir``), or of its path inside ``crops_dir`` (for
    images embedded as they are, without detect). Tried in that order; the longest match wins. The
    column ``matched`` says whether a row was found; callers report the unmatched ones.
    """
    manifest = read_csv(manifest_path, what="label manifest")
    key_column = "relpath" if "relpath" in manifest.columns else "name" if "name" in manifest.columns else None
    if key_column is None:
        raise FacepipeError(f"{manifest_path}: a label manifest needs a 'relpath' or 'name' column")
    by_parts: dict[tuple[str, ...], int] = {}
    for row, key in enumerate(manifest[key_column].astype(str)):
        by_parts.setdefault(_parts(key), row)
    lengths = sorted({len(k) for k in by_parts}, reverse=True)
    sources = crop_sources(names, crops_dir)

    rows: list[int | None] = []
    for name in names:
        match = None
        in_folder = str(Path(crops_dir) / name) if crops_dir is not None else None
        for candidate in (name, sources.get(name), in_folder):
            if candidate is None:
                continue
            parts = _parts(candidate)
            for length in lengths:
                if length <= len(parts) and parts[-length:] in by_parts:
                    match = by_parts[parts[-length:]]
                    break
            if match is not None:
                break
        rows.append(match)

    label_columns = [c for c in manifest.columns if c not in ("name",)]
    joined = pd.DataFrame({"name": list(names), "source": [sources.get(n) for n in names]})
    matched_rows = manifest.reindex([r if r is not None else -1 for r in rows])[label_columns].reset_index(drop=True)
    joined = pd.concat([joined, matched_rows], axis=1)
    joined["matched"] = [r is not None for r in rows]
    return joined
