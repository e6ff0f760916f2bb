"""Corrections to a clustering that survive reruns: a small people file (TOML) that names groups, merges
groups, splits one (by listing faces), moves a face, or marks a group as not a person.

    merge = [[0, 7]]             # each list: groups that are one person; the others join the first
    not_a_person = [9]           # their faces go to unknown (-1)
    [names]                      # group number = name
    0 = "Kofi Annan"
    3 = "Jackie Chan"
    [move]                       # a face into another group (-1: unknown)
    "Kofi_Annan_0003_1a2b3c4d5e_0.jpg" = 3
    [[split]]                    # these faces leave their group and become a group of their own
    faces = ["Hans_Blix_0001_0a1b2c3d4e_0.jpg", "Hans_Blix_0004_5f6a7b8c9d_0.jpg"]
    name = "Hans Blix"
    [[rejected]]                 # suggestions turned down (facepipe suggest / review offer them no more)
    groups = [2, 5]              # these two groups are not one person
    [[rejected]]
    face = "Tony_Blair_0002_9e8d7c6b5a_0.jpg"
    group = 4                    # an unknown face is not group 4's person; a face of group 4 belongs there

(TOML puts top-level keys such as ``merge`` before the first table). Group numbers are those that
cluster_results.csv and the report show. cluster keeps them pointing at the same people across reruns:
when it first meets a group number it records that group's centroid as the number's anchor
(``people_anchors.csv`` in the cluster folder); on every run a number stands for the new group whose centroid
is nearest its anchor, within the same-person distance, and that group keeps the number in the output (so
the report shows the numbers the file uses); a number with no such group is reported as no longer matching.
Faces are named by their crop names, which never change. ``people.toml`` in the cluster (or run) folder is
the people file where none is given (``review`` writes it).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import tomllib

from facepipe.common import FacepipeError, write_text_atomic
from facepipe.formats import (
    FLOAT32_MAX,
    MAX_GROUP_NUMBER,
    PEOPLE_ANCHORS_CSV,
    PEOPLE_TOML,
    UNKNOWN_CLUSTER,
    checked_numbers,
    checked_whole_numbers,
    embedding_columns,
    read_csv,
    write_csv_atomic,
)
from facepipe.models import unit_rows

PEOPLE_KEYS = ("merge", "not_a_person", "names", "move", "split", "rejected")  # in the order they are written
PEOPLE_FILE = Path("people file")  # the origin named in an error of a section parsed on its own
ANCHOR_DISTANCE = 0.6  # where the embedder has no same-person rule: L2 distance of unit centroids (cosine 0.82)


@dataclass
class People:
    """A parsed people file."""

    names: dict[int, str] = field(default_factory=dict)
    merges: list[list[int]] = field(default_factory=list)
    not_a_person: list[int] = field(default_factory=list)
    moves: dict[str, int] = field(default_factory=dict)
    splits: list[tuple[list[str], str]] = field(default_factory=list)
    rejected_merges: set[tuple[int, int]] = field(default_factory=set)  # (lower, higher) group number
    rejected_faces: set[tuple[str, int]] = field(default_factory=set)  # (crop name, group number)

    def group_numbers(self) -> set[int]:
        """Every group number the file names (its anchors are needed)."""
        found = set(self.names) | set(self.not_a_person) | {g for merge in self.merges for g in merge}
        found |= {g for pair in self.rejected_merges for g in pair} | {g for _, g in self.rejected_faces}
        return found | {g for g in self.moves.values() if g != UNKNOWN_CLUSTER}


def _group_number(value, where: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if (
        number is None
        or isinstance(value, bool)
        or not UNKNOWN_CLUSTER <= number <= MAX_GROUP_NUMBER
        or str(value).strip() != str(number)
    ):
        raise FacepipeError(f"{where}: {value!r} is not a group number")
    return number


def read_people(path: str | Path) -> People:
    """Parse and check a people file; every problem is a one-line FacepipeError naming the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FacepipeError(f"people file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise FacepipeError(f"{path} is not valid TOML: {error}") from None
    except RecursionError:
        raise FacepipeError(f"{path} is not valid TOML: nested too deep") from None
    return _people_of(data, path)


def _people_of(data: dict, path: Path) -> People:
    """The People that a people file's parsed TOML ``data`` holds, checked."""
    unknown = sorted(set(data) - set(PEOPLE_KEYS))
    if unknown:
        raise FacepipeError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(PEOPLE_KEYS))}")
    kinds = {"names": dict, "merge": list, "not_a_person": list, "move": dict, "split": list, "rejected": list}
    wrong = [key for key, kind in kinds.items() if key in data and not isinstance(data[key], kind)]
    if wrong:
        raise FacepipeError(
            f"{path}: {wrong[0]} must be a {'table' if kinds[wrong[0]] is dict else 'list'} "
            '(see docs/commands.md, "People file")'
        )
    people = People()
    for key, name in data.get("names", {}).items():
        if not isinstance(name, str) or not name.strip():
            raise FacepipeError(f"{path}: [names] {key} must be a name (text)")
        people.names[_group_number(key, f"{path} [names]")] = name.strip()
    for merge in data.get("merge", []):
        if not isinstance(merge, list) or len(merge) < 2:
            raise FacepipeError(f"{path}: each merge is a list of two or more group numbers")
        people.merges.append([_group_number(g, f"{path} merge") for g in merge])
    people.not_a_person = [_group_number(g, f"{path} not_a_person") for g in data.get("not_a_person", [])]
    people.moves = {str(face): _group_number(g, f"{path} [move]") for face, g in data.get("move", {}).items()}
    for split in data.get("split", []):
        faces = split.get("faces") if isinstance(split, dict) else None
        if not isinstance(faces, list) or not faces or not all(isinstance(f, str) for f in faces):
            raise FacepipeError(f"{path}: each [[split]] needs faces = [crop names]")
        unknown = sorted(set(split) - {"faces", "name"})
        if unknown:
            raise FacepipeError(f"{path}: [[split]] has unknown key(s) {', '.join(unknown)}; known: faces, name")
        people.splits.append((faces, str(split.get("name", "")).strip()))
    for rejected in data.get("rejected", []):
        _read_rejected(rejected, people, path)
    return people


def _read_rejected(entry, people: People, path: Path) -> None:
    """One ``[[rejected]]`` entry (``groups = [a, b]``, or ``face`` and ``group``) into ``people``."""
    keys = set(entry) if isinstance(entry, dict) else None
    if keys == {"groups"} and isinstance(entry["groups"], list) and len(entry["groups"]) == 2:
        low, high = sorted(_group_number(g, f"{path} [[rejected]]") for g in entry["groups"])
        people.rejected_merges.add((low, high))
    elif keys == {"face", "group"} and isinstance(entry["face"], str):
        people.rejected_faces.add((entry["face"], _group_number(entry["group"], f"{path} [[rejected]]")))
    else:
        raise FacepipeError(f"{path}: each [[rejected]] holds groups = [two group numbers], or face and group")


def _sections(people: People) -> dict[str, list | dict]:
    """``people`` as the people file's sections (plain TOML values), in the order a new file lists them."""
    return {
        "merge": people.merges,
        "not_a_person": people.not_a_person,
        "names": {str(g): name for g, name in sorted(people.names.items())},
        "move": dict(sorted(people.moves.items())),
        "split": [{"faces": faces, **({"name": name} if name else {})} for faces, name in people.splits],
        "rejected": [{"groups": list(pair)} for pair in sorted(people.rejected_merges)]
        + [{"face": face, "group": g} for face, g in sorted(people.rejected_faces)],
    }


def people_text(people: People, earlier: str | None = None) -> str:
    """The people file (TOML) that ``read_people`` reads back as ``people``. Given ``earlier`` (the file's text
    now), that text edited in place: only the entries that change are written, so the user's comments, order
    and layout stay everywhere else."""
    import tomlkit

    document = tomlkit.parse(earlier) if earlier else tomlkit.document()
    for key, wanted in _sections(people).items():
        if key not in document:
            if wanted:
                document[key] = wanted
            continue
        section = document[key]
        (_edit_table if isinstance(wanted, dict) else _edit_list)(section, wanted, key)
        if _people_of({key: section.unwrap()}, PEOPLE_FILE) != _people_of({key: wanted}, PEOPLE_FILE):
            document[key] = wanted  # the entries' order changed: the section is written anew
    return tomlkit.dumps(document)


def _meaning(key: str, single) -> str:
    """What ``single`` (a section ``key`` of one entry) means to ``read_people``, as text to compare and count
    (with one entry, the repr does not depend on order)."""
    return repr(_people_of({key: single}, PEOPLE_FILE))


def _edit_table(section, wanted: dict, key: str) -> None:
    """Make the table ``section`` (names, move) hold ``wanted``, touching only the entries that differ."""
    written = {str(_group_number(k, key)) if key == "names" else k: k for k in section}
    for entry, name in written.items():
        if entry not in wanted:
            del section[name]
        elif _meaning(key, {name: section[name].unwrap()}) != _meaning(key, {entry: wanted[entry]}):
            section[name] = wanted[entry]
    for entry in [entry for entry in wanted if entry not in written]:
        section[entry] = wanted[entry]


def _edit_list(section, wanted: list, key: str) -> None:
    """Make the list ``section`` (merge, not_a_person, split, rejected) hold ``wanted``: delete the entries it no
    longer holds and append the new ones; the caller rewrites the section if the order then differs."""
    meanings = [_meaning(key, [item]) for item in wanted]
    needed = Counter(meanings)
    unwanted = []
    for index, entry in enumerate(section):
        meaning = _meaning(key, [entry.unwrap()])
        if needed[meaning]:
            needed[meaning] -= 1
        else:
            unwanted.append(index)
    for index in reversed(unwanted):
        del section[index]
    for item, meaning in zip(wanted, meanings):
        if needed[meaning]:
            needed[meaning] -= 1
            section.append(item)


def write_people(path: str | os.PathLike, people: People) -> None:
    """Write the people file atomically; one that is there already is edited in place (``people_text``), so the
    user's comments and layout survive review's edits."""
    import tomlkit

    path = Path(path)
    try:
        text = people_text(people, path.read_text(encoding="utf-8") if path.is_file() else None)
    except (tomlkit.exceptions.ParseError, UnicodeDecodeError) as error:
        raise FacepipeError(f"{path} is not valid TOML, so it was left as it is: {error}") from None
    write_people_text(path, text)


def write_people_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` as the people file at ``path``, atomically; a symlink to it stays one (its target is
    written), as the user's file behind it is the people file."""
    write_text_atomic(os.path.realpath(path) if Path(path).is_symlink() else path, text)


def people_file_of(folder: str | os.PathLike, given: str | os.PathLike | None) -> Path | None:
    """The people file a clustering into ``folder`` follows: ``given``, else ``people.toml`` there if any."""
    if given:
        return Path(os.path.abspath(given))
    default = Path(os.path.abspath(folder)) / PEOPLE_TOML
    return default if default.is_file() else None


def read_anchors(folder: Path, dim: int) -> dict[int, np.ndarray]:
    """Group number -> its anchor centroid, from an earlier run into ``folder`` (none if there was none); the
    anchors must be ``dim``-d, as the embeddings clustered now (others are a damaged file or another model's:
    refused, as renumbering silently would put the people file's names on other groups)."""
    path = folder / PEOPLE_ANCHORS_CSV
    if not path.is_file():
        return {}
    frame = read_csv(path, ["group"], "people anchors CSV")
    columns = [c for c in frame.columns if c != "group"]
    if not columns or columns != embedding_columns(len(columns)):
        raise FacepipeError(f"{path}: expected columns group, e0..e{max(len(columns) - 1, 0)}")
    if len(columns) != dim:
        raise FacepipeError(
            f"{path} holds {len(columns)}-d anchors but the embeddings are {dim}-d (damaged, or "
            "from another model): remove it to anchor the people file's group numbers anew"
        )
    groups = checked_whole_numbers(frame, "group", path, 0, MAX_GROUP_NUMBER, unique=True)
    vectors = checked_numbers(frame, columns, path, low=-FLOAT32_MAX, high=FLOAT32_MAX).astype(np.float32)
    return dict(zip(groups.tolist(), vectors))


def write_anchors(folder: Path, anchors: dict[int, np.ndarray]) -> Path:
    """Write the anchors (``group, e0..``; at least one), atomically; returns the file's path."""
    numbers = sorted(anchors)
    vectors = np.stack([anchors[n] for n in numbers]).astype(np.float32)
    frame = pd.DataFrame(vectors, columns=embedding_columns(vectors.shape[1]))
    frame.insert(0, "group", numbers)
    write_csv_atomic(frame, folder / PEOPLE_ANCHORS_CSV, float_format="%.9g")
    return folder / PEOPLE_ANCHORS_CSV


def resolve_numbers(
    numbers: set[int], anchors: dict[int, np.ndarray], centroids: np.ndarray, distance: float | None
) -> tuple[dict[int, int], dict[int, np.ndarray], list[int]]:
    """Map each group number of the people file to a group of the new clustering (row of ``centroids``) by
    its anchor: the nearest unit centroid within ``distance`` (ANCHOR_DISTANCE when None), each group taken
    once, nearest pairs first. Returns (number -> group, the anchors to keep, the numbers with no match)."""
    limit = ANCHOR_DISTANCE if distance is None else distance
    unit = unit_rows(np.asarray(centroids, dtype=np.float64))
    pairs = []
    for number in sorted(numbers & set(anchors)):
        gaps = np.linalg.norm(unit - unit_rows(anchors[number][None, :].astype(np.float64)), axis=1)
        pairs += [(float(gap), number, group) for group, gap in enumerate(gaps) if gap <= limit]
    mapping, taken = {}, set()
    for _, number, group in sorted(pairs):
        if number not in mapping and group not in taken:
            mapping[number] = group
            taken.add(group)
    kept = {number: unit[group].astype(np.float32) for number, group in mapping.items()}
    lost = sorted(numbers - set(mapping))
    return mapping, kept, lost


def apply_people(
    labels: np.ndarray, names: list[str], people: People, mapping: dict[int, int]
) -> tuple[np.ndarray, dict[int, str], dict[int, int]]:
    """The groups after the corrections (merges, then moves, splits and not-a-person marks, each seeing the
    merges before it); the names of the groups and the file's number for each group that has one (the lowest
    of a merge), both by their label in the returned array (new groups of splits get labels above the others)."""
    labels = labels.copy()
    row_of = {name: row for row, name in enumerate(names)}
    merged_into: dict[int, int] = {}

    def current(number: int) -> int | None:  # the label a group number stands for now, merges followed
        label = mapping.get(number)
        while label is not None and label in merged_into:
            label = merged_into[label]
        return label

    group_names = {}
    for merge in people.merges:
        targets = list(dict.fromkeys(label for label in map(current, merge) if label is not None))
        for other in targets[1:]:
            labels[labels == other] = targets[0]
            merged_into[other] = targets[0]
    for number, name in people.names.items():
        if current(number) is not None:
            group_names.setdefault(current(number), name)
    for face, number in people.moves.items():
        target = UNKNOWN_CLUSTER if number == UNKNOWN_CLUSTER else current(number)
        if face in row_of and target is not None:
            labels[row_of[face]] = target
    next_label = int(max(labels.max(initial=-1), max(mapping.values(), default=-1))) + 1
    for faces, name in people.splits:
        rows = [row_of[f] for f in faces if f in row_of]
        if rows:
            labels[rows] = next_label
            if name:
                group_names[next_label] = name
            next_label += 1
    for number in people.not_a_person:
        label = current(number)
        if label is not None:
            labels[labels == label] = UNKNOWN_CLUSTER
            group_names.pop(label, None)
    numbers = {}
    for number in sorted(mapping):
        label = current(number)
        if label is not None and (labels == label).any():
            numbers.setdefault(label, number)
    return labels, group_names, numbers


def unknown_faces(people: People, names: list[str]) -> list[str]:
    """Faces the people file names that are not in the clustering (to report)."""
    listed = set(people.moves) | {face for faces, _ in people.splits for face in faces}
    return sorted(listed - set(names))
