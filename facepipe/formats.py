"""Every file facepipe reads or writes, defined in one place.

Stage outputs (all CSV/JSON/NPZ are written atomically):

detect   -> OUT/detections.csv   one row per face crop (DETECTION_COLUMNS)
            OUT/sources.csv      one row per input image processed (SOURCE_COLUMNS); drives resume
            OUT/errors.csv       the unreadable inputs (ERROR_COLUMNS)
            OUT/detect.json      detector parameters used
embed    -> image_features.csv   ``name, e0..e{D-1}`` (or .npz with ``names`` and ``vectors``)
            image_features.csv.json  sidecar: model, dimension, preprocessing, weights sha256, version,
                                     the data file's sha256 (data_sha256, checked on every read)
cluster  -> cluster_results.csv  ``name, cluster, distance`` (CLUSTER_COLUMNS)
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import re
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from facepipe.common import FacepipeError, file_sha256, write_bytes_atomic, write_text_atomic

DETECTIONS_CSV = "detections.csv"
SOURCES_CSV = "sources.csv"
ERRORS_CSV = "errors.csv"
DETECT_PARAMS_JSON = "detect.json"
EMBEDDINGS_CSV = "image_features.csv"
CLUSTER_RESULTS_CSV = "cluster_results.csv"

DETECTION_COLUMNS = [
    "crop",
    "source",
    "face_index",
    "x",
    "y",
    "w",
    "h",
    "source_width",
    "source_height",
    "detector",
    "score",
    "sha256",
]  # sha256: of the crop file as written (a rerun redoes a crop changed since)
CROP_SOURCE_COLUMNS = ["crop", "source"]  # what readers of a detections CSV need (files of older versions have them)
SOURCE_COLUMNS = ["source", "status", "faces", "reason"]
ERROR_COLUMNS = ["path", "reason"]
CLUSTER_COLUMNS = ["name", "cluster", "distance"]
UNKNOWN_CLUSTER = -1  # the cluster id of a face that matches no group (group ids are 0 and up)
EMBEDDING_PREFIX = "e"
LOCK_FILE = ".facepipe.lock"  # in every output folder: who holds it (facepipe.locks); never an output itself


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    """Read a JSON file holding an object (every JSON file facepipe writes is one), with a clear error when it
    is missing, broken, or holds anything else."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FacepipeError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FacepipeError(f"{path} is not valid JSON: {error}") from None
    except RecursionError:
        raise FacepipeError(f"{path} is not valid JSON: nested too deep") from None
    if not isinstance(data, dict):
        raise FacepipeError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data


# A text cell that a spreadsheet would run as a formula (=, +, -, @, tab, CR first) is written with a "'" before
# it, as OWASP advises; read_csv takes that "'" off again, so names round-trip exactly.
_FORMULA_LIKE = re.compile(r"^'*[=+\-@\t\r]")


def _text_columns(frame: pd.DataFrame) -> list:
    return [c for c in frame.columns if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c].dtype)]


def _escape_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    columns = [c for c in _text_columns(frame) if frame[c].astype(str).str.match(_FORMULA_LIKE).any()]
    if not columns:
        return frame
    frame = frame.copy()
    for column in columns:
        frame[column] = frame[column].map(lambda v: "'" + v if isinstance(v, str) and _FORMULA_LIKE.match(v) else v)
    return frame


def _unescape_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    for column in _text_columns(frame):
        escaped = frame[column].astype(str).str.match(r"^'+[=+\-@\t\r]")
        if escaped.any():
            frame.loc[escaped, column] = frame.loc[escaped, column].str.slice(1)
    return frame


def csv_text(frame: pd.DataFrame, float_format: str | None = None) -> str:
    """The text ``write_csv_atomic`` writes for ``frame``: where a text cell holds a carriage return (which
    the csv module does not quote, and a reader takes for a line end) every text cell is quoted."""
    buffer = io.StringIO()
    has_cr = any(frame[c].astype(str).str.contains("\r", regex=False).any() for c in _text_columns(frame))
    _escape_formulas(frame).to_csv(
        buffer, index=False, float_format=float_format, quoting=csv.QUOTE_NONNUMERIC if has_cr else csv.QUOTE_MINIMAL
    )
    return buffer.getvalue()


def write_csv_atomic(
    frame: pd.DataFrame, path: str | os.PathLike, float_format: str | None = None, keep_if_same: bool = False
) -> None:
    """Write a DataFrame as CSV (no index), atomically; formula-like text cells are escaped (see read_csv).
    With ``keep_if_same`` a file that already holds exactly this text is left untouched."""
    text = csv_text(frame, float_format)
    if keep_if_same and Path(path).is_file() and Path(path).read_bytes() == text.encode("utf-8"):
        return
    write_text_atomic(path, text)


def own_csv_output(path: str | os.PathLike, columns: Sequence[str], what: str) -> Path:
    """``path`` (absolute) for a CSV of ``columns``, unless a folder or a file other than such a CSV (an earlier
    output) is there: facepipe never overwrites it."""
    path = Path(os.path.abspath(path))
    if path.is_dir():
        raise FacepipeError(f"{path} is a folder: give a file name for the {what} CSV")
    if path.exists():
        with open(path, encoding="utf-8", errors="replace") as existing:
            header = existing.readline().strip()
        if header != ",".join(columns):
            raise FacepipeError(
                f"{path} exists and is not a {what} CSV: facepipe does not overwrite it; choose another file name"
            )
    return path


def write_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write arrays into an uncompressed ``.npz``, atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())


def read_csv(
    path: str | os.PathLike, required: Sequence[str] = (), what: str = "CSV", text: Sequence[str] = ()
) -> pd.DataFrame:
    """Read a CSV, checking that it exists, parses, and has the ``required`` columns; the ``text`` columns are
    kept as written ("NA", "007" stay strings; an empty cell is ""; with ``text`` no cell is taken for missing)."""
    path = Path(path)
    if not path.is_file():
        raise FacepipeError(f"{what} not found: {path}")
    try:
        frame = pd.read_csv(path, dtype={c: str for c in text}, keep_default_na=not text)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as error:
        raise FacepipeError(f"{path} is not a readable {what}: {error}") from None
    if not isinstance(frame.index, pd.RangeIndex):  # pandas turns extra values in the first rows into an index
        raise FacepipeError(
            f"{path} is not a readable {what}: some rows have more values than the header has columns"
        )
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise FacepipeError(f"{path} lacks the column(s) {', '.join(missing)} of a {what}")
    return _unescape_formulas(frame)


# --- checking what a stage reads -------------------------------------------------------------------
# Every reader checks the values it hands on: a bad one is one FacepipeError naming the file and, in a CSV,
# the row (the file's line: the header is row 1) and the column, e.g.
# "cluster_results.csv row 7, column cluster: 2.5 is not a whole number".

MAX_GROUP_NUMBER = 1_000_000  # the largest group number a clustering may hold where no centroids.csv bounds it
FLOAT32_MAX = float(np.finfo(np.float32).max)  # vectors are float32: a larger value would read as infinity


def _place(path: str | os.PathLike, row: int | None = None, column: str | None = None) -> str:
    """``path row N, column C`` (``row`` counted from 0 over the data rows)."""
    place = f"{path} row {row + 2}" if row is not None else str(path)
    return f"{place}, column {column}" if column else place


def _shown(value: Any) -> str:
    """A CSV cell (or bound) as a message shows it: text quoted, a whole float without its ".0", at most 40 characters."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return _clipped(repr(value) if isinstance(value, str) else str(value))


def _clipped(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def checked_numbers(
    frame: pd.DataFrame,
    columns: Sequence[str],
    path: str | os.PathLike,
    *,
    whole: bool = False,
    low: float | None = None,
    high: float | None = None,
    missing_ok: bool = False,
) -> np.ndarray:
    """The ``columns`` of a CSV's ``frame`` as a float64 array (rows, columns), every cell checked to be a finite
    number (empty only with ``missing_ok``: NaN), whole with ``whole``, from ``low`` to ``high``; the first cell
    that is not is a FacepipeError naming the file, its row and column, and why."""
    cells = frame[list(columns)]
    if all(pd.api.types.is_numeric_dtype(d) and not pd.api.types.is_bool_dtype(d) for d in cells.dtypes):
        values = cells.to_numpy(dtype=np.float64, na_value=np.nan)  # the usual case, at once: no text anywhere
        empty = np.isnan(values)
        if _all_in_range(values, empty, whole, low, high, missing_ok):
            return values
    else:
        values, empty = _cell_numbers(cells)
    bad = _bad_cells(values, empty, whole, low, high, missing_ok)
    if bad.any():
        row, index = (int(i) for i in np.argwhere(bad)[0])
        value = values[row, index]
        if empty[row, index]:
            why = "the cell is empty"
        elif np.isnan(value):
            why = f"{_shown(cells.iat[row, index])} is not a number"
        elif not np.isfinite(value):
            why = f"{_shown(cells.iat[row, index])} is not a finite number"
        elif whole and value % 1:
            why = f"{_shown(cells.iat[row, index])} is not a whole number"
        else:
            span = " ".join(
                f"{word} {_shown(bound)}"
                for word, bound in (("from", low), ("up to" if low is None else "to", high))
                if bound is not None
            )
            why = f"{_shown(cells.iat[row, index])} is out of range (must be {span})"
        raise FacepipeError(f"{_place(path, row, columns[index])}: {why}")
    return values


def _bad_cells(
    values: np.ndarray, empty: np.ndarray, whole: bool, low: float | None, high: float | None, missing_ok: bool
) -> np.ndarray:
    """Where a cell breaks a rule of ``checked_numbers`` (values NaN where not a number, ``empty`` where empty)."""
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values)
        if whole:
            bad |= values % 1 != 0
        if low is not None:
            bad |= values < low
        if high is not None:
            bad |= values > high
    return bad & ~empty if missing_ok else bad


def well_formed_rows(frame: pd.DataFrame, rules: dict[str, dict]) -> np.ndarray:
    """A bool per row of ``frame``: True where every column of ``rules`` (column -> ``checked_numbers``
    keywords) that the frame has passes its rule (for a reader that redoes a bad row instead of refusing)."""
    good = np.ones(len(frame), dtype=bool)
    for column, rule in rules.items():
        if column in frame.columns:
            values, empty = _cell_numbers(frame[[column]])
            good &= ~_bad_cells(
                values,
                empty,
                rule.get("whole", False),
                rule.get("low"),
                rule.get("high"),
                rule.get("missing_ok", False),
            )[:, 0]
    return good


def _all_in_range(
    values: np.ndarray, empty: np.ndarray, whole: bool, low: float | None, high: float | None, missing_ok: bool
) -> bool:
    """True when no cell of a column block that holds only numbers (NaN where ``empty``) breaks a rule of
    ``checked_numbers``: a few passes over a large block (embeddings) instead of a mask per rule."""
    if not values.size or empty.all():
        return missing_ok or not values.size
    if not missing_ok and empty.any():
        return False
    least, most = np.fmin.reduce(values, axis=None), np.fmax.reduce(values, axis=None)  # NaN (empty) ignored
    if not (math.isfinite(least) and math.isfinite(most)):
        return False
    if (low is not None and least < low) or (high is not None and most > high):
        return False
    return not whole or not np.any(np.fmod(values[~empty], 1))


def _cell_numbers(cells: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The cells as float64 (NaN where not a number) and where they are empty, column by column."""
    empty = cells.isna().to_numpy().copy()
    values = np.empty(cells.shape, dtype=np.float64)
    for index, column in enumerate(cells.columns):
        series = cells[column]
        if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
            empty[:, index] |= (series.astype(str).str.strip() == "").to_numpy()
        if pd.api.types.is_bool_dtype(series):
            values[:, index] = np.nan  # True / False: text, not a number
        elif pd.api.types.is_numeric_dtype(series):
            values[:, index] = series.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            values[:, index] = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return values, empty


def checked_whole_numbers(
    frame: pd.DataFrame, column: str, path: str | os.PathLike, low: int, high: int, unique: bool = False
) -> np.ndarray:
    """One column of whole numbers from ``low`` to ``high`` (each once with ``unique``), as int64; see
    ``checked_numbers``."""
    values = checked_numbers(frame, [column], path, whole=True, low=low, high=high)[:, 0].astype(np.int64)
    if unique:
        _check_unique(values, column, path)
    return values


def checked_names(frame: pd.DataFrame, column: str, path: str | os.PathLike, unique: bool = True) -> list[str]:
    """One column of names (file names, photo paths) as text: none empty, each once (with ``unique``)."""
    names = frame[column]
    empty = np.flatnonzero(names.isna().to_numpy() | (names.astype(str).str.strip() == "").to_numpy())
    if empty.size:
        raise FacepipeError(f"{_place(path, int(empty[0]), column)}: the cell is empty")
    names = names.astype(str).tolist()
    if unique:
        _check_unique(names, column, path)
    return names


def _check_unique(values: Sequence, column: str, path: str | os.PathLike) -> None:
    seen: dict = {}
    for row, value in enumerate(values):
        if value in seen:
            raise FacepipeError(
                f"{_place(path, row, column)}: {_shown(value)} appears again (first in row {seen[value] + 2})"
            )
        seen[value] = row


def checked_fields(
    data: dict, path: str | os.PathLike, kinds: dict[str, type | tuple], required: Sequence[str] = ()
) -> dict:
    """``data`` (a JSON object read from ``path``) with each field of ``kinds`` that it holds (and is not null)
    checked to be of that type (a bool is never a number; ``float`` is a finite number, ``numbers.Real`` any,
    NaN included), and the ``required`` fields there; returns ``data``."""
    missing = [key for key in required if key not in data]
    if missing:
        raise FacepipeError(f"{path} lacks {', '.join(missing)}")
    for key, kind in kinds.items():
        value = data.get(key)
        kinds_of = kind if isinstance(kind, tuple) else (kind,)
        if value is not None and not any(_is_json_kind(value, k) for k in kinds_of):
            names = " or ".join(_JSON_KIND_NAMES.get(k, k.__name__) for k in kinds_of)
            raise FacepipeError(f"{path}: {key} must be {names}, not {_clipped(json.dumps(value, default=str))}")
    return data


def _is_json_kind(value: Any, kind: type) -> bool:
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return _is_finite_number(value)
    return isinstance(value, kind)


_JSON_KIND_NAMES = {
    str: "text",
    int: "a whole number",
    float: "a finite number",
    numbers.Real: "a number",
    bool: "true or false",
    dict: "an object",
    list: "a list",
}


def json_object(data: dict, key: str, path: str | os.PathLike) -> dict:
    """The JSON object ``data[key]`` (an empty one where there is none); anything else is a FacepipeError."""
    return checked_fields(data, path, {key: dict}).get(key) or {}


# The numbers of a detections.csv row (``checked_numbers`` keywords): a row breaking one is damaged.
DETECTION_NUMBER_RULES = {
    "face_index": dict(whole=True, low=0),
    "x": dict(whole=True),
    "y": dict(whole=True),
    "w": dict(whole=True, low=0),
    "h": dict(whole=True, low=0),
    "source_width": dict(whole=True, low=0),
    "source_height": dict(whole=True, low=0),
    "score": dict(missing_ok=True),
}


def read_detections(path: str | os.PathLike) -> pd.DataFrame:
    """A crops folder's ``detections.csv`` as embed, cluster and export read it: at least CROP_SOURCE_COLUMNS,
    ``crop`` and ``source`` text (kept as written), neither empty, each crop once, a crop named inside the
    folder (relative, no ``..``); the numbers of DETECTION_NUMBER_RULES it has, checked. A bad row is a
    FacepipeError that says a detect rerun redoes that photo."""
    frame = read_csv(path, CROP_SOURCE_COLUMNS, "detections CSV", text=CROP_SOURCE_COLUMNS)
    redo = "; a detect rerun into that folder redoes the photo"
    try:
        crops = checked_names(frame, "crop", path)
        checked_names(frame, "source", path, unique=False)
        for row, crop in enumerate(crops):
            if Path(crop).is_absolute() or ".." in Path(crop).parts:
                raise FacepipeError(f"{_place(path, row, 'crop')}: {_shown(crop)} is not a crop of this folder")
        for column, rule in DETECTION_NUMBER_RULES.items():
            if column in frame.columns:
                checked_numbers(frame, [column], path, **rule)
    except FacepipeError as error:
        raise FacepipeError(f"{error}{redo}") from None
    return frame


def cluster_results_path(path: str | os.PathLike) -> Path:
    """``cluster_results.csv`` as given, or inside the cluster (or run) folder given; absolute."""
    path = Path(os.path.abspath(path))
    return path / CLUSTER_RESULTS_CSV if path.is_dir() else path


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON file describing a data file: ``image_features.csv`` -> ``image_features.csv.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_sidecar(data_file: str | os.PathLike, kinds: dict[str, type | tuple]) -> dict:
    """The sidecar JSON object of ``data_file`` (empty where there is none), its fields ``kinds`` checked
    (``checked_fields``)."""
    meta_file = sidecar_path(data_file)
    return checked_fields(read_json(meta_file), meta_file, kinds) if meta_file.is_file() else {}


def recorded_path(value: str | os.PathLike, data_file: str | os.PathLike) -> Path:
    """A path recorded in the sidecar of ``data_file`` (e.g. its ``crops_dir`` or ``embeddings``): absolute as
    it is; a relative one from the data file's folder (so a moved run folder still works), or, where nothing
    is there but it exists from the current folder (hand-written sidecars), from the current folder."""
    path = Path(value)
    if path.is_absolute():
        return path
    beside = Path(data_file).parent / path
    return path if not beside.exists() and path.exists() else beside


def path_in_sidecar(data_file: str | os.PathLike, key: str, kinds: dict[str, type | tuple], refusal: str) -> Path:
    """The path the sidecar of ``data_file`` records as ``key`` (``read_sidecar``, ``recorded_path``); where it
    records none, a FacepipeError ``refusal`` ("{sidecar}" in it: the sidecar's path)."""
    value = read_sidecar(data_file, kinds).get(key)
    if not value:
        raise FacepipeError(refusal.format(sidecar=sidecar_path(data_file)))
    return recorded_path(value, data_file)


def output_hashes(folder: str | os.PathLike, paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """Each output file (as a path relative to ``folder``, where the sidecar that commits them lies) -> its
    sha256: what a stage's sidecar records, written last, so that a rerun trusts only outputs that match it."""
    return {os.path.relpath(path, folder): file_sha256(path) for path in paths}


def outputs_match(folder: str | os.PathLike, recorded: dict | None) -> bool:
    """True when every file ``output_hashes`` recorded is there with the same sha256 (False when none was)."""
    if not isinstance(recorded, dict) or not recorded:
        return False
    for relative, digest in recorded.items():
        path = Path(folder) / relative
        if not path.is_file() or file_sha256(path) != digest:
            return False
    return True


class UnmatchedSidecarError(FacepipeError):
    """A data file whose sha256 is not the one its sidecar recorded: neither can be trusted."""


@dataclass
class Embeddings:
    """Face embeddings: one row of ``vectors`` per crop ``names[i]``, and the sidecar's metadata."""

    names: list[str]
    vectors: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def model(self) -> str | None:
        return self.meta.get("model")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


EMBEDDINGS_SIDECAR_FIELDS = {
    "model": str,
    "dimension": int,
    "count": int,
    "data_sha256": str,
    "crops_dir": str,
    "precision": str,
    "crop": str,
    "chip_padding": float,
    "mirror": bool,
    "face_margin": float,
}


def embedding_columns(dim: int) -> list[str]:
    """``e0 .. e{dim-1}``."""
    return [f"{EMBEDDING_PREFIX}{i}" for i in range(dim)]


def write_embeddings(path: str | os.PathLike, embeddings: Embeddings) -> None:
    """Write embeddings as CSV (``name, e0..``) or ``.npz`` (by extension), plus the sidecar JSON."""
    path = Path(path)
    vectors = np.asarray(embeddings.vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(embeddings.names) != vectors.shape[0]:
        raise ValueError("embeddings need one 1-D vector per name")
    if path.suffix.lower() == ".npz":
        write_npz_atomic(path, names=np.asarray(embeddings.names, dtype=str), vectors=vectors)
    else:
        frame = pd.DataFrame(vectors, columns=embedding_columns(vectors.shape[1]))
        frame.insert(0, "name", list(embeddings.names))
        write_csv_atomic(frame, path, float_format="%.9g")  # 9 digits: float32 round-trips exactly
    meta = dict(
        embeddings.meta, dimension=int(vectors.shape[1]), count=int(vectors.shape[0]), data_sha256=file_sha256(path)
    )
    write_json_atomic(sidecar_path(path), meta)


def read_embeddings(path: str | os.PathLike) -> Embeddings:
    """Read embeddings written by ``write_embeddings`` (CSV or .npz), validating shape and values, and that they
    match their sidecar (a JSON object: its model, dimension, count and the data file's sha256)."""
    path = Path(path)
    if not path.is_file():
        raise FacepipeError(f"embeddings file not found: {path}")
    if path.suffix.lower() == ".npz":
        arrays = read_npz(path, ("names", "vectors"), "an embeddings .npz")
        names, vectors = checked_embedding_arrays(path, arrays["names"], arrays["vectors"])
    else:
        frame = read_csv(path, required=["name"], what="embeddings CSV")
        columns = [c for c in frame.columns if c != "name"]
        if not columns or columns != embedding_columns(len(columns)):
            raise FacepipeError(f"{path}: expected columns name, e0..e{max(len(columns) - 1, 0)}")
        names = checked_names(frame, "name", path, unique=False)
        vectors = checked_numbers(frame, columns, path, low=-FLOAT32_MAX, high=FLOAT32_MAX, missing_ok=True)
        names, vectors = checked_embedding_arrays(path, np.asarray(names, dtype=str), vectors)
    meta_file = sidecar_path(path)
    meta = read_sidecar(path, EMBEDDINGS_SIDECAR_FIELDS)
    if meta.get("dimension") not in (None, vectors.shape[1]):
        raise FacepipeError(
            f"{path}: the sidecar says {meta.get('model')} with dimension {meta['dimension']}, "
            f"but the file holds {vectors.shape[1]}-d vectors (mixed models?)"
        )
    if meta.get("count") not in (None, vectors.shape[0]):
        raise FacepipeError(
            f"{path}: the sidecar says {meta['count']} embeddings but the file holds {vectors.shape[0]} "
            "(rows added or removed by hand, perhaps from another model?)"
        )
    if meta.get("data_sha256") is not None and meta["data_sha256"] != file_sha256(path):
        raise UnmatchedSidecarError(
            f"{path} does not match its sidecar {meta_file.name} (changed since, or a run "
            "was killed between the two files): rerun embed, which redoes it"
        )
    return Embeddings(names=names, vectors=vectors, meta=meta)


def read_npz(path: str | os.PathLike, keys: Sequence[str], what: str) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of a ``.npz`` (no pickles); a file that is not one, lacks one, or is damaged is a
    FacepipeError saying it is not ``what``."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not a .npz archive")
        with loaded:
            return {key: loaded[key] for key in keys}
    except KeyError as error:
        raise FacepipeError(f"{path} is not {what}: it has no array {error}") from None
    except (
        ValueError,
        OSError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
        NotImplementedError,
        RuntimeError,
    ) as error:
        # a damaged archive: bad zip headers, a compression or zip version zipfile lacks, "encrypted"...
        raise FacepipeError(f"{path} is not {what} (arrays {', '.join(keys)}): {error}") from None


def checked_embedding_arrays(
    path: str | os.PathLike, names: np.ndarray, vectors: np.ndarray, allow_empty: bool = False
) -> tuple[list[str], np.ndarray]:
    """``names`` (1-d text, each once) and ``vectors`` (one row of finite numbers per name, at least one unless
    ``allow_empty``) as read from ``path``: (the names as a list, the vectors as float32), else a FacepipeError."""
    if names.ndim != 1 or (names.dtype.kind not in "US" and not (allow_empty and names.size == 0)):
        raise FacepipeError(f"{path}: the names must be a list of text, not a {names.ndim}-d {names.dtype} array")
    if vectors.ndim != 2 or vectors.dtype.kind not in "fiu" or vectors.shape[0] != len(names):
        raise FacepipeError(
            f"{path}: expected one vector of numbers per name ({len(names)} names, vectors of "
            f"shape {vectors.shape} and type {vectors.dtype})"
        )
    if (vectors.shape[0] == 0 and not allow_empty) or vectors.shape[1] == 0:
        raise FacepipeError(f"{path} holds no embeddings")
    names = [str(n) for n in names]
    with np.errstate(over="ignore"):
        vectors = vectors.astype(np.float32)
    bad_rows = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad_rows.size:
        shown = ", ".join(names[i] for i in bad_rows[:5])
        raise FacepipeError(
            f"{path}: {bad_rows.size} row(s) have missing or non-finite values (ragged or damaged file?), e.g. {shown}"
        )
    if len(set(names)) != len(names):
        repeated = next(n for n, count in Counter(names).items() if count > 1)
        raise FacepipeError(f"{path}: the same crop name appears more than once ({repeated})")
    return names, vectors


# --- embed -----------------------------------------------------------------------------------------
# embed -> image_features.csv (or .npz) + image_features.csv.json: see write_embeddings / read_embeddings
#          image_features.csv.errors.csv: ERROR_COLUMNS (path of the crop, reason) for each unreadable crop
#          image_features.csv.partial.npz: progress of an unfinished run (names, vectors, and the sidecar
#          as JSON in one file, so it is never out of step with itself); removed when the run completes

EMBED_ERRORS_SUFFIX = ".errors.csv"
EMBED_CHECKPOINT_SUFFIX = ".partial.npz"


def embed_errors_path(output: str | os.PathLike) -> Path:
    """The errors CSV beside an embeddings file: ``image_features.csv`` -> ``image_features.csv.errors.csv``."""
    output = Path(output)
    return output.with_name(output.name + EMBED_ERRORS_SUFFIX)


def embed_checkpoint_path(output: str | os.PathLike) -> Path:
    """The progress file of an unfinished embed run: ``image_features.csv`` -> ``image_features.csv.partial.npz``."""
    output = Path(output)
    return output.with_name(output.name + EMBED_CHECKPOINT_SUFFIX)


def write_embeddings_checkpoint(path: str | os.PathLike, embeddings: Embeddings) -> None:
    """Write names, vectors and metadata into one .npz, atomically."""
    write_npz_atomic(
        path,
        names=np.asarray(embeddings.names, dtype=str),
        vectors=np.asarray(embeddings.vectors, dtype=np.float32),
        meta=np.asarray(json.dumps(embeddings.meta, sort_keys=True, default=str)),
    )


def read_embeddings_checkpoint(path: str | os.PathLike) -> Embeddings:
    """Read a file written by ``write_embeddings_checkpoint``, checked as ``read_embeddings`` checks its files."""
    advice = "; delete it or rerun with --force"
    arrays = read_npz(path, ("names", "vectors", "meta"), "an embed progress file" + advice)
    try:
        names, vectors = checked_embedding_arrays(path, arrays["names"], arrays["vectors"], allow_empty=True)
        meta = json.loads(str(arrays["meta"])) if arrays["meta"].ndim == 0 else None
    except (json.JSONDecodeError, RecursionError):
        meta = None
    except FacepipeError as error:
        raise FacepipeError(f"{error}{advice}") from None
    if not isinstance(meta, dict):
        raise FacepipeError(f"{path}: its meta is not a JSON object{advice}")
    checked_fields(meta, path, EMBEDDINGS_SIDECAR_FIELDS)
    if meta.get("dimension") not in (None, vectors.shape[1]):
        raise FacepipeError(
            f"{path}: its meta says dimension {meta['dimension']} but it holds {vectors.shape[1]}-d "
            f"vectors (damaged){advice}"
        )
    return Embeddings(names=names, vectors=vectors, meta=meta)


# --- probe -----------------------------------------------------------------------------------------
# probe train    -> probe.json           a linear probe (PROBE_FORMAT): scaler, coefficients, threshold, provenance
# probe predict  -> predictions.csv      PREDICTION_COLUMNS, one row per embedding
# probe evaluate -> OUT/metrics.json, OUT/pr_curve.png, OUT/confusion_matrix.png, OUT/predictions.csv

PROBE_FORMAT = "facepipe-linear-probe/1"
PREDICTION_COLUMNS = ["name", "probability", "label"]
PROBE_METRICS_JSON = "metrics.json"
PROBE_PR_CURVE_PNG = "pr_curve.png"
PROBE_CONFUSION_PNG = "confusion_matrix.png"
PROBE_PREDICTIONS_CSV = "predictions.csv"
PROBE_ARRAY_FIELDS = ("coefficients", "scaler_mean", "scaler_scale")
PROBE_REQUIRED_FIELDS = (
    "format",
    "target",
    "intercept",
    "threshold",
    "C",
    "embedding_model",
    "embedding_dimension",
    *PROBE_ARRAY_FIELDS,
)


def write_probe_json(path: str | os.PathLike, probe: dict) -> None:
    """Write a probe (a plain dict with ``PROBE_REQUIRED_FIELDS``) as JSON; floats keep every bit."""
    write_json_atomic(path, dict(probe, format=PROBE_FORMAT))


def read_probe_json(path: str | os.PathLike) -> dict:
    """Read a probe JSON, checking its format tag, fields, and that its arrays all have the stated dimension."""
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != PROBE_FORMAT:
        raise FacepipeError(f'{path} is not a facepipe probe (expected "format": "{PROBE_FORMAT}")')
    missing = [f for f in PROBE_REQUIRED_FIELDS if f not in data]
    if missing:
        raise FacepipeError(f"{path}: probe JSON lacks {', '.join(missing)}")
    checked_fields(data, path, {"target": str, "embedding_model": str, "C": float})
    dim = data["embedding_dimension"]
    if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 1 << 16:
        raise FacepipeError(f"{path}: embedding_dimension must be a whole number from 1 to 65536")
    for name in PROBE_ARRAY_FIELDS:
        values = data[name]
        if not isinstance(values, list) or len(values) != dim or not all(_is_finite_number(v) for v in values):
            raise FacepipeError(f"{path}: {name} must be a list of {dim} finite numbers")
    if not all(v > 0 for v in data["scaler_scale"]):
        raise FacepipeError(f"{path}: scaler_scale must be above 0 in every dimension (it divides the embeddings)")
    if (
        not _is_finite_number(data["intercept"])
        or not _is_finite_number(data["threshold"])
        or not 0 <= data["threshold"] <= 1
    ):
        raise FacepipeError(f"{path}: intercept must be a finite number and threshold a probability (0 to 1)")
    return data


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def write_predictions(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    """Write probe predictions (``PREDICTION_COLUMNS``, then any extra columns such as ``true``).

    Probabilities are written with 17 significant digits, so they read back bit for bit.
    """
    columns = PREDICTION_COLUMNS + [c for c in frame.columns if c not in PREDICTION_COLUMNS]
    write_csv_atomic(frame[columns], path, float_format="%.17g")


# ---------------------------------------------------------------- train-cvae and generate
# train-cvae -> WEIGHTS/cvae_epoch_N.pt   torch.save of plain data only (state dicts, config dict, RNG states,
#                                         loss history): loadable with torch.load(weights_only=True)
#               WEIGHTS/cvae_best.pt      the checkpoint with the lowest validation loss
#               WEIGHTS/cvae_log.csv      one row per epoch (CVAE_LOG_COLUMNS), losses per image
#               WEIGHTS/alignment.csv     ALIGNMENT_COLUMNS: each crop's 5 dlib landmarks, in pixels of the crop
#                                         file (with --align dlib5: what the crops were aligned on)
#               WEIGHTS/cvae_outputs.json ``outputs``: each of the files above train-cvae wrote -> its sha256
#                                         (old checkpoints and --force remove only those, unchanged)
# generate   -> OUT/cluster_N.png (z = 0), cluster_N_mean.png (pixel mean of the crops),
#               cluster_N_samples.png (random draws), clusters_sheet.png, fidelity.json (--evaluate),
#               generate.json (written last: each output's sha256; a rerun removes only those, unchanged)
CVAE_CHECKPOINT_FORMAT = "facepipe-cvae/1"
CVAE_BEST_CHECKPOINT = "cvae_best.pt"
CVAE_LOG_CSV = "cvae_log.csv"
CVAE_RECORD_JSON = "cvae_outputs.json"
MAX_EPOCH = 1_000_000  # the largest epoch number a training log may hold
CVAE_LOG_COLUMNS = [
    "epoch",
    *(
        f"{split}_{part}"
        for split in ("train", "val")
        for part in ("loss", "recon", "kl", "anchor", "identity", "draw_identity", "adversarial")
    ),
    "seconds",
]
ALIGNMENT_CSV = "alignment.csv"
ALIGNMENT_COLUMNS = ["name", *(f"{axis}{i}" for i in range(5) for axis in "xy")]
MAX_PIXEL_POSITION = 1 << 20  # a landmark further than this from a crop's corner is not one of its points
GENERATED_SHEET_PNG = "clusters_sheet.png"
FIDELITY_JSON = "fidelity.json"
GENERATE_RECORD_JSON = "generate.json"
FIDELITY_KINDS = ("cvae", "pixel_mean", "random_draws")
_NUMBER = numbers.Real  # a number, NaN included (a fidelity without crops to compare has NaN sharpness)
FIDELITY_ROW_FIELDS = {
    "cluster": int,
    "cvae_nearest": int,
    "pixel_mean_nearest": int,
    "cvae_cosine_to_own": _NUMBER,
    "pixel_mean_cosine_to_own": _NUMBER,
    "cvae_sharpness": _NUMBER,
    "pixel_mean_sharpness": _NUMBER,
    "crops_sharpness": _NUMBER,
}


def cvae_checkpoint_name(epoch: int) -> str:
    """``cvae_epoch_N.pt``."""
    return f"cvae_epoch_{epoch}.pt"


def write_alignment(path: str | os.PathLike, landmarks: dict[str, np.ndarray]) -> None:
    """Write crop name -> 5 landmarks (5, 2) as ``alignment.csv``, atomically."""
    names = sorted(landmarks)
    points = (
        np.stack([np.asarray(landmarks[n], dtype=np.int64).reshape(10) for n in names])
        if names
        else np.zeros((0, 10))
    )
    frame = pd.DataFrame(points, columns=ALIGNMENT_COLUMNS[1:])
    frame.insert(0, "name", names)
    write_csv_atomic(frame, path)


def read_alignment(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read ``alignment.csv`` -> crop name (each once) -> int64 landmarks (5, 2), whole pixel positions."""
    frame = read_csv(path, ALIGNMENT_COLUMNS, what="alignment CSV", text=["name"])
    names = checked_names(frame, "name", path)
    points = checked_numbers(
        frame, ALIGNMENT_COLUMNS[1:], path, whole=True, low=-MAX_PIXEL_POSITION, high=MAX_PIXEL_POSITION
    )
    return dict(zip(names, points.astype(np.int64).reshape(-1, 5, 2)))


def read_fidelity(path: str | os.PathLike) -> dict:
    """``fidelity.json`` (generate --evaluate), its summaries and per-cluster rows checked to be of their types."""
    data = checked_fields(
        read_json(path),
        path,
        {
            "clusters_evaluated": int,
            "per_cluster": list,
            "sharpness": dict,
            **{kind: dict for kind in FIDELITY_KINDS},
        },
    )
    for kind in FIDELITY_KINDS:
        if data.get(kind):
            checked_fields(
                data[kind],
                f"{path} [{kind}]",
                {"correct": int, "of": int, "fraction": _NUMBER, "mean_cosine_to_own": _NUMBER},
                ["correct", "fraction"],
            )
    checked_fields(
        json_object(data, "sharpness", path),
        f"{path} [sharpness]",
        {kind: _NUMBER for kind in ("cvae", "pixel_mean", "crops", "draws")},
    )
    for index, row in enumerate(data.get("per_cluster") or []):
        where = f"{path} per_cluster[{index}]"
        if not isinstance(row, dict):
            raise FacepipeError(f"{where} must be an object, not {_clipped(json.dumps(row, default=str))}")
        required = ["cluster", *(["pixel_mean_sharpness", "crops_sharpness"] if "cvae_sharpness" in row else [])]
        checked_fields(row, where, FIDELITY_ROW_FIELDS, required)
    return data


def generated_face_names(cluster: int) -> dict[str, str]:
    """File names of one cluster's outputs from generate: ``face``, ``mean`` and ``samples``."""
    return {
        "face": f"cluster_{cluster}.png",
        "mean": f"cluster_{cluster}_mean.png",
        "samples": f"cluster_{cluster}_samples.png",
    }


# ---------------------------------------------------------------- export
# export -> OUT/<group folder>/, OUT/unknown/, OUT/no_face/  the photos (or crops) as hard links, symlinks or copies
#           OUT/manifest.csv  EXPORT_MANIFEST_COLUMNS: one row per file made (``file`` relative to OUT)
#           OUT/manifest.csv.json  export's record (EXPORT_RECORD_FORMAT): what each file it made is (a symlink's
#                             target, a hard link's inode, a copy's sha256) and manifest.csv's sha256; written
#                             before export changes anything (with the files it is about to make) and last.
#                             Export removes or replaces only files listed there that are still what it made.
EXPORT_MANIFEST_CSV = "manifest.csv"
EXPORT_RECORD_FORMAT = "facepipe-export/1"
EXPORT_MANIFEST_COLUMNS = ["photo", "face", "group", "name", "distance", "file"]
UNKNOWN_FOLDER, NO_FACE_FOLDER = "unknown", "no_face"


# ---------------------------------------------------------------- run
# run -> RUN_DIR/temp/ (detect), image_features.csv (embed), cluster_results.csv + plots + cluster_samples/
#        (cluster), weights/ (train-cvae), inference_results/ (generate), probe/ (probe, with labels),
#        config.toml (the config used), state.json (what each stage consumed), summary.json (counts, timings,
#        metrics), run.log, report.html (one self-contained page)
RUN_CROPS_DIR, RUN_WEIGHTS_DIR, RUN_SAMPLES_DIR, RUN_INFERENCE_DIR, RUN_PROBE_DIR = (
    "temp",
    "weights",
    "cluster_samples",
    "inference_results",
    "probe",
)
RUN_CONFIG_TOML = "config.toml"
RUN_STATE_JSON = "state.json"
RUN_SUMMARY_JSON = "summary.json"
RUN_STATE_FIELDS = {"fingerprint": str, "completed": bool, "seconds": float, "summary": str, "details": dict}
RUN_LOG = "run.log"
RUN_REPORT_HTML = "report.html"


def read_run_state(path: str | os.PathLike) -> dict[str, dict]:
    """``state.json``: stage name -> its record, a JSON object whose RUN_STATE_FIELDS are checked."""
    state = read_json(path)
    return {
        stage: checked_fields(json_object(state, stage, path), f"{path} [{stage}]", RUN_STATE_FIELDS)
        for stage in state
    }


# ---------------------------------------------------------------- cluster
# cluster -> OUT/cluster_results.csv       CLUSTER_COLUMNS: crop name, cluster id (0 = largest), Euclidean distance
#                                          to its centroid in the clustering space (L2-normalised unless --no-normalize)
#            OUT/cluster_results.csv.json  sidecar: embeddings file, model, crops_dir, k, the rule that chose it,
#                                          options, seed, fingerprint of inputs + options (drives rerun skipping)
#            OUT/centroids.csv             CENTROID_COLUMNS: ``cluster, e0..e{D-1}``, one row per cluster
#            OUT/k_selection.csv           K_SELECTION_COLUMNS: one row per k tried (one row when k was given)
#            OUT/elbow.png, OUT/silhouette.png  (with --k auto)
#            OUT/cluster_metrics.json      with --labels: NMI, ARI, BCubed and pairwise precision/recall/F
#            SAMPLES/cluster_N.jpg, SAMPLES/overview.jpg  crops nearest each centroid
CENTROIDS_CSV = "centroids.csv"
PEOPLE_ANCHORS_CSV = "people_anchors.csv"  # the centroid each group number of a people file was first met on
PEOPLE_TOML = "people.toml"  # the people file of a cluster folder where none is given
K_SELECTION_CSV = "k_selection.csv"
K_SELECTION_COLUMNS = ["k", "inertia", "silhouette"]
ELBOW_PNG = "elbow.png"
SILHOUETTE_PNG = "silhouette.png"
CLUSTER_METRICS_JSON = "cluster_metrics.json"
SAMPLES_OVERVIEW_JPG = "overview.jpg"
UNKNOWN_GRID_JPG = "unknown.jpg"  # the faces of the unknown group (-1)
CLUSTER_SIDECAR_FIELDS = {
    "embeddings": str,
    "crops_dir": str,
    "model": str,
    "dimension": int,
    "k": int,
    "items": int,
    "sizes": list,
    "unknown": int,
    "same_person_distance": float,
    "options": dict,
    "outputs": dict,
    "fingerprint": str,
}
SUGGESTIONS_CSV = "suggestions.csv"  # facepipe suggest: SUGGESTION_COLUMNS, one suggestion a row, by kind and rank
SUGGESTION_COLUMNS = ["kind", "rank", "group", "other", "face", "distance"]
SUGGESTION_KINDS = ("merge", "unknown", "outlier")  # merge: group and other are one person? unknown: is face
# (unknown now) group's person? outlier: is face, far from its group's centroid, someone else? (other, face: empty
# where they do not apply; rank: within the kind, from 1, by distance: nearest first, outliers farthest first;
# distance: a merge's the root mean square distance between the two groups' faces, an unknown face's the
# same-person distance at which cluster's link rule would take it into the group, an outlier's to its centroid)
GROUPS_CSV = "groups.csv"  # GROUPS_COLUMNS: each group, its name (people file) and size
GROUPS_COLUMNS = ["cluster", "person", "faces"]


def write_groups(folder: str | os.PathLike, sizes: Sequence[int], names: dict[int, str]) -> Path:
    """Write ``groups.csv`` (GROUPS_COLUMNS) for groups 0..len(sizes)-1, atomically; returns its path."""
    frame = pd.DataFrame(
        {
            "cluster": np.arange(len(sizes)),
            "person": [names.get(c, "") for c in range(len(sizes))],
            "faces": np.asarray(sizes, dtype=np.int64),
        },
        columns=GROUPS_COLUMNS,
    )
    write_csv_atomic(frame, Path(folder) / GROUPS_CSV)
    return Path(folder) / GROUPS_CSV


def group_names(folder: str | os.PathLike) -> dict[int, str]:
    """Group id -> name from a clustering's ``groups.csv`` (names kept as written: "NA" or "007" stay text;
    no file, or no name: none); each group number a whole number, 0 and up, once."""
    path = Path(folder) / GROUPS_CSV
    if not path.is_file():
        return {}
    frame = read_csv(path, ["cluster", "person"], "groups CSV", text=["person", "cluster"])
    clusters = checked_whole_numbers(frame, "cluster", path, 0, MAX_GROUP_NUMBER, unique=True)
    return {int(c): p for c, p in zip(clusters, frame["person"]) if p}


def sample_grid(cluster: int) -> str:
    """``cluster_N.jpg``: the sample grid of one cluster."""
    return f"cluster_{cluster}.jpg"


def write_centroids(path: str | os.PathLike, centroids: np.ndarray) -> None:
    """Write centroids as CSV ``cluster, e0..``, atomically (row i is cluster i)."""
    centroids = np.asarray(centroids, dtype=np.float32)
    frame = pd.DataFrame(centroids, columns=embedding_columns(centroids.shape[1]))
    frame.insert(0, "cluster", np.arange(len(centroids)))
    write_csv_atomic(frame, path, float_format="%.9g")


def read_centroids(path: str | os.PathLike) -> np.ndarray:
    """Read ``centroids.csv`` -> float32 array (k, D); row i is cluster i; every value a finite number."""
    frame = read_csv(path, required=["cluster"], what="centroids CSV")
    columns = [c for c in frame.columns if c != "cluster"]
    clusters = checked_whole_numbers(frame, "cluster", path, 0, MAX_GROUP_NUMBER)
    if not columns or columns != embedding_columns(len(columns)) or clusters.tolist() != list(range(len(frame))):
        raise FacepipeError(f"{path}: expected columns cluster, e0.. and clusters numbered 0..k-1")
    return checked_numbers(frame, columns, path, low=-FLOAT32_MAX, high=FLOAT32_MAX).astype(np.float32)


def read_cluster_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``cluster_results.csv`` (CLUSTER_COLUMNS): ``name`` text, each once; ``cluster`` a whole number,
    UNKNOWN_CLUSTER or a group 0 and up (with a ``centroids.csv`` beside it, one of its groups); ``distance``
    a number 0 and up, or empty (NaN); no rows only where its sidecar (if any) counts no items. Returns those
    columns as str, int64 and float64."""
    path = Path(path)
    frame = read_csv(path, CLUSTER_COLUMNS, "cluster results CSV", text=["name"])
    items = read_sidecar(path, {"items": int}).get("items")
    if frame.empty and items:
        raise FacepipeError(
            f"{path} has no rows but its sidecar {sidecar_path(path).name} counts {items} faces: "
            "the file is damaged (rerun cluster)"
        )
    names = checked_names(frame, "name", path)
    clusters = checked_whole_numbers(frame, "cluster", path, UNKNOWN_CLUSTER, MAX_GROUP_NUMBER)
    distances = checked_numbers(frame, ["distance"], path, low=0, missing_ok=True)[:, 0]
    centroids_file = path.parent / CENTROIDS_CSV
    if centroids_file.is_file() and len(clusters):
        groups = len(read_centroids(centroids_file))
        beyond = np.flatnonzero(clusters >= groups)
        if beyond.size:
            raise FacepipeError(
                f"{_place(path, int(beyond[0]), 'cluster')}: group {clusters[beyond[0]]} is not "
                f"among the {groups} groups of {centroids_file}"
            )
    return pd.DataFrame({"name": names, "cluster": clusters, "distance": distances}, columns=CLUSTER_COLUMNS)
