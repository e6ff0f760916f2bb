"""Hostile inputs, hand-edited files, extreme options, odd folder layouts and a faulty machine against the real
command line (issue 18's probe, extended for issue 28 to 300+ cases).

    python benchmarks/probe_faults.py [--work DIR] [--only REGEX] [--jobs N] [--list]

Each case is one `facepipe` command in a child process (its own process group) with a timeout (150 s unless
the case says otherwise, 45 s for `--workers 100000`; a command still running then is a hang), the exit codes the README allows for it (0 done, 1 error, 2 bad usage or a bad
config value, 3 done with unreadable inputs, 130 interrupted) and these checks:
- no "Traceback" on stderr, and a failed command's error is one line (one `error:` line; only indented detail
  lines may follow it);
- user files: every file the case planted in and around the output folder (its own photos, manifest.csv,
  notes, a group folder's copies...) is snapshotted (sha256 + mtime, links not followed) before the run and
  must be there unchanged after it; a refused command changes nothing (an assign case's collection is
  compared too when the command fails);
- writes outside: the case's `sentinel/` folder (a sibling of its output folder), any folder the case names
  as outside, and the shared base state (photos, crops, embeddings, clusterings, weights the cases read) must
  have no new, changed or removed entry (`.facepipe.lock` files aside);
- an optional check of what the command left behind (a silently wrong result: a float cluster accepted,
  everyone in one group, a rerun reading its own crops as photos...).
The expensive shared state (9 LFW photos of 3 people: detect, dlib embeddings as CSV and NPZ, k = 3 and
k = 2 clusterings, a 2-epoch 32 px CVAE) is built once in `--work/base` and reused by a later call with the
same `--work`. Cases are grouped in scenarios (a scenario's cases run in order: an interrupt, then its rerun);
`--only` picks scenarios by a regex on "class/scenario", `--jobs N` runs N scenarios at a time. The read-only
and permission cases drop root's override (util-linux setpriv); the full-disk cases mount small tmpfs folders
(root; skipped without). Prints one line per case and the totals by outcome and by class, writes
`--work/probe_faults.json` (`probe_faults_<only>.json` for a subset), exits 1 if any case fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LFW = REPO.parent / "shared" / "data" / "lfw" / "images"
PLAIN_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
TIMEOUT = 150  # seconds a case may run before it counts as a hang
WORKERS_TIMEOUT = 45  # --workers 100000 starts workers until killed: a short leash for the other users of the machine
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
IGNORED = {".facepipe.lock"}
OUTCOMES = (
    "traceback",
    "hang",
    "exit code",
    "error not one line",
    "user file deleted or changed",
    "write outside the output folder",
    "wrong result",
)
DETECT = ["--detector", "haar", "--min-neighbors", "5", "--workers", "1", "-q"]
TRAIN = ["--epochs", "1", "--image-size", "32", "--identity-weight", "0", "-q"]
TINY = {
    "detect": {"detector": '"haar"', "min_neighbors": "5", "largest_only": "true", "workers": "1"},
    "embed": {"model": '"dlib-resnet128"', "workers": "1"},
    "cluster": {"k": "2"},
    "train_cvae": {"epochs": "1", "image_size": "32", "identity_weight": "0"},
    "generate": {"samples": "1", "evaluate": "false"},
    "probe": {"targets": "[]"},
}


def tiny_config(**changes: dict) -> str:
    """The tiny run config (haar, dlib, k = 2, one 32 px epoch) as TOML, with ``changes`` ({section: {key: raw TOML
    value}}) merged in: every case's config differs from a working one by exactly what it tests."""
    sections = {name: dict(values) for name, values in TINY.items()}
    for section, values in changes.items():
        sections.setdefault(section, {}).update(values)
    return "".join(
        f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()) for name, values in sections.items()
    )


EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL = 1, 2, 3


def args_text(args) -> list:
    return [a if isinstance(a, bytes) else os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args]


class Outcome:
    """What a child facepipe command did: exit code (None: killed at the timeout), stdout, stderr, seconds."""

    def __init__(self, returncode, stdout: str, stderr: str, seconds: float):
        self.returncode, self.stdout, self.stderr, self.seconds = returncode, stdout, stderr, seconds


def facepipe(*args, plain_user=False, cwd=None, timeout=TIMEOUT, interrupt=None) -> Outcome:
    """Run `python -m facepipe ARGS` in its own process group; ``interrupt`` = (ready, signal, delay): once
    ``ready()`` is true (polled every 50 ms), wait ``delay`` s and send ``signal`` to the whole group, as a
    terminal's Ctrl-C does. Killed (and returncode None) after ``timeout`` s."""
    prefix = PLAIN_USER if plain_user else []
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        child = subprocess.Popen(
            [*prefix, sys.executable, "-m", "facepipe", *args_text(args)],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=ENV,
            start_new_session=True,
        )
        if interrupt is not None:
            ready, sig, delay = interrupt
            while child.poll() is None and not ready() and time.monotonic() - start < timeout:
                time.sleep(0.05)
            time.sleep(delay)
            if child.poll() is None:
                os.killpg(child.pid, sig)
        try:
            child.wait(timeout=max(1.0, timeout - (time.monotonic() - start)))
            code = child.returncode
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            code = None
        _reap_group(child.pid)
        out.seek(0)
        err.seek(0)
        return Outcome(
            code, out.read().decode(errors="replace"), err.read().decode(errors="replace"), time.monotonic() - start
        )


def background(*args) -> subprocess.Popen:
    """A facepipe command left running in its own process group (the holder of a lock), its output discarded."""
    return subprocess.Popen(
        [sys.executable, "-m", "facepipe", *args_text(args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
        start_new_session=True,
    )


def _reap_group(pgid: int) -> None:
    """Kill what is left of a case's own process group (workers of a killed command)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def snapshot(*roots) -> dict:
    """Every entry under ``roots`` (links not followed) -> (kind, sha256 or link target, size, mtime_ns)."""
    entries = {}
    for root in map(Path, roots):
        if not os.path.lexists(root):
            continue
        todo = [root]
        while todo:
            path = todo.pop()
            if path.name in IGNORED:
                continue
            info = path.lstat()
            if path.is_symlink():
                entries[str(path)] = ("link", os.readlink(path), 0, info.st_mtime_ns)
            elif path.is_dir():
                entries[str(path)] = ("dir", "", 0, 0)
                try:
                    todo += list(path.iterdir())
                except OSError:
                    pass
            elif path.is_file():
                digest = hashlib.sha256()
                with open(path, "rb") as handle:
                    for piece in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(piece)
                entries[str(path)] = ("file", digest.hexdigest(), info.st_size, info.st_mtime_ns)
            else:
                entries[str(path)] = ("other", "", 0, info.st_mtime_ns)
    return entries


def differences(before: dict, after: dict, new_counts: bool) -> list[str]:
    lost = [f"removed {p}" for p in before if p not in after]
    changed = [f"changed {p}" for p in before if p in after and after[p] != before[p]]
    new = [f"new {p}" for p in after if p not in before] if new_counts else []
    return lost + changed + new


def exception_name(stderr: str) -> str:
    """The exception that ended the last traceback on stderr (e.g. KeyError, cv2.error)."""
    lines = stderr.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("Traceback"))
    ends = [line for line in lines[start + 1 :] if line and not line.startswith((" ", "\t"))]
    return ends[0].split(":")[0][:60] if ends else "Traceback"


def error_lines_problem(outcome: Outcome) -> str | None:
    """A failed command says what is wrong in one `error:` line (indented lines may list details); a finished
    one prints none."""
    lines = outcome.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if re.match(r"(error|Error)\b", line)]
    if outcome.returncode in (EXIT_ERROR, EXIT_USAGE):
        if len(errors) != 1:
            return f"{len(errors)} error lines (the last line: {(lines or [''])[-1][:60]!r})"
        trailing = [line for line in lines[errors[0] + 1 :] if line.strip() and not line.startswith((" ", "\t"))]
        return f"more after the error line: {trailing[0][:60]!r}" if trailing else None
    return f"an error line on exit {outcome.returncode}" if errors and outcome.returncode == 0 else None


class Probe:
    """Runs the scenarios, records one row per case, prints the totals."""

    def __init__(self, work: Path, base: dict):
        self.work, self.base = work, base
        self.rows, self.lock, self.counter = [], threading.Lock(), 0

    def scenario(self, cls: str, name: str) -> "Scenario":
        with self.lock:
            self.counter += 1
            number = self.counter
        folder = self.work / "cases" / f"{number:03d}_{re.sub(r'[^A-Za-z0-9]+', '_', name)[:40]}"
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "sentinel").mkdir(parents=True)
        (folder / "sentinel" / "keep.txt").write_text("the user's own file beside the output folder\n")
        shutil.copy(self.base["face"], folder / "sentinel" / "holiday.jpg")
        return Scenario(self, cls, name, folder)

    def record(self, row: dict) -> None:
        with self.lock:
            self.rows.append(row)
            problems = "; ".join(f"{k}: {v}" for k, v in row["problems"]) or row["last"]
            print(
                f"{'ok ' if not row['problems'] else 'BAD'} [{row['class']}] {row['name']}: exit {row['exit']}; "
                f"{problems}",
                flush=True,
            )


class Scenario:
    """One folder of cases in a class: `plant` user files, `case` a command, `step` an unrecorded setup command."""

    def __init__(self, probe: Probe, cls: str, name: str, folder: Path):
        self.probe, self.cls, self.name, self.dir = probe, cls, name, folder
        self.base = probe.base
        self.planted: list[Path] = []
        self.outside: list[Path] = [folder / "sentinel"]

    def plant(self, path: Path, data: bytes | str = b"the user's own file\n") -> Path:
        """A file of the user's (kept, unchanged, by every later case of this scenario)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        self.planted.append(path)
        return path

    def own(self, *paths: Path) -> None:
        """Existing files, or the files in existing folders, that are the user's: each must survive unchanged.
        Taken now, so that what a later case writes into such a folder is not counted as the user's."""
        self.planted += [Path(path) for path, (kind, *_) in snapshot(*paths).items() if kind != "dir"]

    def step(self, *args, **kwargs) -> Outcome:
        outcome = facepipe(*args, **kwargs)
        if outcome.returncode not in (0, EXIT_PARTIAL):
            print(
                f"    (setup step of {self.name} ended {outcome.returncode}: "
                f"{(outcome.stderr.strip().splitlines() or [''])[-1][:100]})",
                flush=True,
            )
        return outcome

    def case(
        self,
        name: str,
        expected: set[int],
        *args,
        check=None,
        plain_user=False,
        cwd=None,
        timeout=TIMEOUT,
        interrupt=None,
        unchanged_if_refused=(),
        outside=(),
    ) -> Outcome:
        watched_outside = [*self.outside, *outside, *self.base["shared"]]
        user_before = snapshot(*self.planted)
        outside_before = snapshot(*watched_outside)
        refused_before = snapshot(*unchanged_if_refused)
        outcome = facepipe(*args, plain_user=plain_user, cwd=cwd, timeout=timeout, interrupt=interrupt)
        problems = []
        if "Traceback" in outcome.stderr:
            problems.append(("traceback", exception_name(outcome.stderr)))
        if outcome.returncode is None:
            problems.append(("hang", f"still running after {timeout} s"))
        elif outcome.returncode not in expected:
            problems.append(("exit code", f"{outcome.returncode}, expected {sorted(expected)}"))
        if outcome.returncode is not None and "Traceback" not in outcome.stderr:
            line_problem = error_lines_problem(outcome)
            if line_problem:
                problems.append(("error not one line", line_problem))
        lost = differences(user_before, snapshot(*self.planted), new_counts=False)
        if outcome.returncode not in (0, EXIT_PARTIAL):
            lost += differences(refused_before, snapshot(*unchanged_if_refused), new_counts=False)
        if lost:
            problems.append(("user file deleted or changed", f"{len(lost)}: {', '.join(lost[:3])}"))
        outside_changes = differences(outside_before, snapshot(*watched_outside), new_counts=True)
        if outside_changes:
            problems.append(
                ("write outside the output folder", f"{len(outside_changes)}: {', '.join(outside_changes[:3])}")
            )
        if check is not None:
            try:
                wrong = check(outcome)
            except Exception as error:  # a check that cannot read what the command left is a wrong result too
                wrong = f"check failed: {type(error).__name__}: {error}"
            if wrong:
                problems.append(("wrong result", wrong))
        last = (outcome.stderr.strip().splitlines() or [""])[-1][:110]
        self.probe.record(
            dict(
                name=name,
                scenario=self.name,
                **{"class": self.cls},
                expected=sorted(expected),
                exit=outcome.returncode,
                seconds=round(outcome.seconds, 2),
                problems=problems,
                last=last,
            )
        )
        return outcome


# ------------------------------------------------------------------ shared state, helpers


def setup(work: Path) -> dict:
    """Nine LFW photos of three people, their crops, dlib embeddings (CSV and NPZ), k = 3 and k = 2 clusterings,
    a tiny CVAE, labels, new photos for assign and 150 photos for the interrupt cases; built once per --work."""
    base = work / "base"
    paths = dict(
        photos=base / "photos",
        crops=base / "crops",
        features=base / "f.csv",
        npz=base / "f.npz",
        clusters=base / "clusters",
        clusters2=base / "clusters2",
        weights=base / "weights",
        labels=base / "labels.csv",
        more=base / "more",
        many=base / "many.txt",
        config=base / "tiny.toml",
    )
    paths["face"] = paths["photos"] / "Kofi_Annan_0001.jpg"
    paths["shared"] = [base]
    if (base / "done").is_file():
        return paths
    shutil.rmtree(base, ignore_errors=True)
    paths["photos"].mkdir(parents=True)
    rows = ["relpath,identity,male"]
    for person, male in (("Kofi_Annan", 1), ("Hans_Blix", 1), ("Angelina_Jolie", 0)):
        for photo in sorted((LFW / person).glob("*.jpg"))[:3]:
            shutil.copy(photo, paths["photos"] / photo.name)
            rows.append(f"photos/{photo.name},{person},{male}")
    paths["labels"].write_text("\n".join(rows) + "\n")
    paths["more"].mkdir()
    for person in ("Kofi_Annan", "Angelina_Jolie", "George_W_Bush"):
        shutil.copy(sorted((LFW / person).glob("*.jpg"))[5], paths["more"])
    many = sorted(LFW.glob("*/*.jpg"))[::9][:150]
    paths["many"].write_text("".join(f"{p}\n" for p in many))
    paths["config"].write_text(tiny_config())
    for args in (
        ["detect", paths["photos"], "-o", paths["crops"], "--min-neighbors", "5", "-q"],
        ["embed", paths["crops"], "-o", paths["features"], "--model", "dlib-resnet128", "-q"],
        ["embed", paths["crops"], "-o", paths["npz"], "--model", "dlib-resnet128", "-q"],
        ["cluster", paths["features"], "-o", paths["clusters"], "--k", "3", "-q"],
        ["cluster", paths["features"], "-o", paths["clusters2"], "--k", "2", "-q"],
        [
            "train-cvae",
            paths["clusters"] / "cluster_results.csv",
            "-o",
            paths["weights"],
            "--epochs",
            "2",
            "--image-size",
            "32",
            "--identity-weight",
            "0",
            "-q",
        ],
    ):
        result = facepipe(*args, timeout=900)
        assert result.returncode == 0, result.stderr
    (base / "done").write_text("")
    return paths


def collection(s: Scenario, name: str = "coll") -> Path:
    """A private copy of the base collection (crops, embeddings, k = 3 clustering) for the commands that write
    into it (assign) or read files of it that a case edits; the sidecars' paths are pointed at the copy."""
    b, dest = s.base, s.dir / name
    dest.mkdir()
    shutil.copytree(b["crops"], dest / "crops")
    shutil.copytree(b["clusters"], dest / "clusters")
    for name_ in ("f.csv", "f.csv.json"):
        shutil.copy(b["features"].parent / name_, dest / name_)
    for sidecar in (dest / "f.csv.json", dest / "clusters" / "cluster_results.csv.json"):
        text = sidecar.read_text().replace(str(b["crops"]), str(dest / "crops"))
        text = text.replace(str(b["features"]), str(dest / "f.csv")).replace(
            str(b["clusters"]), str(dest / "clusters")
        )
        sidecar.write_text(text)
    return dest


def copy_clusters(s: Scenario, name: str = "clusters", source: Path | None = None) -> Path:
    dest = s.dir / name
    shutil.copytree(source or s.base["clusters"], dest)
    return dest


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rehash(folder: Path, sidecar_name: str = "cluster_results.csv.json") -> None:
    """After a hand edit, make the folder's sidecar agree with it again (so the reader's own checks are reached)."""
    sidecar = folder / sidecar_name
    meta = json.loads(sidecar.read_text())
    for relative in meta.get("outputs", {}):
        if (folder / relative).is_file():
            meta["outputs"][relative] = sha256(folder / relative)
    sidecar.write_text(json.dumps(meta, indent=2, sort_keys=True))


def embeddings_copy(s: Scenario, name: str, data: bytes, sidecar: object = None, npz=False) -> Path:
    """An embeddings file with ``data``, beside the base sidecar (or ``sidecar``) with data_sha256 set to it."""
    source = s.base["npz"] if npz else s.base["features"]
    path = s.dir / f"{name}{source.suffix}"
    path.write_bytes(data)
    if sidecar is None:
        meta = json.loads(Path(f"{source}.json").read_text())
        meta["data_sha256"] = hashlib.sha256(data).hexdigest()
        sidecar = json.dumps(meta)
    if sidecar is not False:
        Path(f"{path}.json").write_bytes(sidecar.encode() if isinstance(sidecar, str) else sidecar)
    return path


def npz_bytes(**arrays) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def csv_rows(path: Path) -> list[list[str]]:
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def rows_text(rows: list[list[str]]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def grouping(path: Path) -> list[frozenset]:
    """The partition of a cluster_results.csv (numbers aside), unknown faces as their own groups."""
    rows = csv_rows(path)[1:]
    groups: dict[str, set] = {}
    for i, (name, cluster, *_rest) in enumerate(rows):
        groups.setdefault(cluster if cluster != "-1" else f"u{i}", set()).add(name)
    return sorted(map(frozenset, groups.values()), key=sorted)


def decodes_whole(folder: Path) -> str | None:
    from PIL import Image

    for crop in sorted(folder.glob("*.jpg")) + sorted(folder.glob("*.png")):
        try:
            with Image.open(crop) as image:
                image.load()
        except OSError as error:
            return f"crop {crop.name} does not decode: {error}"
    return None


def jpeg_with_size(source: Path, width: int, height: int) -> bytes:
    """A JPEG whose frame header claims width x height (the scan data stays the small photo's): a bomb header."""
    data = bytearray(source.read_bytes())
    i = 2
    while i < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise ValueError("no SOF marker")


def png_header(width: int, height: int, idat: bytes = b"") -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", idat or zlib.compress(b"\x00" * 1000))
        + chunk(b"IEND", b"")
    )


def limit(option: str, seconds: int) -> int:
    """The timeout of an extreme-option case: short for a worker count, whose hang starts process after process."""
    return WORKERS_TIMEOUT if option.startswith("--workers") else seconds


def lock_taken(folder: Path):
    lock = folder / ".facepipe.lock"
    return lambda: lock.is_file() and lock.stat().st_size > 0


def exists(path: Path):
    return lambda: path.exists()


class Tmpfs:
    """A small tmpfs at ``folder`` (root only): ``grow`` frees space by remounting larger."""

    def __init__(self, folder: Path, size: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.ok = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
            ).returncode
            == 0
        )

    def grow(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.folder)], check=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.ok:
            subprocess.run(["umount", "-l", str(self.folder)], check=False)


SCENARIOS: list[tuple[str, str, object]] = []


def scenario(cls: str, name: str):
    def register(function):
        SCENARIOS.append((cls, name, function))
        return function

    return register


# ------------------------------------------------------------------ the 66 cases of issue 18, kept


def hostile_photos(folder: Path, photos: Path) -> Path:
    from PIL import Image

    shutil.copytree(photos, folder)
    first = next(photos.glob("*.jpg")).read_bytes()
    (folder / "random.jpg").write_bytes(np.random.default_rng(0).bytes(5000))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "half.jpg").write_bytes(first[: len(first) // 2])
    (folder / "text.png").write_text("not an image")
    Image.new("L", (13000, 13000)).save(folder / "huge.png")
    (folder / "unreadable.jpg").write_bytes(first)
    (folder / "unreadable.jpg").chmod(0)
    (folder / "private").mkdir()
    (folder / "private" / "x.jpg").write_bytes(first)
    (folder / "private").chmod(0)
    return folder


@scenario("images", "issue 18: hostile photo folder and odd inputs")
def issue18_inputs(s: Scenario) -> None:
    w, photos = s.dir, s.base["photos"]
    hostile = hostile_photos(w / "hostile", photos)
    s.own(hostile)

    def errors_listed(*names):
        def check(_):
            text = (w / "d_hostile" / "errors.csv").read_text()
            missing = [n for n in names if n not in text]
            return f"not in errors.csv: {missing}" if missing else None

        return check

    s.case(
        "detect: corrupt, empty, truncated, non-image, huge, unreadable file and folder",
        {3},
        "detect",
        hostile,
        "-o",
        w / "d_hostile",
        "-q",
        "--min-neighbors",
        "5",
        plain_user=True,
        check=errors_listed(
            "random.jpg", "empty.jpg", "half.jpg", "text.png", "huge.png", "unreadable.jpg", "private"
        ),
    )
    (w / "anim.gif").write_bytes(b"GIF89a" + bytes(100))
    s.case("detect: a .gif input", {1}, "detect", w / "anim.gif", "-o", w / "d_gif", "-q")
    (w / "binary.txt").write_bytes(b"\x00\x01\x02")
    s.case("detect: a binary list file", {1}, "detect", w / "binary.txt", "-o", w / "d_bin", "-q")
    (w / "latin1.txt").write_bytes(f"{next(photos.glob('*.jpg'))}\n".encode("latin-1"))
    s.case("detect: a Latin-1 list file", {0}, "detect", w / "latin1.txt", "-o", w / "d_latin", "-q")
    s.case("detect: a missing input", {1}, "detect", w / "nope", "-o", w / "d_missing", "-q")
    (w / "bad.xml").write_text("<x/>")
    s.case("detect: a cascade that is not one", {1}, "detect", photos, "-o", w / "d_xml", "--cascade", w / "bad.xml")


@scenario("options", "issue 18: option ranges")
def issue18_options(s: Scenario) -> None:
    w, b = s.dir, s.base
    photos, crops, features, weights = b["photos"], b["crops"], b["features"], b["weights"]
    results = b["clusters"] / "cluster_results.csv"
    for option in (
        ["--min-neighbors", "-1"],
        ["--scale-factor", "1.0"],
        ["--scale-factor", "nan"],
        ["--margin", "inf"],
        ["--workers", "0"],
        ["--max-pixels", "0"],
        ["--dlib-threshold", "nan"],
    ):
        s.case(f"detect {' '.join(option)}", {2}, "detect", photos, "-o", w / "d_opt", *option)
    s.case("embed: a missing crops folder", {1}, "embed", w / "nope", "-o", w / "e.csv", "--model", "dlib-resnet128")
    s.plant(w / "afile", "x")
    s.case("embed -o under a file", {1}, "embed", crops, "-o", w / "afile" / "e.csv", "--model", "dlib-resnet128")
    s.case("embed --batch-size 0", {2}, "embed", crops, "--batch-size", "0")
    s.case("embed --model nope", {2}, "embed", crops, "--model", "nope")
    (w / "garbage.csv").write_text("name,e0\nx,notanumber\n")
    s.case("cluster: a garbage embeddings CSV", {1}, "cluster", w / "garbage.csv", "-o", w / "c1")
    lines = features.read_text().splitlines()
    (w / "nan.csv").write_text("\n".join([lines[0], lines[1].rsplit(",", 1)[0] + ",nan", *lines[2:]]) + "\n")
    s.case("cluster: an embeddings CSV with NaN", {1}, "cluster", w / "nan.csv", "-o", w / "c2")
    for option in (
        ["--k", "0"],
        ["--k", "many"],
        ["--k-range", "5:2"],
        ["--k-range", "1:5"],
        ["--threshold", "9"],
        ["--threshold", "nan"],
    ):
        s.case(f"cluster {' '.join(option)}", {2}, "cluster", features, "-o", w / "c3", *option)
    s.case("cluster --k 1000 (more than the faces)", {1}, "cluster", features, "-o", w / "c4", "--k", "1000")
    for option in (
        ["--beta", "nan"],
        ["--beta", "-1"],
        ["--learning-rate", "inf"],
        ["--learning-rate", "0"],
        ["--epochs", "0"],
        ["--image-size", "1000"],
        ["--latent-dim", "0"],
    ):
        s.case(f"train-cvae {' '.join(option)}", {2}, "train-cvae", results, "-o", w / "t", *option)
    s.case("train-cvae: missing cluster results", {1}, "train-cvae", w / "nope.csv", "-o", w / "t2")
    s.case("generate --cluster 99", {1}, "generate", weights, "--cluster", "99", "-o", w / "g4")
    s.case("generate --temperature nan", {2}, "generate", weights, "--all", "--temperature", "nan")


@scenario("intermediate", "issue 18: checkpoints and probes")
def issue18_files(s: Scenario) -> None:
    import torch

    from facepipe.cvae import CVAEConfig

    w, features = s.dir, s.base["features"]
    (w / "corrupt.pt").write_bytes(b"PK\x03\x04 broken")
    s.case("generate: a corrupt checkpoint", {1}, "generate", w / "corrupt.pt", "--all", "-o", w / "g1")
    marker = w / "PWNED"
    payload = (
        f"import torch, os\nclass P:\n    def __reduce__(self):\n        return (os.system, ('touch {marker}',))\n"
        f"torch.save({{'format': 'facepipe-cvae/1', 'x': P()}}, '{w / 'evil.pt'}')\n"
    )
    subprocess.run([sys.executable, "-c", payload], check=True)
    s.case(
        "generate: a pickle payload in a checkpoint is refused, never run",
        {1},
        "generate",
        w / "evil.pt",
        "--all",
        "-o",
        w / "g2",
        check=lambda _: "the payload ran" if marker.exists() else None,
    )
    torch.save(
        {
            "format": "facepipe-cvae/1",
            "config": dict(CVAEConfig(clusters=[0]).to_dict(), image_size=10**6),
            "model": {},
            "epoch": 1,
        },
        w / "huge.pt",
    )
    s.case(
        "generate: a checkpoint asking for image size 1,000,000",
        {1},
        "generate",
        w / "huge.pt",
        "--all",
        "-o",
        w / "g3",
    )
    good = {
        "format": "facepipe-linear-probe/1",
        "target": "bald",
        "intercept": 0.0,
        "threshold": 0.5,
        "C": 1.0,
        "embedding_model": "dlib-resnet128",
        "embedding_dimension": 128,
        "coefficients": [0.0] * 128,
        "scaler_mean": [0.0] * 128,
        "scaler_scale": [1.0] * 128,
    }
    for name, change in (
        ("a NaN coefficient", {"coefficients": [float("nan")] + [0.0] * 127}),
        ("a zero scale", {"scaler_scale": [0.0] * 128}),
        ("a threshold of 7", {"threshold": 7}),
        ("coefficients a string", {"coefficients": "0"}),
        ("127 coefficients", {"coefficients": [0.0] * 127}),
        ("another format", {"format": "sklearn-pickle/1"}),
        ("no intercept", {"intercept": None}),
        ("dimension 2048", {"embedding_dimension": 2048}),
    ):
        (w / "p.json").write_text(json.dumps(dict(good, **change)))
        s.case(
            f"probe predict: {name}",
            {1},
            "probe",
            "predict",
            features,
            "--probe",
            w / "p.json",
            "-o",
            w / "pred.csv",
            check=lambda _: "predictions written" if (w / "pred.csv").exists() else None,
        )
    for name, text in (("a JSON list", "[1, 2]"), ("not JSON", "{oops"), ("empty", "")):
        (w / "p.json").write_text(text)
        s.case(
            f"probe predict: a probe file that is {name}",
            {1},
            "probe",
            "predict",
            features,
            "--probe",
            w / "p.json",
            "-o",
            w / "pred.csv",
        )


@scenario("config", "issue 18: run config values")
def issue18_config(s: Scenario) -> None:
    w, photos = s.dir, s.base["photos"]
    for key, value in (
        ("train_cvae", "epochs = 2.5"),
        ("train_cvae", 'epochs = "two"'),
        ("train_cvae", "epochs = 1e20"),
        ("train_cvae", "learning_rate = nan"),
        ("detect", 'min_neighbors = "five"'),
        ("detect", "scale_factor = 1.0"),
        ("train_cvae", "epochs = true"),
        ("train_cvae", "latent_dim = 0"),
        ("cluster", "k = -3"),
        ("generate", "samples = 1.5"),
        ("run", 'labels = "nope.csv"'),
        ("embed", "model = 3"),
    ):
        (w / "c.toml").write_text(f"[{key}]\n{value}\n")
        s.case(
            f"run config [{key}] {value}",
            {2},
            "run",
            photos,
            "--out",
            w / "r_bad",
            "--config",
            w / "c.toml",
            check=lambda _: "a stage ran" if (w / "r_bad" / "temp").exists() else None,
        )
    # issue 18 expected 1 for these two; the README's promise (issue 28, cause 7) is 2
    (w / "c.toml").write_text("[detect\n")
    s.case("run: a config that is not TOML", {2}, "run", photos, "--out", w / "r_bad", "--config", w / "c.toml")
    (w / "c.toml").write_text("[detect]\ncolour = 3\n")
    s.case("run: an unknown config key", {2}, "run", photos, "--out", w / "r_bad", "--config", w / "c.toml")


@scenario("filesystem", "read-only output folders")
def read_only(s: Scenario) -> None:
    w, b = s.dir, s.base
    locked = w / "read_only"
    locked.mkdir()
    locked.chmod(0o555)
    results = b["clusters"] / "cluster_results.csv"
    coll = collection(s)
    (coll / "clusters").chmod(0o555)
    for name, args in (
        ("detect", ["detect", b["photos"], "-o", locked / "x"]),
        ("embed", ["embed", b["crops"], "-o", locked / "x.csv", "--model", "dlib-resnet128"]),
        ("embed (.npz)", ["embed", b["crops"], "-o", locked / "x.npz", "--model", "dlib-resnet128"]),
        ("cluster", ["cluster", b["features"], "-o", locked / "x", "--k", "2"]),
        (
            "train-cvae",
            [
                "train-cvae",
                results,
                "-o",
                locked / "x",
                "--epochs",
                "1",
                "--image-size",
                "32",
                "--identity-weight",
                "0",
            ],
        ),
        ("generate", ["generate", b["weights"], "--all", "-o", locked / "x", "--no-evaluate"]),
        ("run", ["run", b["photos"], "--out", locked / "x", "--config", b["config"]]),
        ("export", ["export", b["clusters"], "-o", locked / "x"]),
        (
            "probe train",
            [
                "probe",
                "train",
                b["features"],
                "--labels",
                b["labels"],
                "--target",
                "male",
                "--group-column",
                "relpath",
                "--folds",
                "2",
                "-o",
                locked / "p.json",
            ],
        ),
        (
            "cluster --samples-dir",
            ["cluster", b["features"], "-o", w / "c_ok", "--k", "2", "--samples-dir", locked / "s"],
        ),
    ):
        s.case(
            f"{name} into a read-only folder",
            {1},
            *args,
            "-q",
            plain_user=True,
            check=lambda _: "wrote into it" if any(locked.iterdir()) else None,
        )
    s.case(
        "assign into a read-only clustering folder",
        {1},
        "assign",
        b["more"],
        "--clusters",
        coll / "clusters",
        "-q",
        plain_user=True,
        unchanged_if_refused=[coll],
    )
    locked.chmod(0o755)


# ------------------------------------------------------------------ images


@scenario("images", "colour modes and EXIF orientation")
def colour_modes(s: Scenario) -> None:
    from PIL import Image

    face = Image.open(s.base["face"]).convert("RGB")
    grey = face.convert("L")
    half_clear = face.convert("RGBA")
    half_clear.putalpha(128)
    variants = {
        "grey.png": grey,
        "grey_alpha.png": face.convert("LA"),
        "palette.png": face.convert("P"),
        "half_transparent.png": half_clear,
        "rgba.png": face.convert("RGBA"),
        "cmyk.jpg": face.convert("CMYK"),
        "cmyk.tif": face.convert("CMYK"),
        "sixteen_bit.png": Image.fromarray(np.asarray(grey).astype(np.uint16) * 256),
        "int32.tif": grey.convert("I"),
        "float.tif": grey.convert("F"),
        "one_bit.png": face.convert("1"),
        "ycbcr.jpg": face.convert("YCbCr"),
        "grey.jpg": face.convert("L"),
        "webp.webp": face,
        "bmp.bmp": face,
        "upper_case.JPG": face,
    }
    for name, image in variants.items():
        folder = s.dir / f"in_{name.replace('.', '_')}"
        folder.mkdir()
        image.save(folder / name)
        s.own(folder)
        s.case(
            f"detect: a {name} photo",
            {0},
            "detect",
            folder,
            "-o",
            s.dir / f"d_{name}",
            *DETECT,
            check=lambda _, n=name: (
                None if f"{n},ok," in (s.dir / f"d_{n}" / "sources.csv").read_text() else "not read as a photo"
            ),
        )
    folder = s.dir / "in_exif"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    face.rotate(90, expand=True).save(folder / "turned.jpg", exif=exif)
    s.own(folder)
    s.case(
        "detect: a photo with EXIF orientation 6",
        {0},
        "detect",
        folder,
        "-o",
        s.dir / "d_exif",
        *DETECT,
        check=lambda _: None if ",1," in (s.dir / "d_exif" / "sources.csv").read_text() else "face not found",
    )


@scenario("images", "truncated, empty, tiny, long and non-image files")
def broken_images(s: Scenario) -> None:
    from PIL import Image

    data = s.base["face"].read_bytes()
    face = Image.open(s.base["face"])
    png = s.dir / "face.png"
    face.save(png)
    variants = {
        "cut_10.jpg": data[: len(data) // 10],
        "cut_50.jpg": data[: len(data) // 2],
        "cut_95.jpg": data[: len(data) * 95 // 100],
        "header_only.jpg": data[:20],
        "cut.png": png.read_bytes()[: png.stat().st_size // 2],
        "zero.jpg": b"",
        "zero.png": b"",
        "random.png": np.random.default_rng(1).bytes(3000),
        "html.jpg": b"<html><body>hi</body></html>",
        "jpeg_named.png": data,
        "png_named.jpg": png.read_bytes(),
        "nul_bytes.jpg": bytes(4096),
    }
    for name, content in variants.items():
        folder = s.dir / f"in_{name.replace('.', '_')}"
        s.plant(folder / name, content)
        expected = {0} if name in ("jpeg_named.png", "png_named.jpg") else {3}
        s.case(
            f"detect: {name}",
            expected,
            "detect",
            folder,
            "-o",
            s.dir / f"d_{name}",
            *DETECT,
            check=lambda r, n=name: (
                None
                if r.returncode != 3 or n in (s.dir / f"d_{n}" / "errors.csv").read_text()
                else "not listed in errors.csv"
            ),
        )
    for name, size in (
        ("one_pixel.jpg", (1, 1)),
        ("one_pixel.png", (1, 1)),
        ("wide.jpg", (20000, 8)),
        ("tall.jpg", (8, 20000)),
        ("wide.png", (20000, 8)),
        ("two_pixels.jpg", (2, 1)),
    ):
        folder = s.dir / f"in_{name.replace('.', '_')}"
        folder.mkdir()
        Image.new("RGB", size, (120, 90, 60)).save(folder / name)
        s.own(folder)
        s.case(
            f"detect (default detector): a {size[0]}x{size[1]} {name[-3:]}",
            {0, 3},
            "detect",
            folder,
            "-o",
            s.dir / f"d_{name}",
            "-q",
            "--workers",
            "1",
            check=lambda _, n=name: (
                None
                if n in (s.dir / f"d_{n}" / "sources.csv").read_text() + (s.dir / f"d_{n}" / "errors.csv").read_text()
                else "neither in sources.csv nor errors.csv"
            ),
        )


@scenario("images", "decompression bombs and HEIC")
def bombs(s: Scenario) -> None:
    from PIL import Image

    face = s.base["face"]
    variants = {
        "bomb_header.jpg": jpeg_with_size(face, 65000, 65000),
        "bomb_header.png": png_header(100000, 100000),
        "bomb_wide.png": png_header(2**31 - 1, 1),
        "bomb_zero.png": png_header(0, 0),
        "bomb_deflate.png": png_header(20000, 20000, zlib.compress(b"\x00" * 20001 * 2000, 9)),
    }
    for name, content in variants.items():
        folder = s.dir / f"in_{name.replace('.', '_')}"
        s.plant(folder / name, content)
        s.case(
            f"detect: {name}",
            {3},
            "detect",
            folder,
            "-o",
            s.dir / f"d_{name}",
            *DETECT,
            check=lambda _, n=name: (
                None if n in (s.dir / f"d_{n}" / "errors.csv").read_text() else "not listed in errors.csv"
            ),
        )
    folder = s.dir / "in_maxpx"
    s.plant(folder / "face.jpg", face.read_bytes())
    s.case(
        "detect --max-pixels 100: an ordinary photo over it",
        {3},
        "detect",
        folder,
        "-o",
        s.dir / "d_maxpx",
        *DETECT,
        "--max-pixels",
        "100",
    )
    import pillow_heif

    pillow_heif.register_heif_opener()
    heic = s.dir / "in_heic"
    heic.mkdir()
    Image.open(face).save(heic / "face.heic")
    s.own(heic)
    s.case(
        "detect: a HEIC photo",
        {0},
        "detect",
        heic,
        "-o",
        s.dir / "d_heic",
        *DETECT,
        check=lambda _: None if ",1," in (s.dir / "d_heic" / "sources.csv").read_text() else "face not found",
    )
    cut = s.dir / "in_heic_cut"
    s.plant(cut / "cut.heic", (heic / "face.heic").read_bytes()[:300])
    s.case("detect: a truncated HEIC", {3}, "detect", cut, "-o", s.dir / "d_heic_cut", *DETECT)
    fake = s.dir / "in_heic_fake"
    s.plant(fake / "fake.heif", b"\x00\x00\x00\x18ftypheic" + bytes(64))
    s.case("detect: a HEIF header and nothing else", {3}, "detect", fake, "-o", s.dir / "d_heic_fake", *DETECT)


@scenario("images", "names: non-UTF-8, newline, comma, formula, dash, long, unicode")
def odd_names(s: Scenario) -> None:
    data = s.base["face"].read_bytes()
    names = {
        "latin1": b"caf\xe9.jpg",
        "newline": b"two\nlines.jpg",
        "comma_quote": b'a,"b".jpg',
        "formula": b"=HYPERLINK(1).jpg",
        "dash": b"-o.jpg",
        "long": b"x" * 250 + b".jpg",
        "unicode": "成龙 😀.jpg".encode(),
        "spaces": b" lead and trail .jpg",
        "tab_cr": b"tab\tcr\r.jpg",
        "backslash": b"back\\slash.jpg",
    }
    for label, raw in names.items():
        folder = s.dir / f"in_{label}"
        folder.mkdir()
        with open(os.path.join(os.fsencode(folder), raw), "wb") as handle:
            handle.write(data)
        s.own(folder)
        out = s.dir / f"d_{label}"
        # a name that is not UTF-8 cannot be named in a (UTF-8) CSV: detect lists it in errors.csv with the reason
        # and exits 3, and embed finds no crop of it (exit 1, one line); every other name is processed
        s.case(
            f"detect: a photo named {raw[:30]!r}",
            {0, 3} if label == "long" else {3} if label == "latin1" else {0},
            "detect",
            folder,
            "-o",
            out,
            *DETECT,
            check=lambda _, o=out: (
                None
                if len(csv_rows(o / "sources.csv")) + len(csv_rows(o / "errors.csv"))
                == (4 if label == "latin1" else 3)
                else "sources.csv and errors.csv do not read back as one row for the one photo"
            ),
        )
        if label in ("latin1", "newline", "formula"):
            s.case(
                f"embed: crops of a photo named {raw[:20]!r}",
                {1} if label == "latin1" else {0},
                "embed",
                out,
                "-o",
                s.dir / f"e_{label}.csv",
                "--model",
                "dlib-resnet128",
                "--workers",
                "1",
                "-q",
            )
    folder = s.dir / "in_latin1_folder"
    sub = os.path.join(os.fsencode(folder), b"f\xf6lder")
    os.makedirs(sub)
    with open(os.path.join(sub, b"a.jpg"), "wb") as handle:
        handle.write(data)
    s.own(folder)
    s.case(
        "detect: a photo in a folder whose name is not UTF-8",
        {3},
        "detect",
        folder,
        "-o",
        s.dir / "d_latin_dir",
        *DETECT,
    )  # listed in errors.csv, exit 3 (see above)
    s.case(
        "detect: the non-UTF-8 photo given by name on the command line",
        {3},
        "detect",
        os.path.join(os.fsencode(s.dir / "in_latin1"), b"caf\xe9.jpg"),
        "-o",
        s.dir / "d_latin_arg",
        *DETECT,
    )


@scenario("images", "folders named .jpg, FIFOs, devices, links and loops")
def special_files(s: Scenario) -> None:
    data = s.base["face"].read_bytes()
    tree = s.dir / "tree"
    s.plant(tree / "real.jpg", data)
    (tree / "folder.jpg").mkdir()
    s.plant(tree / "folder.jpg" / "inner.jpg", data)
    (tree / "empty_folder.png").mkdir()
    os.mkfifo(tree / "fifo.jpg")
    (tree / "loop_a.jpg").symlink_to("loop_b.jpg")
    (tree / "loop_b.jpg").symlink_to("loop_a.jpg")
    (tree / "self.jpg").symlink_to("self.jpg")
    (tree / "dangling.jpg").symlink_to("nowhere.jpg")
    (tree / "zero_device.jpg").symlink_to("/dev/zero")
    (tree / "loop_dir").symlink_to(".")
    s.own(tree)
    s.case(
        "detect: folder named .jpg, FIFO, link loops, dangling link, /dev/zero, folder loops",
        {0, 3},
        "detect",
        tree,
        "-o",
        s.dir / "d_tree",
        *DETECT,
        timeout=120,
        check=lambda _: (
            None
            if len([r for r in csv_rows(s.dir / "d_tree" / "sources.csv")[1:] if r[1] == "ok"]) <= 2
            else "a photo was read more than once through a link"
        ),
    )
    for name in ("fifo.jpg", "loop_a.jpg", "self.jpg", "dangling.jpg", "zero_device.jpg", "folder.jpg"):
        expected = {0, 1, 3} if name == "folder.jpg" else {1, 3}
        s.case(
            f"detect: {name} given by name",
            expected,
            "detect",
            tree / name,
            "-o",
            s.dir / f"d_{name}",
            *DETECT,
            timeout=120,
        )
    fifo_list = s.dir / "list_fifo.txt"
    os.mkfifo(fifo_list)
    s.case(
        "detect: a FIFO as the list file", {1}, "detect", fifo_list, "-o", s.dir / "d_fifo_list", *DETECT, timeout=120
    )
    s.case("detect: a character device as input", {1}, "detect", "/dev/null", "-o", s.dir / "d_devnull", *DETECT)
    s.case(
        "embed: a FIFO among the crops",
        {0, 3},
        "embed",
        tree,
        "-o",
        s.dir / "e_tree.csv",
        "--model",
        "dlib-resnet128",
        "--workers",
        "1",
        "-q",
        timeout=120,
    )


@scenario("images", "list files")
def list_files(s: Scenario) -> None:
    photos = s.base["photos"]
    first = sorted(photos.glob("*.jpg"))[0]
    lists = {
        "missing paths": f"{s.dir}/nope1.jpg\n{s.dir}/nope2.jpg\n",
        "a folder line": f"{photos}\n",
        "empty": "",
        "CRLF": f"{first}\r\n",
        "blank lines and spaces": f"\n  \n{first}\n\n",
        "NUL in a line": f"{first}\x00junk\n",
        "relative paths": f"../../base/photos/{first.name}\n",
        "10,000 copies of one path": f"{first}\n" * 10000,
    }
    for i, (name, text) in enumerate(lists.items()):
        listing = s.plant(s.dir / f"list{i}.txt", text)
        s.case(
            f"detect: a list file with {name}",
            {0, 1, 3},
            "detect",
            listing,
            "-o",
            s.dir / f"d{i}",
            *DETECT,
            timeout=200,
            check=lambda r, i=i, n=name: (
                None
                if r.returncode != 0 or "10,000" not in n or len(csv_rows(s.dir / f"d{i}" / "sources.csv")) == 2
                else "one photo counted many times"
            ),
        )
    loop = s.plant(s.dir / "self.txt", f"{s.dir / 'self.txt'}\n{first}\n")
    s.case(
        "detect: a list file that lists itself",
        {0, 1, 3},
        "detect",
        loop,
        "-o",
        s.dir / "d_self",
        *DETECT,
        timeout=90,
    )
    s.plant(s.dir / "a.txt", f"{s.dir / 'b.txt'}\n")
    s.plant(s.dir / "b.txt", f"{s.dir / 'a.txt'}\n{first}\n")
    s.case(
        "detect: two list files that list each other",
        {0, 1, 3},
        "detect",
        s.dir / "a.txt",
        "-o",
        s.dir / "d_ab",
        *DETECT,
        timeout=90,
    )
    s.case(
        "detect: the same photo twice on the command line",
        {0},
        "detect",
        first,
        first,
        "-o",
        s.dir / "d_twice",
        *DETECT,
        check=lambda _: None if len(csv_rows(s.dir / "d_twice" / "sources.csv")) == 2 else "counted twice",
    )
    s.case(
        "detect: the same folder twice, once as a/../a",
        {0},
        "detect",
        photos,
        photos / ".." / "photos",
        "-o",
        s.dir / "d_folder_twice",
        *DETECT,
        check=lambda _: None if len(csv_rows(s.dir / "d_folder_twice" / "sources.csv")) == 10 else "counted twice",
    )


@scenario("filesystem", "permission denied inputs")
def permissions(s: Scenario) -> None:
    b = s.base
    unreadable = {}
    for name, source in (
        ("f.csv", b["features"]),
        ("cvae_best.pt", b["weights"] / "cvae_best.pt"),
        ("labels.csv", b["labels"]),
        ("tiny.toml", b["config"]),
    ):
        path = s.dir / name
        shutil.copy(source, path)
        path.chmod(0)
        unreadable[name] = path
    shutil.copy(f"{b['features']}.json", s.dir / "f.csv.json")
    s.case(
        "cluster: an unreadable embeddings file",
        {1, 2},
        "cluster",
        unreadable["f.csv"],
        "-o",
        s.dir / "c",
        "-q",
        plain_user=True,
    )
    s.case(
        "generate: an unreadable checkpoint",
        {1, 2},
        "generate",
        unreadable["cvae_best.pt"],
        "--all",
        "-o",
        s.dir / "g",
        "--no-evaluate",
        "-q",
        plain_user=True,
    )
    s.case(
        "probe train: an unreadable label manifest",
        {1, 2},
        "probe",
        "train",
        b["features"],
        "--labels",
        unreadable["labels.csv"],
        "--target",
        "male",
        "-o",
        s.dir / "p.json",
        "-q",
        plain_user=True,
    )
    s.case(
        "run: an unreadable config",
        {1, 2},
        "run",
        b["photos"],
        "--out",
        s.dir / "r",
        "--config",
        unreadable["tiny.toml"],
        "-q",
        plain_user=True,
    )
    clusters = copy_clusters(s)
    (clusters / "cluster_results.csv").chmod(0)
    s.case(
        "export: an unreadable cluster_results.csv",
        {1, 2},
        "export",
        clusters,
        "-o",
        s.dir / "x",
        "-q",
        plain_user=True,
    )
    s.case(
        "train-cvae: an unreadable cluster_results.csv",
        {1, 2},
        "train-cvae",
        clusters / "cluster_results.csv",
        "-o",
        s.dir / "t",
        *TRAIN,
        plain_user=True,
    )
    crops = s.dir / "crops"
    shutil.copytree(b["crops"], crops)
    next(crops.glob("*.jpg")).chmod(0)
    s.case(
        "embed: an unreadable crop",
        {3},
        "embed",
        crops,
        "-o",
        s.dir / "e.csv",
        "--model",
        "dlib-resnet128",
        "--workers",
        "1",
        "-q",
        plain_user=True,
    )
    (crops / "detections.csv").chmod(0)
    s.case(
        "embed: an unreadable detections.csv",
        {1},
        "embed",
        crops,
        "-o",
        s.dir / "e2.csv",
        "--model",
        "dlib-resnet128",
        "-q",
        plain_user=True,
    )
    for path in (
        *unreadable.values(),
        clusters / "cluster_results.csv",
        crops / "detections.csv",
        *crops.glob("*.jpg"),
    ):
        path.chmod(0o644)


@scenario("filesystem", "an output path that is a file")
def output_is_file(s: Scenario) -> None:
    b = s.base
    blocker = s.plant(s.dir / "blocker", "the user's file where an output folder would go\n")
    for name, args in (
        ("detect", ["detect", b["photos"], "-o", blocker, *DETECT]),
        ("cluster", ["cluster", b["features"], "-o", blocker, "-q"]),
        ("train-cvae", ["train-cvae", b["clusters"] / "cluster_results.csv", "-o", blocker, *TRAIN]),
        ("generate", ["generate", b["weights"], "--all", "-o", blocker, "--no-evaluate", "-q"]),
        ("export", ["export", b["clusters"], "-o", blocker, "-q"]),
        ("run", ["run", b["photos"], "--out", blocker, "--config", b["config"], "-q"]),
        ("embed under it", ["embed", b["crops"], "-o", blocker / "e.csv", "--model", "dlib-resnet128", "-q"]),
        ("embed onto a folder", ["embed", b["crops"], "-o", s.dir / "sentinel", "--model", "dlib-resnet128", "-q"]),
    ):
        s.case(f"{name}: -o is an existing file", {1, 2}, *args)


@scenario("filesystem", "full disk (small tmpfs), then a rerun after freeing space")
def full_disk(s: Scenario) -> None:
    b = s.base
    plans = (
        ("detect", "160k", ["detect", LFW / "Kofi_Annan", "--crop-format", "png", "--min-neighbors", "5", "-q"], "c"),
        ("embed", "8k", ["embed", b["crops"], "--model", "dlib-resnet128", "-q"], "e.csv"),
        ("cluster", "16k", ["cluster", b["features"], "--k", "3", "-q"], "c"),
        (
            "train-cvae",
            "12m",
            [
                "train-cvae",
                b["clusters"] / "cluster_results.csv",
                "--epochs",
                "3",
                "--image-size",
                "32",
                "--identity-weight",
                "0",
                "-q",
            ],
            "w",
        ),
        ("generate", "24k", ["generate", b["weights"], "--all", "--no-evaluate", "-q"], "g"),
        ("export --mode copy", "24k", ["export", b["clusters"], "--mode", "copy", "-q"], "x"),
        (
            "probe train",
            "4k",
            [
                "probe",
                "train",
                b["features"],
                "--labels",
                b["labels"],
                "--target",
                "male",
                "--group-column",
                "relpath",
                "--folds",
                "2",
                "--holdout",
                "0.4",
                "-q",
            ],
            "p.json",
        ),
        ("run", "6m", ["run", b["photos"], "--config", b["config"], "-q"], "r"),
    )
    for name, size, args, out in plans:
        with Tmpfs(s.dir / f"small_{name.split()[0]}", size) as disk:
            if not disk.ok:
                print(f"    (skipped: the full-disk case of {name} needs root to mount a tmpfs)", flush=True)
                continue
            target = disk.folder / out
            s.case(
                f"{name} onto a full disk",
                {1},
                *args,
                "-o",
                target,
                check=lambda r: (
                    None if r.returncode != 1 or "space" in r.stderr else "the error does not say disk full"
                ),
            )
            s.case(
                f"{name} onto a full disk: the crops/files it left decode",
                {1},
                *args,
                "-o",
                target,
                check=lambda _, d=disk.folder: decodes_whole(d / out) if (d / out).is_dir() else None,
            )
            disk.grow("64m")
            s.case(f"{name}: a plain rerun after space is freed", {0}, *args, "-o", target)


# ------------------------------------------------------------------ intermediate files


def cluster_results_variants(rows: list[list[str]]) -> dict[str, str]:
    header, data = rows[0], rows[1:]

    def with_cell(column: int, value: str) -> str:
        edited = [list(r) for r in data]
        edited[0][column] = value
        return rows_text([header, *edited])

    return {
        "a float cluster 0.5": with_cell(1, "0.5"),
        "a float cluster 2.5": with_cell(1, "2.5"),
        "a text cluster": with_cell(1, "zero"),
        "an empty cluster": with_cell(1, ""),
        "a huge cluster 10^20": with_cell(1, "100000000000000000000"),
        "cluster 2^63": with_cell(1, "9223372036854775808"),
        "cluster -5": with_cell(1, "-5"),
        "a group beyond centroids.csv (7)": with_cell(1, "7"),
        "cluster nan": with_cell(1, "nan"),
        "distance text": with_cell(2, "far"),
        "distance -inf": with_cell(2, "-inf"),
        "a name with ../": with_cell(0, "../../sentinel/keep.txt"),
        "an absolute name": with_cell(0, "/etc/hostname"),
        "an empty name": with_cell(0, ""),
        "a duplicated row": rows_text([header, *data, data[0]]),
        "a name not in the embeddings": with_cell(0, "stranger_0.jpg"),
        "no cluster column": rows_text([[r[0], r[2]] for r in rows]),
        "header only": rows_text([header]),
        "an empty file": "",
        "binary garbage": "\x00\xff\xfe garbage",
    }


@scenario("intermediate", "cluster_results.csv hand-edited: export, train-cvae, generate, assign")
def edited_cluster_results(s: Scenario) -> None:
    b = s.base
    variants = cluster_results_variants(csv_rows(b["clusters"] / "cluster_results.csv"))
    few = (
        "a float cluster 0.5",
        "a text cluster",
        "an empty cluster",
        "a huge cluster 10^20",
        "a group beyond centroids.csv (7)",
        "a name with ../",
        "a duplicated row",
        "binary garbage",
    )
    for i, (name, text) in enumerate(variants.items()):
        clusters = copy_clusters(s, f"c{i}")
        (clusters / "cluster_results.csv").write_text(text)
        rehash(clusters)
        s.case(f"export: cluster_results.csv with {name}", {1}, "export", clusters, "-o", s.dir / f"x{i}", "-q")
        s.case(
            f"train-cvae: cluster_results.csv with {name}",
            {1},
            "train-cvae",
            clusters / "cluster_results.csv",
            "-o",
            s.dir / f"t{i}",
            *TRAIN,
        )
        if name in few:
            s.case(
                f"generate --clusters: cluster_results.csv with {name}",
                {1},
                "generate",
                b["weights"],
                "--all",
                "--clusters",
                clusters / "cluster_results.csv",
                "-o",
                s.dir / f"g{i}",
                "--no-evaluate",
                "-q",
            )
            coll = collection(s, f"coll{i}")
            (coll / "clusters" / "cluster_results.csv").write_text(text)
            rehash(coll / "clusters")
            s.case(
                f"assign: cluster_results.csv with {name}; a refused assign changes nothing",
                {1},
                "assign",
                b["more"],
                "--clusters",
                coll / "clusters",
                "-q",
                "--workers",
                "1",
                unchanged_if_refused=[coll],
            )
    clusters = copy_clusters(s, "c_stale")
    (clusters / "cluster_results.csv").write_text(variants["a float cluster 0.5"])
    s.case(
        "export: cluster_results.csv edited, sidecar not updated",
        {1},
        "export",
        clusters,
        "-o",
        s.dir / "x_stale",
        "-q",
    )


@scenario("intermediate", "centroids.csv, groups.csv and people_anchors.csv hand-edited")
def edited_cluster_files(s: Scenario) -> None:
    b = s.base
    rows = csv_rows(b["clusters"] / "centroids.csv")
    centroid_variants = {
        "a text cell": rows_text([rows[0], [rows[1][0], "x", *rows[1][2:]], *rows[2:]]),
        "a row fewer": rows_text(rows[:-1]),
        "NaN": rows_text([rows[0], [rows[1][0], "nan", *rows[1][2:]], *rows[2:]]),
        "a column fewer": rows_text([r[:-1] for r in rows]),
        "an empty file": "",
        "a text cluster number": rows_text([rows[0], ["zero", *rows[1][1:]], *rows[2:]]),
    }
    for i, (name, text) in enumerate(centroid_variants.items()):
        coll = collection(s, f"cent{i}")
        (coll / "clusters" / "centroids.csv").write_text(text)
        rehash(coll / "clusters")
        s.case(
            f"assign: centroids.csv with {name}",
            {1},
            "assign",
            b["more"],
            "--clusters",
            coll / "clusters",
            "-q",
            "--workers",
            "1",
            unchanged_if_refused=[coll],
        )
        if i < 3:
            s.case(
                f"generate --clusters (evaluate): centroids.csv with {name}",
                {0, 1},
                "generate",
                b["weights"],
                "--all",
                "--clusters",
                coll / "clusters" / "cluster_results.csv",
                "-o",
                s.dir / f"g{i}",
                "-q",
                "--samples",
                "1",
            )
    groups = csv_rows(b["clusters"] / "groups.csv")
    group_variants = {
        "a text cluster": rows_text([groups[0], ["zero", *groups[1][1:]], *groups[2:]]),
        "a name ../sentinel": rows_text([groups[0], [groups[1][0], "../sentinel", groups[1][2]], *groups[2:]]),
        "a name ../sentinel/inner": rows_text(
            [groups[0], [groups[1][0], "../sentinel/inner", groups[1][2]], *groups[2:]]
        ),
        "an absolute name": rows_text(
            [groups[0], [groups[1][0], str(s.dir / "sentinel" / "abs"), groups[1][2]], *groups[2:]]
        ),
        "the name ..": rows_text([groups[0], [groups[1][0], "..", groups[1][2]], *groups[2:]]),
        "the name .": rows_text([groups[0], [groups[1][0], ".", groups[1][2]], *groups[2:]]),
        "a 300-character name": rows_text([groups[0], [groups[1][0], "n" * 300, groups[1][2]], *groups[2:]]),
        "a name with a newline": rows_text([groups[0], [groups[1][0], "a\nb", groups[1][2]], *groups[2:]]),
        "a duplicated cluster": rows_text([*groups, groups[1]]),
        "an empty file": "",
        "faces text": rows_text([groups[0], [groups[1][0], groups[1][1], "many"], *groups[2:]]),
    }
    for i, (name, text) in enumerate(group_variants.items()):
        clusters = copy_clusters(s, f"gr{i}")
        (clusters / "groups.csv").write_text(text)
        rehash(clusters)
        s.case(f"export: groups.csv with {name}", {0, 1}, "export", clusters, "-o", s.dir / f"x{i}", "-q")
    people = s.plant(s.dir / "people.toml", '[names]\n0 = "Kofi"\n')
    s.step("cluster", b["features"], "-o", s.dir / "pc", "--k", "3", "--people", people, "-q")
    anchors = s.dir / "pc" / "people_anchors.csv"
    if anchors.is_file():
        rows = csv_rows(anchors)
        for name, text in (
            ("a text cell", rows_text([rows[0], [rows[1][0], "x", *rows[1][2:]], *rows[2:]])),
            ("a text group", rows_text([rows[0], ["zero", *rows[1][1:]], *rows[2:]])),
            ("a column fewer", rows_text([r[:-1] for r in rows])),
            ("NaN", rows_text([rows[0], [rows[1][0], "nan", *rows[1][2:]], *rows[2:]])),
            ("an empty file", ""),
        ):
            anchors.write_text(text)
            s.case(
                f"cluster --people --force: people_anchors.csv with {name}",
                {1},
                "cluster",
                b["features"],
                "-o",
                s.dir / "pc",
                "--k",
                "3",
                "--people",
                people,
                "--force",
                "-q",
            )


@scenario("intermediate", "embeddings CSV, NPZ and sidecar variants")
def edited_embeddings(s: Scenario) -> None:
    b = s.base
    text = b["features"].read_text()
    lines = text.splitlines()
    header, first = lines[0], lines[1]
    scaled = [header] + [
        ",".join([line.split(",")[0]] + [repr(float(v) * 1e30) for v in line.split(",")[1:]]) for line in lines[1:]
    ]
    tiny = [header] + [
        ",".join([line.split(",")[0]] + [repr(float(v) * 1e-30) for v in line.split(",")[1:]]) for line in lines[1:]
    ]
    zero = [header, ",".join([first.split(",")[0]] + ["0"] * 128), *lines[2:]]
    base_groups = grouping(b["clusters"] / "cluster_results.csv")
    csv_variants = {
        "header only": header + "\n",
        "no name column": "\n".join(l.split(",", 1)[1] for l in lines) + "\n",
        "a duplicated name": "\n".join([*lines, first]) + "\n",
        "an inf value": "\n".join([header, first.rsplit(",", 1)[0] + ",inf", *lines[2:]]) + "\n",
        "a ragged row": "\n".join([header, first.rsplit(",", 1)[0], *lines[2:]]) + "\n",
        "an empty file": "",
        "semicolons": text.replace(",", ";"),
        "a text column": "\n".join([header + ",note", *[l + ",x" for l in lines[1:]]]) + "\n",
        "values over float32 (1e39)": "\n".join([header, first.rsplit(",", 1)[0] + ",1e39", *lines[2:]]) + "\n",
        "a BOM": "\ufeff" + text,
    }
    for i, (name, content) in enumerate(csv_variants.items()):
        path = embeddings_copy(s, f"csv{i}", content.encode())
        expected = {0, 1} if name == "a BOM" else {1}  # a spreadsheet's BOM may be read through
        s.case(
            f"cluster: embeddings CSV with {name}", expected, "cluster", path, "-o", s.dir / f"c{i}", "--k", "3", "-q"
        )
    for name, lines_ in (("every vector x 1e30", scaled), ("every vector x 1e-30", tiny)):
        path = embeddings_copy(s, name[-4:], ("\n".join(lines_) + "\n").encode())
        out = s.dir / f"c_{name[-4:]}"
        s.case(
            f"cluster --k 3: {name} (same groups, or refused)",
            {0, 1},
            "cluster",
            path,
            "-o",
            out,
            "--k",
            "3",
            "-q",
            check=lambda r, o=out: (
                None
                if r.returncode != 0 or grouping(o / "cluster_results.csv") == base_groups
                else "other groups than the unscaled embeddings (everyone in one group?)"
            ),
        )
    path = embeddings_copy(s, "zero", ("\n".join(zero) + "\n").encode())
    s.case(
        "cluster: an all-zero vector",
        {0, 1},
        "cluster",
        path,
        "-o",
        s.dir / "c_zero",
        "--k",
        "3",
        "-q",
        check=lambda r: (
            None
            if r.returncode != 0 or "nan" not in (s.dir / "c_zero" / "cluster_results.csv").read_text()
            else "NaN distances written"
        ),
    )
    meta = json.loads(Path(f"{b['features']}.json").read_text())
    sidecars = {
        "a JSON list": "[1, 2]",
        "a JSON string": '"dlib"',
        "a JSON number": "3",
        "null": "null",
        "not JSON": "{oops",
        "binary": "\x00\xff",
        "dimension as text": json.dumps(dict(meta, dimension="128")),
        "dimension 64": json.dumps(dict(meta, dimension=64)),
        "count -1": json.dumps(dict(meta, count=-1)),
        "a stale data_sha256": json.dumps(dict(meta, data_sha256="0" * 64)),
        "data_sha256 a number": json.dumps(dict(meta, data_sha256=5)),
        "model a list": json.dumps(dict(meta, model=["dlib-resnet128"])),
    }
    for i, (name, sidecar) in enumerate(sidecars.items()):
        path = embeddings_copy(s, f"side{i}", text.encode(), sidecar=sidecar)
        s.case(f"cluster: embeddings sidecar {name}", {1}, "cluster", path, "-o", s.dir / f"cs{i}", "--k", "3", "-q")
    for i, (name, sidecar, expected) in enumerate(
        (
            ("crops_dir a number", json.dumps(dict(meta, crops_dir=5)), {0, 1}),
            ("crops_dir the sentinel", json.dumps(dict(meta, crops_dir=str(s.dir / "sentinel"))), {0, 1}),
            ("no sidecar", False, {0, 1}),
        )
    ):
        path = embeddings_copy(s, f"sidex{i}", text.encode(), sidecar=sidecar)
        s.case(
            f"cluster: embeddings sidecar {name}",
            expected,
            "cluster",
            path,
            "-o",
            s.dir / f"csx{i}",
            "--k",
            "3",
            "-q",
        )
    with np.load(b["npz"]) as npz:
        names, vectors = npz["names"], npz["vectors"]
    npz_variants = {
        "names a scalar": dict(names=np.array("x"), vectors=vectors),
        "2-d names": dict(names=names.reshape(1, -1), vectors=vectors),
        "integer names": dict(names=np.arange(len(names)), vectors=vectors),
        "1-d vectors": dict(names=names, vectors=vectors[:, 0]),
        "3-d vectors": dict(names=names, vectors=vectors[:, :, None]),
        "text vectors": dict(names=names, vectors=vectors.astype(str)),
        "a name fewer": dict(names=names[:-1], vectors=vectors),
        "no vectors": dict(names=names),
        "duplicated names": dict(names=np.array([names[0]] * len(names)), vectors=vectors),
        "float16 with inf": dict(names=names, vectors=np.full(vectors.shape, np.inf, np.float16)),
    }
    for i, (name, arrays) in enumerate(npz_variants.items()):
        path = embeddings_copy(s, f"npz{i}", npz_bytes(**arrays), npz=True)
        s.case(f"cluster: .npz with {name}", {1}, "cluster", path, "-o", s.dir / f"cn{i}", "--k", "3", "-q")
    objects = np.empty(len(names), dtype=object)
    objects[:] = list(names)
    for name, data in (
        ("object (pickled) names", npz_bytes(names=objects, vectors=vectors)),
        ("garbage bytes", b"PK\x03\x04garbage"),
        ("an empty zip", b"PK\x05\x06" + bytes(18)),
    ):
        path = embeddings_copy(s, re.sub(r"\W", "", name)[:8], data, npz=True)
        s.case(f"cluster: .npz with {name}", {1}, "cluster", path, "-o", s.dir / f"cn_{name[:6]}", "--k", "3", "-q")
    probe_json = s.dir / "probe.json"
    s.step(
        "probe",
        "train",
        b["features"],
        "--labels",
        b["labels"],
        "--target",
        "male",
        "--group-column",
        "relpath",
        "--folds",
        "2",
        "-o",
        probe_json,
        "-q",
    )
    for name in ("2-d names", "text vectors", "names a scalar"):
        path = s.dir / f"npz{list(npz_variants).index(name)}.npz"
        s.case(
            f"probe predict: .npz with {name}",
            {1},
            "probe",
            "predict",
            path,
            "--probe",
            probe_json,
            "-o",
            s.dir / "pred.csv",
        )  # no -q: probe predict shows no progress, so it has no such option
    coll = collection(s, "coll_side")
    Path(f"{coll / 'f.csv'}.json").write_text("[1, 2]")
    s.case(
        "assign: the collection's embeddings sidecar a JSON list",
        {1},
        "assign",
        b["more"],
        "--clusters",
        coll / "clusters",
        "-q",
        "--workers",
        "1",
        unchanged_if_refused=[coll],
    )


@scenario("intermediate", "a damaged partial-embed checkpoint")
def partial_embed(s: Scenario) -> None:
    b = s.base
    with np.load(b["npz"]) as npz:
        names, vectors = npz["names"], npz["vectors"]
    meta = Path(f"{b['features']}.json").read_text()
    reference = b["features"].read_bytes()
    variants = {
        "garbage": b"PK\x03\x04 not a zip",
        "empty": b"",
        "names a scalar": npz_bytes(names=np.array("x"), vectors=vectors, meta=np.array(meta)),
        "meta not JSON": npz_bytes(names=names, vectors=vectors, meta=np.array("{oops")),
        "vectors of another size": npz_bytes(names=names, vectors=vectors[:, :5], meta=np.array(meta)),
        "a name that is no crop": npz_bytes(
            names=np.array(["../../sentinel/keep.txt"]), vectors=vectors[:1], meta=np.array(meta)
        ),
    }
    for i, (name, data) in enumerate(variants.items()):
        out = s.dir / f"e{i}.csv"
        Path(f"{out}.partial.npz").write_bytes(data)
        s.case(
            f"embed: resumes over a partial .npz that is {name}",
            {0, 1},
            "embed",
            b["crops"],
            "-o",
            out,
            "--model",
            "dlib-resnet128",
            "--workers",
            "1",
            "-q",
            check=lambda r, o=out: (
                None
                if r.returncode != 0 or o.read_bytes() == reference
                else "the embeddings differ from an uninterrupted run"
            ),
        )


@scenario("intermediate", "detections.csv, sources.csv, detect.json and crops damaged: detect rerun and embed")
def edited_detect_files(s: Scenario) -> None:
    b = s.base
    rows = csv_rows(b["crops"] / "detections.csv")
    detections = {
        "no crop column": rows_text([r[1:] for r in rows]),
        "a text face_index": rows_text([rows[0], [rows[1][0], rows[1][1], "first", *rows[1][3:]], *rows[2:]]),
        "a NaN box": rows_text([rows[0], [*rows[1][:3], "nan", *rows[1][4:]], *rows[2:]]),
        "header only": rows_text(rows[:1]),
        "an empty file": "",
        "binary garbage": "\x00\xff\xfe",
        "a duplicated row": rows_text([*rows, rows[1]]),
        "a crop ../sentinel/keep.txt": rows_text([rows[0], ["../sentinel/keep.txt", *rows[1][1:]], *rows[2:]]),
        "an absolute crop path": rows_text(
            [rows[0], [str(s.dir / "sentinel" / "holiday.jpg"), *rows[1][1:]], *rows[2:]]
        ),
        "a crop that is missing": rows_text([rows[0], ["gone_0.jpg", *rows[1][1:]], *rows[2:]]),
    }
    reference = (b["crops"] / "detections.csv").read_bytes()
    for i, (name, text) in enumerate(detections.items()):
        crops = s.dir / f"dt{i}"
        shutil.copytree(b["crops"], crops)
        (crops / "detections.csv").write_text(text)
        s.case(
            f"embed: detections.csv with {name}",
            {1, 3},
            "embed",
            crops,
            "-o",
            s.dir / f"e{i}.csv",
            "--model",
            "dlib-resnet128",
            "--workers",
            "1",
            "-q",
        )
        s.case(
            f"detect rerun: detections.csv with {name}",
            {0, 1},
            "detect",
            b["photos"],
            "-o",
            crops,
            "--min-neighbors",
            "5",
            "-q",
            check=lambda r, c=crops: (
                None
                if r.returncode != 0 or (c / "detections.csv").read_bytes() == reference
                else "detections.csv differs from a fresh run"
            ),
        )
    sources = csv_rows(b["crops"] / "sources.csv")
    for i, (name, text) in enumerate(
        (
            ("a status maybe", rows_text([sources[0], [sources[1][0], "maybe", *sources[1][2:]], *sources[2:]])),
            ("faces many", rows_text([sources[0], [*sources[1][:2], "many", ""], *sources[2:]])),
            ("no source column", rows_text([r[1:] for r in sources])),
            ("an empty file", ""),
            ("faces 5 for a photo of one face", rows_text([sources[0], [*sources[1][:2], "5", ""], *sources[2:]])),
        )
    ):
        crops = s.dir / f"src{i}"
        shutil.copytree(b["crops"], crops)
        (crops / "sources.csv").write_text(text)
        s.case(
            f"detect rerun: sources.csv with {name}",
            {0, 1},
            "detect",
            b["photos"],
            "-o",
            crops,
            "--min-neighbors",
            "5",
            "-q",
            check=lambda r, c=crops: (
                None
                if r.returncode != 0 or (c / "detections.csv").read_bytes() == reference
                else "detections.csv differs from a fresh run"
            ),
        )
    for i, (name, text) in enumerate(
        (
            ("not JSON", "{oops"),
            ("a JSON list", "[]"),
            ("margin text", json.dumps(dict(json.loads((b["crops"] / "detect.json").read_text()), margin="wide"))),
        )
    ):
        crops = s.dir / f"dj{i}"
        shutil.copytree(b["crops"], crops)
        (crops / "detect.json").write_text(text)
        s.case(
            f"embed: detect.json {name}",
            {0, 1},
            "embed",
            crops,
            "-o",
            s.dir / f"ej{i}.csv",
            "--model",
            "dlib-resnet128",
            "--workers",
            "1",
            "-q",
        )
        s.case(
            f"detect rerun: detect.json {name}",
            {0, 1},
            "detect",
            b["photos"],
            "-o",
            crops,
            "--min-neighbors",
            "5",
            "-q",
        )
    first = sorted(b["crops"].glob("*.jpg"))[0].name
    for name, damage in (
        ("truncated", lambda p: p.write_bytes(p.read_bytes()[:500])),
        ("deleted", lambda p: p.unlink()),
        ("emptied", lambda p: p.write_bytes(b"")),
        ("replaced by another crop", lambda p: shutil.copy(sorted(b["crops"].glob("*.jpg"))[-1], p)),
    ):
        crops = s.dir / f"crop_{name.split()[0]}"
        shutil.copytree(b["crops"], crops)
        damage(crops / first)
        s.case(
            f"detect rerun: a crop {name} after it was written is made again",
            {0},
            "detect",
            b["photos"],
            "-o",
            crops,
            "--min-neighbors",
            "5",
            "-q",
            check=lambda _, c=crops: (
                None
                if (c / first).is_file() and (c / first).read_bytes() == (b["crops"] / first).read_bytes()
                else "the damaged crop was trusted"
            ),
        )


@scenario("intermediate", "checkpoints, alignment and loss log damaged")
def edited_weights(s: Scenario) -> None:
    import torch

    b = s.base
    best = b["weights"] / "cvae_best.pt"
    checkpoint = torch.load(best, weights_only=True)
    variants = {"truncated": best.read_bytes()[:4096], "zero bytes": b""}
    for name, data in variants.items():
        (s.dir / f"{name[:4]}.pt").write_bytes(data)
        s.case(
            f"generate: a checkpoint {name}",
            {1},
            "generate",
            s.dir / f"{name[:4]}.pt",
            "--all",
            "-o",
            s.dir / f"g_{name[:4]}",
            "--no-evaluate",
            "-q",
        )
    (s.dir / "dir.pt").mkdir()
    s.case(
        "generate: a folder named like a checkpoint",
        {1},
        "generate",
        s.dir / "dir.pt",
        "--all",
        "-o",
        s.dir / "g_dir",
        "--no-evaluate",
        "-q",
    )
    for i, (name, change) in enumerate(
        (
            ("clusters as text", {"clusters": ["zero", "one", "two"]}),
            ("image_size -1", {"image_size": -1}),
            ("latent_dim text", {"latent_dim": "x"}),
            ("clusters 2^70", {"clusters": [2**70, 1, 2]}),
            ("config a list", None),
        )
    ):
        edited = dict(checkpoint)
        edited["config"] = [1, 2] if change is None else dict(checkpoint["config"], **change)
        torch.save(edited, s.dir / f"cfg{i}.pt")
        s.case(
            f"generate: a checkpoint with {name}",
            {1},
            "generate",
            s.dir / f"cfg{i}.pt",
            "--all",
            "-o",
            s.dir / f"gc{i}",
            "--no-evaluate",
            "-q",
        )
    torch.save(dict(checkpoint, model={}), s.dir / "nomodel.pt")
    s.case(
        "generate: a checkpoint without weights",
        {1},
        "generate",
        s.dir / "nomodel.pt",
        "--all",
        "-o",
        s.dir / "g_nomodel",
        "--no-evaluate",
        "-q",
    )
    for name, file, text in (
        ("alignment.csv text landmarks", "alignment.csv", "name,x0\nfoo,bar\n"),
        ("cvae_log.csv garbage", "cvae_log.csv", "\x00\xff"),
        ("the last epoch checkpoint truncated", "cvae_epoch_2.pt", "PK"),
    ):
        weights = s.dir / f"w_{file.split('.')[0]}"
        shutil.copytree(b["weights"], weights)
        (weights / file).write_text(text)
        s.case(
            f"train-cvae --resume: {name}",
            {0, 1},
            "train-cvae",
            b["clusters"] / "cluster_results.csv",
            "-o",
            weights,
            "--epochs",
            "3",
            "--image-size",
            "32",
            "--identity-weight",
            "0",
            "--resume",
            "-q",
        )


@scenario("intermediate", "label manifests")
def edited_labels(s: Scenario) -> None:
    b = s.base
    rows = csv_rows(b["labels"])
    for i, (name, text) in enumerate(
        (
            ("a text target", rows_text([rows[0], [*rows[1][:2], "yes"], *rows[2:]])),
            ("no relpath column", rows_text([r[1:] for r in rows])),
            ("binary garbage", "\x00\xff"),
            ("an empty file", ""),
            ("a target 7", rows_text([rows[0], [*rows[1][:2], "7"], *rows[2:]])),
        )
    ):
        labels = s.plant(s.dir / f"labels{i}.csv", text)
        s.case(
            f"probe train: a manifest with {name}",
            {1, 2},
            "probe",
            "train",
            b["features"],
            "--labels",
            labels,
            "--target",
            "male",
            "--group-column",
            "relpath",
            "--folds",
            "2",
            "-o",
            s.dir / f"p{i}.json",
            "-q",
        )
        s.case(
            f"cluster --labels: a manifest with {name}",
            {0, 1},
            "cluster",
            b["features"],
            "--labels",
            labels,
            "-o",
            s.dir / f"c{i}",
            "--k",
            "3",
            "-q",
        )


# ------------------------------------------------------------------ people files


@scenario("people", "people files: nesting, wrong types, unknown keys")
def people_files(s: Scenario) -> None:
    b = s.base
    face = csv_rows(b["clusters"] / "cluster_results.csv")[1][0]
    bad = {
        "merge nested 10,000 deep": "merge = " + "[" * 10000 + "]" * 10000,
        "an inline table nested 10,000 deep": "x = " + "{a = " * 10000 + "1" + "}" * 10000,
        "names an array": "names = [1]",
        "a names key that is not a number": '[names]\n"abc" = "x"',
        "a name that is a number": "[names]\n0 = 5",
        "merge a string": 'merge = "0,1"',
        "merge with text": 'merge = [[0, "a"]]',
        "merge with a float": "merge = [[0.5, 1]]",
        "merge a flat list": "merge = [0, 1]",
        "not_a_person a string": 'not_a_person = "0"',
        "not_a_person a float": "not_a_person = [1e3]",
        "move a number": "move = 3",
        "a move to text": f'[move]\n"{face}" = "x"',
        "split faces a string": '[[split]]\nfaces = "a"',
        "split faces numbers": "[[split]]\nfaces = [1, 2]",
        "split a number": "split = 3",
        "an unknown key": "colour = 3",
        "an unknown key in a split": f'[[split]]\nfaces = ["{face}"]\nnmae = "x"',
        "invalid TOML": "[names",
        "binary garbage": "\x00\xff\xfe",
        "names 10,000 deep tables": "[" + ".".join(["a"] * 10000) + "]",
        "a merge of group -2": "merge = [[-2, 0]]",
    }
    for i, (name, text) in enumerate(bad.items()):
        people = s.plant(s.dir / f"people{i}.toml", text)
        s.case(
            f"cluster --people: {name}",
            {1, 2},
            "cluster",
            b["features"],
            "-o",
            s.dir / f"c{i}",
            "--k",
            "3",
            "--people",
            people,
            "-q",
            check=lambda _, i=i: "wrote a clustering" if (s.dir / f"c{i}" / "cluster_results.csv").exists() else None,
        )
    good = {
        "an empty file": "",
        "a name for a group that does not exist": '[names]\n7 = "nobody"',
        "a move of an unknown face": '[move]\n"stranger_0.jpg" = 0',
        "a merge of one group with itself": "merge = [[0, 0]]",
        "a unicode name with slashes": '[names]\n0 = "成龙/../Jackie"',
        "a group number over 64 bits": '[names]\n99999999999999999999 = "x"',
        "a move to group 2^40": f'[move]\n"{face}" = 1099511627776',
    }
    for i, (name, text) in enumerate(good.items()):
        people = s.plant(s.dir / f"good{i}.toml", text)
        s.case(
            f"cluster --people: {name}",
            {0, 1, 2},
            "cluster",
            b["features"],
            "-o",
            s.dir / f"cg{i}",
            "--k",
            "3",
            "--people",
            people,
            "-q",
        )
    (s.dir / "folder.toml").mkdir()
    s.case(
        "cluster --people: a folder",
        {1, 2},
        "cluster",
        b["features"],
        "-o",
        s.dir / "c_dir",
        "--k",
        "3",
        "--people",
        s.dir / "folder.toml",
        "-q",
    )
    deep = s.plant(s.dir / "deep.toml", bad["merge nested 10,000 deep"])
    config = s.dir / "deep_run.toml"
    config.write_text(tiny_config(cluster={"people": f'"{deep}"'}))
    s.case(
        "run: [cluster] people nested 10,000 deep",
        {1, 2},
        "run",
        b["photos"],
        "--out",
        s.dir / "r",
        "--config",
        config,
        "-q",
        timeout=300,
    )


# ------------------------------------------------------------------ run configs


@scenario("config", "run configs: keys, sections, TOML, k-range, values, --set")
def run_configs(s: Scenario) -> None:
    b = s.base
    counter = iter(range(10**6))

    def fresh():
        """A run folder of its own per case, and the check that no stage ran into it."""
        out = s.dir / f"r{next(counter)}"
        return out, lambda _: "a stage ran" if (out / "temp").exists() or (out / "state.json").exists() else None

    structure = {
        f"an unknown key in [{section}]": tiny_config(**{section: {"colour": "3"}})
        for section in ("run", "detect", "embed", "cluster", "train_cvae", "generate", "probe")
    }
    structure.update(
        {
            "an unknown section": tiny_config(paint={"colour": "3"}),
            "a section that is not a table": "detect = 3\n[embed]" + tiny_config().split("[embed]", 1)[1],
            "an array of tables": "[[detect]]\nsize = 224\n",
            "a section that is a string": 'cluster = "k=2"\n',
            "a key without a value": "[cluster]\nk =\n",
            "a duplicated key": "[cluster]\nk = 2\nk = 3\n",
            "a duplicated table": "[cluster]\nk = 2\n[cluster]\nseed = 1\n",
            "an unterminated string": '[run]\nlabels = "x\n',
            "binary garbage": "\x00\xff\xfe",
            "a UTF-16 file": tiny_config().encode("utf-16").decode("latin-1"),
        }
    )
    values = {
        "a float k-range": ("cluster", "k_range", "[2.5, 10]"),
        "a reversed k-range": ("cluster", "k_range", "[10, 2]"),
        "a k-range of one number": ("cluster", "k_range", "[2]"),
        "a k-range step 0": ("cluster", "k_range", "[2, 10, 0]"),
        "a k-range of text": ("cluster", "k_range", '["a", "b"]'),
        "a k-range to 10^12": ("cluster", "k_range", "[2, 1000000000000]"),
        "detect.size 1,000,000": ("detect", "size", "1000000"),
        "detect.min_size 10^12": ("detect", "min_size", "1000000000000"),
        "detect.max_pixels 0": ("detect", "max_pixels", "0"),
        "detect.cascade a number": ("detect", "cascade", "5"),
        "embed.batch_size 2^63-1": ("embed", "batch_size", "9223372036854775807"),
        "embed.device tpu": ("embed", "device", '"tpu"'),
        "cluster.n_init 10^9": ("cluster", "n_init", "1000000000"),
        "cluster.seed 2^64": ("cluster", "seed", "18446744073709551616"),
        "train_cvae.learning_rate 1e10": ("train_cvae", "learning_rate", "1e10"),
        "train_cvae.beta 1e300": ("train_cvae", "beta", "1e300"),
        "train_cvae.image_size 2^31": ("train_cvae", "image_size", "2147483648"),
        "generate.samples 10^7": ("generate", "samples", "10000000"),
        "probe.holdout 1.5": ("probe", "holdout", "1.5"),
        "probe.folds 1": ("probe", "folds", "1"),
        "probe.targets a string": ("probe", "targets", '"bald"'),
        "run.engine spark": ("run", "engine", '"spark"'),
        "run.labels a number": ("run", "labels", "5"),
        "cluster.people missing": ("cluster", "people", '"nobody.toml"'),
        "cluster.k 2.5": ("cluster", "k", "2.5"),
        "cluster.k a table": ("cluster", "k", "{a = 1}"),
        "detect.largest_only maybe": ("detect", "largest_only", '"maybe"'),
    }
    for name, (section, key, value) in values.items():
        extra = {"k": '"auto"'} if key == "k_range" else {}
        structure[name] = tiny_config(**{section: {**extra, key: value}})
    for i, (name, text) in enumerate(structure.items()):
        config = s.dir / f"c{i}.toml"
        config.write_bytes(text.encode("latin-1") if name == "a UTF-16 file" else text.encode())
        out, nothing_ran = fresh()
        s.case(
            f"run config: {name}",
            {2},
            "run",
            b["photos"],
            "--out",
            out,
            "--config",
            config,
            "-q",
            check=nothing_ran,
            timeout=300,
        )
    capped = {"detect.workers 100000": ("detect", "workers", "100000"), "cluster.seed -1": ("cluster", "seed", "-1")}
    for i, (name, (section, key, value)) in enumerate(capped.items()):
        config = s.dir / f"cap{i}.toml"
        config.write_text(tiny_config(**{section: {key: value}}))
        s.case(
            f"run config: {name} (refused, or capped and run)",
            {0, 2},
            "run",
            b["photos"],
            "--out",
            s.dir / f"rc{i}",
            "--config",
            config,
            "-q",
            timeout=WORKERS_TIMEOUT if key == "workers" else 400,
        )
    sets = {
        "cluster.k=2.5": {2},
        "nosection": {2},
        "cluster": {2},
        "=3": {2},
        "cluster.=3": {2},
        ".k=3": {2},
        "a.b.c=1": {2},
        "detect.size=1e6": {2},
        "train_cvae.epochs=1e3": {2},
        "cluster.k_range=2.5:10": {2},
        "detect.largest_only=maybe": {2},
        "run.labels=nope.csv": {2},
        "train_cvae.epochs=-1": {2},
        "unknown.x=1": {2},
        "cluster.colour=3": {2},
        "generate.samples=10000000": {2},
    }
    for setting, expected in sets.items():
        out, nothing_ran = fresh()
        s.case(
            f"run --set {setting}",
            expected,
            "run",
            b["photos"],
            "--out",
            out,
            "--config",
            b["config"],
            "--set",
            setting,
            "-q",
            check=nothing_ran,
        )
    s.case(
        "run --set cluster.k=Auto (as --k Auto)",
        {0, 2},
        "run",
        b["photos"],
        "--out",
        s.dir / "r_auto",
        "--config",
        b["config"],
        "--set",
        "cluster.k=Auto",
        "-q",
        timeout=400,
    )
    (s.dir / "folder.toml").mkdir()
    out, nothing_ran = fresh()
    s.case(
        "run --config: a folder",
        {1, 2},
        "run",
        b["photos"],
        "--out",
        out,
        "--config",
        s.dir / "folder.toml",
        "-q",
        check=nothing_ran,
    )
    out, nothing_ran = fresh()
    s.case(
        "run --config: a missing file",
        {1, 2},
        "run",
        b["photos"],
        "--out",
        out,
        "--config",
        s.dir / "nope.toml",
        "-q",
        check=nothing_ran,
    )
    out, nothing_ran = fresh()
    s.case(
        "run --k 2.5",
        {2},
        "run",
        b["photos"],
        "--out",
        out,
        "--config",
        b["config"],
        "--k",
        "2.5",
        "-q",
        check=nothing_ran,
    )


# ------------------------------------------------------------------ extreme options


@scenario("options", "extreme options: detect and embed")
def extreme_detect_embed(s: Scenario) -> None:
    b = s.base
    detect = {
        "--size 1000000": {2},
        "--size 100000": {2},
        "--min-neighbors 1000000000000": {0, 2},
        "--min-size 1000000000000": {0, 2},
        "--max-side 1000000000000": {0, 2},
        "--cnn-max-side 1000000000000": {0, 2},
        "--workers 100000": {0, 2},
        "--max-pixels 18446744073709551616": {0, 2},
        "--dlib-threshold -1e300": {0, 2},
        "--dlib-threshold 1e300": {0, 2},
        "--size 15": {2},
        "--workers -5": {2},
        "--margin -0.1": {2},
        "--dlib-upsample 9": {2},
        "--max-side 63": {2},
    }
    for i, (option, expected) in enumerate(detect.items()):
        extra = ["--workers", "1"] if "--workers" not in option else []
        s.case(
            f"detect {option}",
            expected,
            "detect",
            b["photos"],
            "-o",
            s.dir / f"d{i}",
            "-q",
            "--min-neighbors",
            "5",
            *extra,
            *option.split(),
            timeout=limit(option, 120),
        )
    embed = {
        "--batch-size 1000000000": {0, 2},
        "--batch-size 18446744073709551616": {0, 2},
        "--workers 100000": {0, 2},
        "--dlib-padding 1000000000": {2},
        "--dlib-padding -1": {2},
        "--dlib-padding nan": {2},
        "--dlib-padding 1e300": {2},
        "--precision bf16": {0, 1, 2},
    }
    for i, (option, expected) in enumerate(embed.items()):
        s.case(
            f"embed {option}",
            expected,
            "embed",
            b["crops"],
            "-o",
            s.dir / f"e{i}.csv",
            "--model",
            "dlib-resnet128",
            "-q",
            *option.split(),
            timeout=limit(option, 120),
        )


@scenario("options", "extreme options: cluster")
def extreme_cluster(s: Scenario) -> None:
    b = s.base
    options = {
        "--n-init 1000000000": {0, 2},
        "--n-init 18446744073709551616": {2},
        "--k 1000000000000": {1, 2},
        "--k -1": {2},
        "--k auto --k-range 2:1000000000000": {1, 2},
        "--k auto --k-range 2:40:0": {2},
        "--k auto --k-range 2:40:-1": {2},
        "--k auto --k-range 2.5:10": {2},
        "--k auto --k-range a:b": {2},
        "--min-group-size 1000000000000": {0, 2},
        "--samples-per-cluster 1000000000": {0, 2},
        "--threshold 1e-300": {0, 2},
        "--seed -1": {0, 2},
        "--seed 18446744073709551616": {0, 2},
        "--seed 9223372036854775808": {0, 2},
        "--seed -9223372036854775808": {0, 2},
        "--seed 4294967296": {0, 2},
    }
    for i, (option, expected) in enumerate(options.items()):
        extra = (
            []
            if option.startswith("--k") or option.startswith("--threshold") or option.startswith("--min-group")
            else ["--k", "3"]
        )
        s.case(
            f"cluster {option}",
            expected,
            "cluster",
            b["features"],
            "-o",
            s.dir / f"c{i}",
            "-q",
            *extra,
            *option.split(),
            timeout=120,
        )


@scenario("options", "extreme options: train-cvae")
def extreme_train(s: Scenario) -> None:
    b = s.base
    results = b["clusters"] / "cluster_results.csv"
    options = {
        "--image-size 2147483648": {2},
        "--image-size 65536": {2},
        "--base-channels 1000000000": {2},
        "--batch-size 1000000000": {0, 2},
        "--learning-rate 1e10": {1, 2},
        "--beta 1e300": {1, 2},
        "--mean-anchor 1e300": {1, 2},
        "--identity-weight 1e300": {1, 2},
        "--val-fraction 1.0": {1, 2},
        "--keep-last 1000000000": {0, 2},
        "--workers 100000": {0, 2},
        "--align-padding 1000000000": {2},
        "--align-padding -1": {2},
        "--seed -1": {0, 2},
        "--seed 18446744073709551616": {0, 2},
        "--seed 9223372036854775808": {0, 2},
        "--epochs 100001": {2},
        "--latent-dim 1025": {2},
    }
    for i, (option, expected) in enumerate(options.items()):
        s.case(
            f"train-cvae {option}",
            expected,
            "train-cvae",
            results,
            "-o",
            s.dir / f"t{i}",
            *TRAIN,
            *option.split(),
            timeout=limit(option, 200),
            check=lambda r, i=i: (
                None
                if r.returncode != 0 or "nan" not in (s.dir / f"t{i}" / "cvae_log.csv").read_text().lower()
                else "a NaN loss written as a finished training"
            ),
        )


@scenario("options", "extreme options: generate, probe, assign")
def extreme_rest(s: Scenario) -> None:
    b = s.base
    generate = {
        "--samples 10000000": {2},
        "--samples 18446744073709551616": {2},
        "--temperature 1e300": {0, 2},
        "--temperature -1": {0, 2},
        "--cluster 18446744073709551616": {1, 2},
        "--cluster -1": {1, 2},
        "--seed -1": {0, 2},
        "--seed 18446744073709551616": {0, 2},
        "--seed 9223372036854775808": {0, 2},
    }
    for i, (option, expected) in enumerate(generate.items()):
        extra = [] if option.startswith("--cluster") else ["--all"]
        s.case(
            f"generate {option}",
            expected,
            "generate",
            b["weights"],
            *extra,
            "-o",
            s.dir / f"g{i}",
            "--no-evaluate",
            "-q",
            *option.split(),
            timeout=120,
        )
    probe = {
        "--folds 1000000000": {1, 2},
        "--holdout 1.5": {2},
        "--holdout nan": {2},
        "--holdout 0": {0, 2},
        "--cs a,b": {2},
        "--cs 0": {2},
        "--cs -1": {2},
        "--cs 1e400": {2},
        "--seed -1": {0, 2},
        "--seed 18446744073709551616": {0, 2},
        "--folds 1": {2},
    }
    for i, (option, expected) in enumerate(probe.items()):
        folds = [] if option.startswith("--folds") else ["--folds", "2"]
        s.case(
            f"probe train {option}",
            expected,
            "probe",
            "train",
            b["features"],
            "--labels",
            b["labels"],
            "--target",
            "male",
            "--group-column",
            "relpath",
            *folds,
            "-o",
            s.dir / f"p{i}.json",
            "-q",
            *option.split(),
        )
    assign = {
        "--threshold 1e300": {0, 2},
        "--threshold -1": {2},
        "--threshold nan": {2},
        "--threshold 0": {0, 2},
        "--workers 100000": {0, 2},
    }
    for i, (option, expected) in enumerate(assign.items()):
        coll = collection(s, f"coll{i}")
        s.case(
            f"assign {option}",
            expected,
            "assign",
            b["more"],
            "--clusters",
            coll / "clusters",
            "-q",
            *option.split(),
            timeout=limit(option, 200),
            unchanged_if_refused=[coll],
        )


# ------------------------------------------------------------------ folder layouts


@scenario("layouts", "output inside the input, output == input, symlinked folders")
def layouts(s: Scenario) -> None:
    b = s.base

    def faces(folder):
        return len(csv_rows(folder / "detections.csv")) - 1 if (folder / "detections.csv").is_file() else None

    for name, where in (("inside its input folder", "crops"), ("the input folder itself", "")):
        photos = s.dir / f"photos_{where or 'same'}"
        shutil.copytree(b["photos"], photos)
        s.own(photos)
        out = photos / where
        s.case(f"detect -o {name}", {0, 1, 2}, "detect", photos, "-o", out, *DETECT)
        first = faces(out)
        s.case(
            f"detect -o {name}, rerun: its own crops are no photos",
            {0, 1, 2},
            "detect",
            photos,
            "-o",
            out,
            *DETECT,
            check=lambda r, o=out, f=first: (
                None if r.returncode != 0 or faces(o) == f else f"{f} faces, then {faces(o)}"
            ),
        )

    def same_faces_as_first(folder):
        def check(r):
            if r.returncode != 0:
                return None
            return None if faces(folder / "temp") == 9 else f"{faces(folder / 'temp')} faces from 9 one-face photos"

        return check

    for name, where in (("inside the input", "run"), ("== the input", "")):
        run_photos = s.dir / f"run_photos_{where or 'same'}"
        shutil.copytree(b["photos"], run_photos)
        s.own(run_photos)
        out = run_photos / where
        s.case(
            f"run --out {name}",
            {0, 1, 2},
            "run",
            run_photos,
            "--out",
            out,
            "--config",
            b["config"],
            "-q",
            timeout=400,
            check=same_faces_as_first(out),
        )
        s.case(
            f"run --out {name}, rerun: its crops and faces are not read as photos",
            {0, 1, 2},
            "run",
            run_photos,
            "--out",
            out,
            "--config",
            b["config"],
            "-q",
            timeout=400,
            check=same_faces_as_first(out),
        )
    link = s.dir / "link_to_photos"
    link.symlink_to(b["photos"])
    s.case(
        "detect: a folder and a symlink to it count each photo once",
        {0},
        "detect",
        b["photos"],
        link,
        "-o",
        s.dir / "d_link",
        *DETECT,
        check=lambda _: (
            None
            if len(csv_rows(s.dir / "d_link" / "sources.csv")) == 10
            else f"{len(csv_rows(s.dir / 'd_link' / 'sources.csv')) - 1} photos counted from 9"
        ),
    )
    s.case("detect: a symlinked input folder alone", {0}, "detect", link, "-o", s.dir / "d_link_only", *DETECT)
    target = s.dir / "real_out"
    target.mkdir()
    (s.dir / "out_link").symlink_to(target)
    s.case("detect -o a symlink to a folder", {0, 1}, "detect", b["photos"], "-o", s.dir / "out_link", *DETECT)
    s.case(
        "cluster -o a symlink to a folder",
        {0, 1},
        "cluster",
        b["features"],
        "-o",
        s.dir / "out_link",
        "--k",
        "3",
        "-q",
    )
    (s.dir / "dangling_out").symlink_to(s.dir / "nowhere")
    s.case("detect -o a dangling symlink", {0, 1}, "detect", b["photos"], "-o", s.dir / "dangling_out", *DETECT)
    crops = s.dir / "crops"
    shutil.copytree(b["crops"], crops)
    s.case("cluster -o the crops folder", {0, 1}, "cluster", b["features"], "-o", crops, "--k", "3", "-q")
    s.case(
        "embed of that crops folder: the sample grids are no crops",
        {0, 1, 3},
        "embed",
        crops,
        "-o",
        s.dir / "e_after.csv",
        "--model",
        "dlib-resnet128",
        "--workers",
        "1",
        "-q",
        check=lambda r: (
            None
            if r.returncode != 0 or len(csv_rows(s.dir / "e_after.csv")) == 11
            else f"{len(csv_rows(s.dir / 'e_after.csv')) - 1} embeddings from 10 crops"
        ),
    )
    spaced = s.dir / "my photos 成龙"
    shutil.copytree(b["photos"], spaced)
    s.own(spaced)
    s.case(
        "detect: input and output folders with spaces and unicode",
        {0},
        "detect",
        spaced,
        "-o",
        spaced.parent / "out 成龙",
        *DETECT,
    )
    s.case(
        "detect: relative paths with .. from another working folder",
        {0},
        "detect",
        "../my photos 成龙",
        "-o",
        "../rel_out",
        *DETECT,
        cwd=s.dir / "sentinel",
    )


# ------------------------------------------------------------------ faults


@scenario("faults", "Ctrl-C during pool start and mid-run, then a plain rerun")
def interrupts(s: Scenario) -> None:
    b = s.base
    reference = s.dir / "reference"
    s.step("detect", b["many"], "-o", reference, "--detector", "haar", "-q", timeout=600)
    for delay in (0.0, 0.3, 1.0):
        out = s.dir / f"int_{delay}"
        s.case(
            f"detect: Ctrl-C {delay} s after it starts (pool starting)",
            {130},
            "detect",
            b["many"],
            "-o",
            out,
            "--detector",
            "haar",
            "-q",
            interrupt=(lock_taken(out), signal.SIGINT, delay),
        )
        s.case(
            f"detect after the Ctrl-C at {delay} s: a plain rerun",
            {0},
            "detect",
            b["many"],
            "-o",
            out,
            "--detector",
            "haar",
            "-q",
            timeout=600,
            check=lambda _, o=out: (
                None
                if (o / "detections.csv").read_bytes() == (reference / "detections.csv").read_bytes()
                else "detections differ from an uninterrupted run"
            ),
        )
    out = s.dir / "int_mid"
    s.case(
        "detect: Ctrl-C mid-run",
        {130},
        "detect",
        b["many"],
        "-o",
        out,
        "--detector",
        "haar",
        "-q",
        interrupt=(lock_taken(out), signal.SIGINT, 3.0),
    )
    s.case(
        "detect after a mid-run Ctrl-C: a plain rerun",
        {0},
        "detect",
        b["many"],
        "-o",
        out,
        "--detector",
        "haar",
        "-q",
        timeout=600,
        check=lambda _: (
            None
            if (out / "detections.csv").read_bytes() == (reference / "detections.csv").read_bytes()
            else "detections differ from an uninterrupted run"
        ),
    )
    embedded = s.dir / "e_ref.csv"
    s.step("embed", reference, "-o", embedded, "--model", "dlib-resnet128", "-q", timeout=600)
    for delay, name in ((0.2, "pool starting"), (6.0, "mid-run")):
        out = s.dir / f"e_{delay}" / "f.csv"
        s.case(
            f"embed: Ctrl-C ({name})",
            {130},
            "embed",
            reference,
            "-o",
            out,
            "--model",
            "dlib-resnet128",
            "-q",
            interrupt=(lock_taken(out.parent), signal.SIGINT, delay),
        )
        s.case(
            f"embed after a Ctrl-C ({name}): a plain rerun",
            {0},
            "embed",
            reference,
            "-o",
            out,
            "--model",
            "dlib-resnet128",
            "-q",
            timeout=600,
            check=lambda _, o=out: None if o.read_bytes() == embedded.read_bytes() else "embeddings differ",
        )
    weights = s.dir / "w_int"
    results = b["clusters"] / "cluster_results.csv"
    train = ["--epochs", "40", "--image-size", "32", "--identity-weight", "0", "-q"]
    s.case(
        "train-cvae: Ctrl-C after the first epoch",
        {130},
        "train-cvae",
        results,
        "-o",
        weights,
        *train,
        interrupt=(exists(weights / "cvae_epoch_1.pt"), signal.SIGINT, 0.2),
    )
    s.case(
        "train-cvae after a Ctrl-C: a plain rerun (no --resume) finishes",
        {0},
        "train-cvae",
        results,
        "-o",
        weights,
        *train,
        timeout=600,
    )
    no_face = s.dir / "no_face"
    no_face.mkdir()
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (200, 200), (40 * i, 90, 120)).save(no_face / f"wall_{i}.jpg")
    s.own(no_face)
    out = s.dir / "d_noface"
    s.case("detect: a folder with no face anywhere", {0}, "detect", no_face, "-o", out, *DETECT)
    s.case("detect rerun on a detections.csv with no rows", {0}, "detect", no_face, "-o", out, *DETECT)
    shutil.copy(b["face"], s.dir / "face_added.jpg")
    s.case(
        "detect rerun with a face photo added",
        {0},
        "detect",
        no_face,
        s.dir / "face_added.jpg",
        "-o",
        out,
        *DETECT,
        check=lambda _: None if len(csv_rows(out / "detections.csv")) == 2 else "the new face is missing",
    )
    out = s.dir / "d_early"
    s.case(
        "detect: Ctrl-C before the first photo is done",
        {130},
        "detect",
        b["many"],
        "-o",
        out,
        "--detector",
        "haar",
        "-q",
        interrupt=(lock_taken(out), signal.SIGINT, 0.0),
    )
    s.case(
        "detect after that: a plain rerun",
        {0},
        "detect",
        b["many"],
        "-o",
        out,
        "--detector",
        "haar",
        "-q",
        timeout=600,
    )
    run_out = s.dir / "run_int"
    s.case(
        "run: Ctrl-C during detect",
        {130},
        "run",
        b["photos"],
        "--out",
        run_out,
        "--config",
        b["config"],
        "-q",
        interrupt=(lock_taken(run_out), signal.SIGINT, 1.0),
        timeout=400,
    )
    s.case(
        "run after a Ctrl-C: a plain rerun",
        {0},
        "run",
        b["photos"],
        "--out",
        run_out,
        "--config",
        b["config"],
        "-q",
        timeout=400,
    )


@scenario("faults", "kill -9 then resume, a busy folder")
def kills(s: Scenario) -> None:
    b = s.base
    busy = s.dir / "busy"
    first = background("detect", b["many"], "-o", busy, "-q", "--detector", "haar")
    try:
        deadline = time.monotonic() + 120
        while not lock_taken(busy)() and time.monotonic() < deadline:
            time.sleep(0.1)
        s.case(
            "a second detect on a busy folder",
            {1},
            "detect",
            b["many"],
            "-o",
            busy,
            "-q",
            "--detector",
            "haar",
            check=lambda r: None if f"pid {first.pid}" in r.stderr else "holder not named",
        )
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    s.case(
        "detect resumed after kill -9", {0}, "detect", b["many"], "-o", busy, "-q", "--detector", "haar", timeout=600
    )
    s.case(
        "the same detect uninterrupted",
        {0},
        "detect",
        b["many"],
        "-o",
        s.dir / "whole",
        "-q",
        "--detector",
        "haar",
        timeout=600,
        check=lambda _: (
            None
            if (busy / "detections.csv").read_bytes() == (s.dir / "whole" / "detections.csv").read_bytes()
            else "the resumed run's detections differ"
        ),
    )
    crops = s.dir / "whole"
    out = s.dir / "e_kill" / "f.csv"
    s.case(
        "embed: kill -9 mid-run",
        {-9},
        "embed",
        crops,
        "-o",
        out,
        "--model",
        "dlib-resnet128",
        "-q",
        interrupt=(lock_taken(out.parent), signal.SIGKILL, 5.0),
        timeout=600,
    )
    s.case(
        "embed resumed after kill -9", {0}, "embed", crops, "-o", out, "--model", "dlib-resnet128", "-q", timeout=900
    )
    results = b["clusters"] / "cluster_results.csv"
    weights = s.dir / "w_kill"
    train = ["--epochs", "40", "--image-size", "32", "--identity-weight", "0", "-q"]
    s.case(
        "train-cvae: kill -9 after an epoch",
        {-9},
        "train-cvae",
        results,
        "-o",
        weights,
        *train,
        interrupt=(exists(weights / "cvae_epoch_1.pt"), signal.SIGKILL, 0.3),
    )
    s.case(
        "train-cvae --resume after kill -9",
        {0},
        "train-cvae",
        results,
        "-o",
        weights,
        *train,
        "--resume",
        timeout=600,
    )
    s.case(
        "train-cvae, a plain rerun after it finished: skipped or redone",
        {0},
        "train-cvae",
        results,
        "-o",
        weights,
        *train,
        timeout=600,
    )
    held = s.dir / "w_busy"
    trainer = background(
        "train-cvae", results, "-o", held, "--epochs", "30", "--image-size", "32", "--identity-weight", "0", "-q"
    )
    try:
        deadline = time.monotonic() + 120
        while not lock_taken(held)() and time.monotonic() < deadline:
            time.sleep(0.1)
        s.case("a second train-cvae on a busy weights folder", {1}, "train-cvae", results, "-o", held, *TRAIN)
        s.case(
            "a generate into a busy weights folder",
            {1},
            "generate",
            b["weights"],
            "--all",
            "-o",
            held,
            "--no-evaluate",
            "-q",
        )
    finally:
        os.killpg(trainer.pid, signal.SIGKILL)
        trainer.wait()


@scenario("faults", "the same training twice, once with a command refused during it")
def determinism(s: Scenario) -> None:
    import torch

    b = s.base
    results = b["clusters"] / "cluster_results.csv"
    train = ["--epochs", "30", "--image-size", "32", "--identity-weight", "0", "-q"]
    s.step("train-cvae", results, "-o", s.dir / "w_plain", *train, timeout=600)
    trainer = background("train-cvae", results, "-o", s.dir / "w_busy", *train)
    deadline = time.monotonic() + 120
    while (
        not (s.dir / "w_busy" / "cvae_epoch_1.pt").exists() and trainer.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    s.case(
        "a train-cvae refused on a busy weights folder", {1}, "train-cvae", results, "-o", s.dir / "w_busy", *train
    )
    while trainer.poll() is None:  # more refused commands, at other moments of the training (it differed once)
        facepipe("train-cvae", results, "-o", s.dir / "w_busy", *train, timeout=120)
    trainer.wait(timeout=600)

    def same_weights(first: str, second: str):
        def check(_):
            one = torch.load(s.dir / first / "cvae_best.pt", weights_only=True)["model"]
            two = torch.load(s.dir / second / "cvae_best.pt", weights_only=True)["model"]
            differ = [k for k in one if not torch.equal(one[k], two[k])]
            return f"{len(differ)} of {len(one)} tensors differ from {first}'s" if differ else None

        return check

    s.case(
        "a second plain training (the control): the same CVAE",
        {0},
        "train-cvae",
        results,
        "-o",
        s.dir / "w_plain2",
        *train,
        timeout=600,
        check=same_weights("w_plain", "w_plain2"),
    )
    s.case(
        "generate from the training a refused command met: the same CVAE as without",
        {0},
        "generate",
        s.dir / "w_busy",
        "--all",
        "-o",
        s.dir / "g_busy",
        "--no-evaluate",
        "-q",
        check=same_weights("w_plain", "w_busy"),
    )


# ------------------------------------------------------------------ safety


@scenario("safety", "export into a folder of the user's")
def export_safety(s: Scenario) -> None:
    b = s.base
    manifest_head = "photo,face,group,name,distance,file\n"
    for i, (name, manifest) in enumerate(
        (
            (
                "the user's own manifest.csv listing thesis.docx and photos/a.jpg",
                manifest_head + "x,y,0,,0.1,thesis.docx\nx,y,0,,0.1,photos/a.jpg\n",
            ),
            ("a manifest line ../sentinel/keep.txt", manifest_head + "x,y,0,,0.1,../sentinel/keep.txt\n"),
            (
                "a manifest line with an absolute path",
                manifest_head + f"x,y,0,,0.1,{s.dir / 'sentinel' / 'holiday.jpg'}\n",
            ),
            ("a manifest.csv that is a spreadsheet of the user's", "name,amount\nrent,900\n"),
            ("a manifest.csv of binary", "\x00\xff\xfe"),
        )
    ):
        target = s.dir / f"x{i}"
        s.plant(target / "manifest.csv", manifest)
        s.plant(target / "thesis.docx", "chapter one\n")
        s.plant(target / "photos" / "a.jpg", b["face"].read_bytes())
        s.case(f"export -o a folder with {name}", {0, 1}, "export", b["clusters"], "-o", target, "-q")
    target = s.dir / "x_listed"
    s.step("export", b["clusters"], "-o", target, "-q")
    s.plant(target / "group_0" / "mine.jpg", b["face"].read_bytes())
    with open(target / "manifest.csv", "a") as handle:
        handle.write(f"{b['face']},x_0.jpg,0,,0.1,group_0/mine.jpg\n")
    s.case(
        "export rerun: a manifest line names a user's file inside the target",
        {0, 1},
        "export",
        b["clusters"],
        "-o",
        target,
        "-q",
    )
    target = s.dir / "x_edit"
    s.step("export", b["clusters"], "-o", target, "--mode", "copy", "-q")
    copy = sorted((target / "group_0").iterdir())[0]
    s.plant(copy, copy.read_bytes() + b"edited by the user")
    s.case(
        "export --mode copy rerun: a copy the user edited",
        {0, 1},
        "export",
        b["clusters"],
        "-o",
        target,
        "--mode",
        "copy",
        "-q",
    )
    s.case(
        "export --mode copy after a regroup: a copy the user edited",
        {0, 1},
        "export",
        b["clusters2"],
        "-o",
        target,
        "--mode",
        "copy",
        "-q",
    )
    target = s.dir / "x_adopt"
    s.step("export", b["clusters"], "-o", target, "--mode", "copy", "-q")
    planned = csv_rows(target / "manifest.csv")[1:]
    shutil.rmtree(target)
    photo, file = planned[0][0], planned[0][5]
    s.plant(target / file, Path(photo).read_bytes() if Path(photo).is_file() else b"")
    s.plant(target / "group_9" / "also_mine.jpg", b["face"].read_bytes())
    s.case(
        "export --mode copy over the user's own identical copy",
        {0, 1},
        "export",
        b["clusters"],
        "-o",
        target,
        "--mode",
        "copy",
        "-q",
    )
    s.case(
        "export after a regroup: the adopted copy stays",
        {0, 1},
        "export",
        b["clusters2"],
        "-o",
        target,
        "--mode",
        "copy",
        "-q",
    )
    target = s.dir / "x_link"
    elsewhere = s.dir / "elsewhere"
    s.step("export", b["clusters"], "-o", target, "-q")
    for file in (elsewhere / "a.txt", elsewhere / "b.jpg"):
        s.plant(file, "the user's file elsewhere\n")
    shutil.rmtree(target / "group_0")
    (target / "group_0").symlink_to(elsewhere)
    s.case(
        "export rerun: a group folder is a symlink to elsewhere",
        {0, 1},
        "export",
        b["clusters"],
        "-o",
        target,
        "-q",
        outside=[elsewhere],
    )
    s.case(
        "export after a regroup: a group folder is a symlink to elsewhere",
        {0, 1},
        "export",
        b["clusters2"],
        "-o",
        target,
        "-q",
        outside=[elsewhere],
    )
    target = s.dir / "x_unknown_link"
    s.step("export", b["clusters"], "-o", target, "-q")
    shutil.rmtree(target / "unknown")
    (target / "unknown").symlink_to(s.dir / "sentinel")
    s.case(
        "export rerun: unknown/ is a symlink to the sentinel", {0, 1}, "export", b["clusters2"], "-o", target, "-q"
    )
    target = s.dir / "x_manifest_link"
    s.step("export", b["clusters"], "-o", target, "-q")
    (target / "manifest.csv").unlink()
    (target / "manifest.csv").symlink_to(s.dir / "sentinel" / "keep.txt")
    s.case(
        "export rerun: manifest.csv is a symlink to a user's file",
        {0, 1},
        "export",
        b["clusters2"],
        "-o",
        target,
        "-q",
    )
    photos = s.dir / "photos"
    shutil.copytree(b["photos"], photos)
    s.own(photos)
    s.case(
        "export -o the photos folder itself", {0, 1}, "export", b["clusters"], "-o", photos, "--mode", "copy", "-q"
    )
    s.case(
        "export -o the photos folder itself, after a regroup",
        {0, 1},
        "export",
        b["clusters2"],
        "-o",
        photos,
        "--mode",
        "copy",
        "-q",
    )
    people = s.plant(s.dir / "people.toml", '[names]\n0 = "../sentinel"\n1 = "/etc"\n2 = ".."\n')
    clusters = s.dir / "c_named"
    s.step("cluster", b["features"], "-o", clusters, "--k", "3", "--people", people, "-q")
    target = s.dir / "x_named"
    beside = sorted(p.name for p in s.dir.iterdir())
    s.case(
        "export: people file names ../sentinel, /etc and ..",
        {0, 1},
        "export",
        clusters,
        "-o",
        target,
        "-q",
        check=lambda _: (
            None
            if sorted(p.name for p in s.dir.iterdir() if p.name != target.name) == beside
            else "wrote beside the target folder"
        ),
    )


@scenario("safety", "detect rerun: crop paths read from detections.csv, user's temp-like files")
def detect_safety(s: Scenario) -> None:
    b = s.base
    photos = sorted(b["photos"].glob("*.jpg"))
    rows = csv_rows(b["crops"] / "detections.csv")
    dropped = [r for r in rows[1:] if r[1] == str(photos[0])]
    for i, (name, crop) in enumerate(
        (
            ("../victim.txt", "../victim.txt"),
            ("an absolute path", str(s.dir / "victim.txt")),
            ("sub/../../victim.txt", "sub/../../victim.txt"),
            ("detections.csv", "detections.csv"),
            ("sources.csv", "sources.csv"),
            ("the folder itself (.)", "."),
            ("the sentinel", str(s.dir / "sentinel")),
        )
    ):
        crops = s.dir / f"crops{i}"
        shutil.copytree(b["crops"], crops)
        s.plant(s.dir / "victim.txt", "the user's file beside the crops folder\n")
        edited = [rows[0]] + [[crop, *r[1:]] if r is dropped[0] else r for r in rows[1:]]
        (crops / "detections.csv").write_text(rows_text(edited))
        s.case(
            f"detect rerun without a photo: detections.csv names {name}",
            {0, 1},
            "detect",
            *photos[1:],
            "-o",
            crops,
            "--min-neighbors",
            "5",
            "-q",
        )
    for i, name in enumerate((".draft.tmp.txt", ".thesis.docx.x1.tmp", ".notes.tmpl", ".a.tmp.jpg")):
        crops = s.dir / f"tmp{i}"
        shutil.copytree(b["crops"], crops)
        s.plant(crops / name, "the user's draft\n")
        s.case(
            f"detect rerun: the user's {name} in the crops folder",
            {0},
            "detect",
            b["photos"],
            "-o",
            crops,
            "--min-neighbors",
            "5",
            "-q",
        )
    mine = s.dir / "my_crops"
    mine.mkdir()
    s.plant(mine / "my_face.jpg", b["face"].read_bytes())
    s.plant(mine / "detections.csv", "my,own,table\n")
    s.case(
        "detect -o a folder of the user's with their own detections.csv",
        {0, 1},
        "detect",
        b["photos"],
        "-o",
        mine,
        *DETECT,
    )


@scenario("safety", "user files in generate's, cluster's, train-cvae's and embed's outputs")
def stage_output_safety(s: Scenario) -> None:
    b = s.base
    out = s.dir / "g"
    for name in (
        "cluster_party.png",
        "cluster_7.png",
        "cluster_0_old.png",
        "clusters_sheet_2019.png",
        "fidelity.json.bak",
        ".draft.tmp.txt",
        "notes.txt",
    ):
        s.plant(out / name, "the user's\n")
    s.case(
        "generate -o a folder with the user's cluster_party.png, cluster_7.png...",
        {0, 1},
        "generate",
        b["weights"],
        "--all",
        "-o",
        out,
        "--no-evaluate",
        "-q",
        "--samples",
        "1",
    )
    s.case(
        "generate rerun (--cluster 0) over them",
        {0, 1},
        "generate",
        b["weights"],
        "--cluster",
        "0",
        "-o",
        out,
        "--no-evaluate",
        "-q",
        "--samples",
        "1",
    )
    samples = s.dir / "samples"
    for name in ("cluster_wedding.jpg", "cluster_3.jpg", "overview_2019.jpg", "unknown_people.jpg", ".x.tmp.jpg"):
        s.plant(samples / name, b["face"].read_bytes())
    s.case(
        "cluster --samples-dir a folder with the user's cluster_wedding.jpg, cluster_3.jpg...",
        {0, 1},
        "cluster",
        b["features"],
        "-o",
        s.dir / "c",
        "--k",
        "3",
        "--samples-dir",
        samples,
        "-q",
    )
    s.case(
        "cluster rerun with k = 2 over them",
        {0, 1},
        "cluster",
        b["features"],
        "-o",
        s.dir / "c",
        "--k",
        "2",
        "--samples-dir",
        samples,
        "-q",
    )
    clusters_out = s.dir / "c_own"
    for name in ("centroids_2019.csv", ".draft.tmp.txt", "k_selection_notes.csv"):
        s.plant(clusters_out / name, "the user's\n")
    s.case(
        "cluster -o a folder with the user's files",
        {0, 1},
        "cluster",
        b["features"],
        "-o",
        clusters_out,
        "--k",
        "3",
        "-q",
    )
    weights = s.dir / "w"
    for name in ("cvae_epoch_99.pt", "cvae_notes.pt", ".draft.tmp.txt", "cvae_log_2019.csv"):
        s.plant(weights / name, "the user's\n")
    s.case(
        "train-cvae -o a folder with the user's cvae_epoch_99.pt...",
        {0, 1},
        "train-cvae",
        b["clusters"] / "cluster_results.csv",
        "-o",
        weights,
        "--epochs",
        "3",
        "--keep-last",
        "1",
        "--image-size",
        "32",
        "--identity-weight",
        "0",
        "-q",
        timeout=300,
    )
    emb = s.dir / "e"
    for name in (".draft.tmp.txt", "f.csv.errors.csv.bak", ".f.csv.x.tmp.csv"):
        s.plant(emb / name, "the user's\n")
    s.case(
        "embed -o into a folder with the user's temp-like files",
        {0},
        "embed",
        b["crops"],
        "-o",
        emb / "f.csv",
        "--model",
        "dlib-resnet128",
        "--workers",
        "1",
        "-q",
    )
    runs = s.dir / "r"
    for name in (
        "notes.txt",
        "temp/mine.jpg",
        "weights/thesis.pt",
        "inference_results/cluster_party.png",
        ".draft.tmp.txt",
    ):
        s.plant(runs / name, "the user's\n")
    s.case(
        "run --out a folder with the user's temp/mine.jpg, weights/thesis.pt...",
        {0, 1},
        "run",
        b["photos"],
        "--out",
        runs,
        "--config",
        b["config"],
        "-q",
        timeout=400,
    )
    probe_out = s.dir / "p"
    s.plant(probe_out / "p_holdout" / "my_plot.png", "the user's\n")
    s.case(
        "probe train --holdout with the user's file in its holdout folder",
        {0, 1},
        "probe",
        "train",
        b["features"],
        "--labels",
        b["labels"],
        "--target",
        "male",
        "--group-column",
        "relpath",
        "--folds",
        "2",
        "--holdout",
        "0.4",
        "-o",
        probe_out / "p.json",
        "-q",
    )


# ------------------------------------------------------------------ main


def summarise(rows: list[dict]) -> dict:
    bad = [row for row in rows if row["problems"]]
    by_outcome = {outcome: sum(any(k == outcome for k, _ in row["problems"]) for row in rows) for outcome in OUTCOMES}
    classes = sorted({row["class"] for row in rows})
    by_class = {
        c: {"cases": sum(r["class"] == c for r in rows), "failed": sum(r["class"] == c for r in bad)} for c in classes
    }
    return dict(cases=len(rows), as_expected=len(rows) - len(bad), by_outcome=by_outcome, by_class=by_class)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="working folder (kept; its base/ is reused)")
    parser.add_argument("--only", default=None, help="regex on 'class/scenario': run only those scenarios")
    parser.add_argument("--jobs", type=int, default=1, help="scenarios run at a time")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args()
    # Started in the background by a shell, this process ignores SIGINT, and so would every command it starts:
    # a handler of Python's own is reset to the default on exec, so the commands see a Ctrl-C as a terminal's.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    chosen = [(c, n, f) for c, n, f in SCENARIOS if not args.only or re.search(args.only, f"{c}/{n}")]
    if args.list:
        print("\n".join(f"{c}/{n}" for c, n, _ in chosen))
        return
    work = (args.work or Path(tempfile.mkdtemp(prefix="facepipe_probe_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    start = time.monotonic()
    probe = Probe(work, setup(work))

    def play(entry):
        cls, name, function = entry
        try:
            function(probe.scenario(cls, name))
        except Exception as error:  # a scenario whose setup broke is reported, the others go on
            probe.record(
                dict(
                    name=f"{name}: the scenario itself failed",
                    scenario=name,
                    **{"class": cls},
                    expected=[],
                    exit=None,
                    seconds=0,
                    problems=[("wrong result", f"{type(error).__name__}: {error}")],
                    last="",
                )
            )

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        list(pool.map(play, chosen))
    totals = summarise(probe.rows)
    outcomes = ", ".join(f"{v} {k}" for k, v in totals["by_outcome"].items())
    print(
        f"{totals['cases']} cases in {time.monotonic() - start:.0f} s: {totals['as_expected']} as expected; {outcomes}"
    )
    print(
        "by class: "
        + ", ".join(f"{c} {v['cases'] - v['failed']}/{v['cases']}" for c, v in totals["by_class"].items())
    )
    suffix = f"_{re.sub(r'[^A-Za-z0-9]+', '_', args.only)}" if args.only else ""
    results = work / f"probe_faults{suffix}.json"
    results.write_text(json.dumps(dict(totals, rows=probe.rows), indent=1, default=str))
    print(f"results: {results}")
    sys.exit(1 if totals["as_expected"] < totals["cases"] else 0)


if __name__ == "__main__":
    main()
