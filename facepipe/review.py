"""Review: a local web page (Starlette, served by uvicorn) to turn groups into people: name a group, merge
groups, split off or move faces, mark a group as not a person, accept or reject suggestions (``suggest``),
undo the last edit.

Every edit is written atomically to the folder's people file (the one its clustering recorded, else
``people.toml`` there), and the clustering is redone with it (``cluster``, with the options it recorded), so
cluster_results.csv, groups.csv, export, the report and every rerun follow it. The folder's lock is held for
the whole session: no other facepipe command writes it meanwhile.

Security: the server listens on 127.0.0.1 only; every request needs the session's random token (in the URL,
or for a POST in the ``X-Facepipe-Token`` header) and a Host header naming this machine (no DNS rebinding);
images are addressed by their row in the clustering (a face) or a group number (its CVAE face), never by a
path; state changes only by POST.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from facepipe.common import FacepipeError
from facepipe.formats import (
    PEOPLE_TOML,
    RUN_CONFIG_TOML,
    RUN_INFERENCE_DIR,
    RUN_REPORT_HTML,
    RUN_SUMMARY_JSON,
    UNKNOWN_CLUSTER,
    cluster_results_path,
    generated_face_names,
    group_names,
    read_json,
    recorded_path,
)
from facepipe.locks import folder_lock
from facepipe.owned import inside_or_none
from facepipe.people import People, people_file_of, read_people, write_people, write_people_text
from facepipe.settings import ReviewSettings
from facepipe.suggest import Clustering, read_clustering, suggestions

HOST = "127.0.0.1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
TOKEN_HEADER = "X-Facepipe-Token"
MAX_NAME_LENGTH = 200
ACTIONS = ("name", "merge", "split", "move", "not_a_person", "accept", "reject")


@dataclass
class ReviewSession:
    """One review: the clustering shown, its people file, the token, and the people file before each edit."""

    clustering: Clustering
    people_file: Path
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    earlier: list[str | None] = field(default_factory=list)  # the file's text before each edit (None: none)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def folder(self) -> Path:
        return self.clustering.folder

    def people(self) -> People:
        return read_people(self.people_file) if self.people_file.is_file() else People()


def people_file_for(clustering: Clustering) -> Path:
    """The people file a clustering follows: the one it recorded, else ``people.toml`` in its folder."""
    recorded = (clustering.meta.get("options") or {}).get("people")
    return people_file_of(clustering.folder, recorded) or clustering.folder / PEOPLE_TOML


def _group(value, clustering: Clustering, unknown_allowed: bool = False) -> int:
    """A group number of the clustering shown (or unknown, -1, where ``unknown_allowed``), else a FacepipeError."""
    groups = set(clustering.results["cluster"].tolist()) - {UNKNOWN_CLUSTER}
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (value in groups or unknown_allowed and value == UNKNOWN_CLUSTER)
    ):
        return value
    raise FacepipeError(f"{value!r} is not a group of this clustering")


def _faces(rows, clustering: Clustering) -> list[str]:
    """The crop names of the clustering's ``rows`` (a non-empty list of row numbers), else a FacepipeError."""
    names = clustering.results["name"].tolist()
    if (
        not isinstance(rows, list)
        or not rows
        or not all(isinstance(r, int) and not isinstance(r, bool) and 0 <= r < len(names) for r in rows)
    ):
        raise FacepipeError("select one or more faces of this clustering")
    return [names[r] for r in dict.fromkeys(rows)]


def _by_faces(people: People, clustering: Clustering, group: int) -> bool:
    """Whether edits of ``group`` go by its faces, not its number: where the people file uses that number for
    a group merged away or not a person (the group shown with it now is another), or the group is one a
    ``[[split]]`` made (a number stands for a group of the clustering before the corrections)."""
    split_faces = {face for faces, _ in people.splits for face in faces}
    return (
        group in people.not_a_person
        or any(group in merge[1:] for merge in people.merges)
        or set(_members(clustering, group)) <= split_faces
    )


def _members(clustering: Clustering, group: int) -> list[str]:
    return clustering.results.loc[clustering.results["cluster"] == group, "name"].tolist()


def _move(people: People, faces: list[str], group: int) -> None:
    """Move ``faces`` into ``group`` (-1: unknown); they leave the ``[[split]]`` groups (splits come after moves)."""
    moved = set(faces)
    remaining = [([face for face in split if face not in moved], name) for split, name in people.splits]
    people.splits = [(split, name) for split, name in remaining if split]
    people.moves.update({face: group for face in faces})


def _merge(people: People, clustering: Clustering, groups: list[int]) -> None:
    """Merge ``groups``: by number where they go by number; a group that goes by its faces joins by a move (or,
    where none goes by number, all become one ``[[split]]`` named as the first)."""
    kept = [g for g in groups if not _by_faces(people, clustering, g)]
    if len(kept) > 1:
        people.merges.append(sorted(kept))
    joining = [face for g in groups if g not in kept for face in _members(clustering, g)]
    if kept:
        _move(people, joining, min(kept))
    else:
        names = group_names(clustering.folder)
        people.splits.append((joining, names.get(groups[0], "")))


def _offered(edit: dict, session: ReviewSession, people: People) -> dict:
    """The suggestion ``edit`` answers, as the current suggestions hold it (else a FacepipeError)."""
    frame = suggestions(session.clustering, people)
    match = frame[(frame["kind"] == edit.get("kind")) & (frame["group"] == edit.get("group"))]
    if edit.get("kind") == "merge":
        match = match[match["other"] == edit.get("other")]
    else:
        match = match[match["face"] == edit.get("face")]
    if match.empty:
        raise FacepipeError("that suggestion is no longer offered (reload the page)")
    row = match.iloc[0]
    return {
        "kind": row["kind"],
        "group": int(row["group"]),
        "other": None if row["kind"] != "merge" else int(row["other"]),
        "face": row["face"],
    }


def edited(edit: dict, session: ReviewSession) -> People:
    """The people file after ``edit`` (a JSON object from the page: its ``action`` and what it needs)."""
    clustering, people = session.clustering, session.people()
    action = edit.get("action")
    if action in ("name", "not_a_person"):
        group = _group(edit.get("group"), clustering)
        by_faces = _by_faces(people, clustering, group)
        if action == "not_a_person":
            return _with(
                people,
                lambda p: (
                    _move(p, _members(clustering, group), UNKNOWN_CLUSTER)
                    if by_faces
                    else p.not_a_person.append(group)
                ),
            )
        name = edit.get("name")
        if not isinstance(name, str) or len(name.strip()) > MAX_NAME_LENGTH:
            raise FacepipeError(f"a name is text of at most {MAX_NAME_LENGTH} characters")
        if by_faces:
            return _with(people, lambda p: p.splits.append((_members(clustering, group), name.strip())))
        return _with(
            people, lambda p: p.names.update({group: name.strip()}) if name.strip() else p.names.pop(group, 0)
        )
    if action == "merge":
        groups = edit.get("groups")
        groups = list(dict.fromkeys(_group(g, clustering) for g in groups)) if isinstance(groups, list) else []
        if len(groups) < 2:
            raise FacepipeError("select two or more groups to merge")
        return _with(people, lambda p: _merge(p, clustering, groups))
    if action == "split":
        faces, name = _faces(edit.get("faces"), clustering), edit.get("name") or ""
        return _with(people, lambda p: p.splits.append((faces, str(name).strip()[:MAX_NAME_LENGTH])))
    if action == "move":
        faces, group = _faces(edit.get("faces"), clustering), _group(edit.get("group"), clustering, True)
        return _with(people, lambda p: _move(p, faces, group))
    if action in ("accept", "reject"):
        offered = _offered(edit, session, people)
        return _with(people, lambda p: _answer(p, clustering, offered, action == "accept"))
    raise FacepipeError(f"unknown edit {action!r}: one of {', '.join(ACTIONS)}")


def _with(people: People, change) -> People:
    change(people)
    return people


def _answer(people: People, clustering: Clustering, offered: dict, accept: bool) -> None:
    """Accept or reject one suggestion: a merge merges (or is recorded as two people); an unknown face joins
    the group (or is recorded as not its person); an outlier goes to unknown (or is recorded as belonging)."""
    kind, group, face = offered["kind"], offered["group"], offered["face"]
    if kind == "merge":
        if accept:
            _merge(people, clustering, [group, offered["other"]])
        else:
            people.rejected_merges.add((group, offered["other"]))
    elif accept:
        _move(people, [face], group if kind == "unknown" else UNKNOWN_CLUSTER)
    else:
        people.rejected_faces.add((face, group))


def _recluster(session: ReviewSession) -> None:
    """Redo the clustering with the people file as it is now (the options it recorded), then the run's report
    where the folder is a run folder; the session then shows the new clustering."""
    from facepipe.cluster import cluster, recorded_settings

    meta, folder = session.clustering.meta, session.folder
    options = meta["options"]
    labels = (meta.get("metrics") or {}).get("labels")
    embeddings = recorded_path(meta["embeddings"], session.clustering.results_path)
    people = str(session.people_file) if session.people_file.is_file() else None
    cluster(
        embeddings,
        folder,
        recorded_settings(options, people),
        samples_dir=options.get("samples_dir"),
        crops_dir=options.get("crops_dir"),
        labels=labels,
        show_progress=False,
    )
    session.clustering = read_clustering(folder)
    if (folder / RUN_REPORT_HTML).is_file() and (folder / RUN_SUMMARY_JSON).is_file():
        from facepipe.config import load_config
        from facepipe.report import write_report

        write_report(folder, read_json(folder / RUN_SUMMARY_JSON), load_config(folder / RUN_CONFIG_TOML))


def apply_edit(edit: dict, session: ReviewSession) -> None:
    """Write the people file after ``edit`` (atomically) and redo the clustering with it."""
    with session.lock:
        before = session.people_file.read_text(encoding="utf-8") if session.people_file.is_file() else None
        write_people(session.people_file, edited(edit, session))
        session.earlier.append(before)
        _recluster(session)


def undo(session: ReviewSession) -> None:
    """Put the people file back as it was before the last edit, and redo the clustering."""
    with session.lock:
        if not session.earlier:
            raise FacepipeError("nothing to undo")
        before = session.earlier.pop()
        if before is None:
            session.people_file.unlink(missing_ok=True)
        else:
            write_people_text(session.people_file, before)
        _recluster(session)


def face_file(session: ReviewSession, row: int) -> Path | None:
    """The crop of the clustering's face ``row`` (None where there is none, or its name leaves the crops folder)."""
    names = session.clustering.results["name"]
    crops = session.clustering.crops_dir
    if crops is None or not 0 <= row < len(names):
        return None
    path = inside_or_none(crops, str(names.iloc[row]))
    return path if path is not None and path.is_file() else None


def aggregate_file(session: ReviewSession, group: int) -> Path | None:
    """The CVAE face of ``group`` (generate's, in a run folder), if the clustering holds that group and it is there."""
    if group not in set(session.clustering.results["cluster"].tolist()) - {UNKNOWN_CLUSTER}:
        return None
    path = session.folder / RUN_INFERENCE_DIR / generated_face_names(group)["face"]
    return path if path.is_file() else None


@contextlib.contextmanager
def review_session(
    folder: str | os.PathLike, port: int = ReviewSettings.port
) -> Iterator[tuple[ReviewSession, socket.socket, str]]:
    """Hold ``folder``'s lock, read its clustering and bind 127.0.0.1:``port`` (0: a free one); yields the
    session, the listening socket and the page's URL (with the token)."""
    ReviewSettings(port=port)  # checks it
    results_path = cluster_results_path(folder)
    with folder_lock(results_path.parent):
        clustering = read_clustering(results_path)
        session = ReviewSession(clustering, people_file_for(clustering))
        session.people()  # a broken people file is refused before the page opens
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind((HOST, port))
        except OSError as error:
            listener.close()
            raise FacepipeError(f"cannot listen on {HOST}:{port}: {error.strerror or error}") from None
        with listener:
            yield session, listener, f"http://{HOST}:{listener.getsockname()[1]}/?token={session.token}"
