"""Archive scale (issue 17): detect + embed with the local engine and with Ray on a two-node cluster, side by
side; and clustering of synthetic 128-d faces of seeded identities, with time and peak memory.

    python benchmarks/bench_scale.py [--part engines|cluster|all] [--faces 1000000] [--n-init 1] [--work DIR]

Engines: the 1,424 LFW photos of ../shared (and, to see the fixed costs apart, 4 copies of them under other
paths) through `facepipe detect` (default settings) and `facepipe embed` (--model dlib-resnet128), each a
fresh process timed whole, first with the local engine (--workers = the
cores), then with --engine ray on a cluster of a head and a second node (`ray start`, 127.0.0.1, the cores
split between them), started before and timed apart. It reports the seconds of each, the CPU-seconds the
machine spent meanwhile (the workers, the facepipe process, Ray's services), the photos or crops each node did,
and whether the two engines' CSVs, crops and embeddings are byte-identical.

The faces imitate dlib-resnet128 embeddings of a big collection: identities with a geometric number of
photos (mean 5; one in ten people a one-off stranger), each face its identity's unit centre plus Gaussian
noise of norm 0.25, L2-normalised, so that two photos of a person lie about 0.35 apart, under dlib's
same-person distance 0.37, and two people about 1.4. The embeddings go to an .npz with a dlib-resnet128
sidecar; `cluster` (the same-person graph: above 100,000 faces faiss's inverted file and whispers in rounds)
runs in a child process, whose wall time and peak RSS are reported with BCubed F against the identities.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LFW = REPO.parent / "shared" / "data" / "lfw" / "images"
RAY_PORT = 6390


# Ray's token authentication, on for every command: `ray start` nodes and the facepipe jobs (as on a real cluster)
RAY_ENV = dict(os.environ, RAY_AUTH_MODE="token")
RAY = str(Path(sys.executable).with_name("ray"))


WARM_UP = (
    "import sys, ray, ray.data; ray.init(address=sys.argv[1]); "
    "ray.data.range(8).map_batches(lambda batch: batch).take_all()"
)


class CpuSeconds(threading.Thread):
    """CPU-seconds this machine's processes spend while a command runs, by who spends them: ``workers`` (the
    local engine's pools, or Ray's MapWorker actors), ``facepipe`` (the stage's own process) and ``ray`` (raylets,
    GCS, log monitors, Ray Data's helper actors, idle Ray workers). Read from Linux's /proc every 0.2 s, so a
    process's last fifth of a second before it exits may be missed; where there is no /proc, all stay 0."""

    def __init__(self):
        super().__init__(daemon=True)
        self.facepipe_pid, self.stopped, self.who = 0, threading.Event(), {}
        self.first = self._read()  # pid -> CPU-seconds before the command starts
        self.spent: dict[str, float] = {}  # pid -> CPU-seconds at the latest reading

    def _read(self) -> dict[str, float]:
        readings = {}
        for pid in (p for p in os.listdir("/proc") if p.isdigit()) if os.path.isdir("/proc") else ():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            readings[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            if int(pid) == self.facepipe_pid:
                self.who[pid] = "facepipe"
            elif (
                "ray::MapWorker" in command
                or "multiprocessing.forkserver" in command
                or int(fields[1]) == self.facepipe_pid
            ):  # a Ray actor, or a local pool's (forked) process
                self.who[pid] = "workers"  # a Ray worker that became an actor stays one, whatever it shows later
            elif self.who.get(pid) != "workers" and ("/ray/" in command or command.startswith("ray::")):
                self.who[pid] = "ray"
        return readings

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            self.spent = {**self.spent, **self._read()}

    def totals(self) -> dict[str, float]:
        self.stopped.set()
        self.join()
        totals = dict.fromkeys(("workers", "facepipe", "ray"), 0.0)
        for pid, seconds in self.spent.items():
            if pid in self.who:
                totals[self.who[pid]] += seconds - self.first.get(pid, 0.0)
        return totals


def timed(command: list[str]) -> tuple[float, str, dict[str, float]]:
    """Wall seconds of a command run to its end, its last output line (the stage's summary) and the CPU-seconds
    spent meanwhile (``CpuSeconds``)."""
    cpu = CpuSeconds()
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=RAY_ENV
    )
    cpu.facepipe_pid = process.pid
    cpu.start()
    stdout, stderr = process.communicate()
    seconds, spent = time.perf_counter() - started, cpu.totals()
    if process.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{stderr[-3000:]}")
    return seconds, stdout.strip().splitlines()[-1], spent


def photo_folders(work: Path, copies: int) -> list[str]:
    """LFW's photo folder, and for more copies links to it (other paths: detect takes them as other photos)."""
    folders = [str(LFW)]
    for copy in range(1, copies):
        link = work / f"lfw_copy_{copy}"
        if not link.exists():
            link.symlink_to(LFW, target_is_directory=True)
        folders.append(str(link))
    return folders


def stage_commands(work: Path, photos: list[str], engine: list[str], model: str, cores: int) -> list[list[str]]:
    facepipe = [sys.executable, "-m", "facepipe"]
    return [
        facepipe + ["detect", *photos, "-o", str(work / "crops"), "--workers", str(cores), "-q"] + engine,
        facepipe
        + [
            "embed",
            str(work / "crops"),
            "-o",
            str(work / "faces.csv"),
            "--model",
            model,
            "--workers",
            str(cores),
            "-q",
        ]
        + engine,
    ]


def same_outputs(a: Path, b: Path) -> dict[str, bool]:
    """Which outputs two engines wrote byte-identically (the sidecar JSONs name their folders, so they differ)."""
    crops = sorted(p.name for p in (a / "crops").iterdir() if p.suffix == ".jpg")
    return {
        "sources.csv": filecmp.cmp(a / "crops" / "sources.csv", b / "crops" / "sources.csv", shallow=False),
        "detections.csv": filecmp.cmp(a / "crops" / "detections.csv", b / "crops" / "detections.csv", shallow=False),
        f"{len(crops)} crops": all(filecmp.cmp(a / "crops" / n, b / "crops" / n, shallow=False) for n in crops),
        "faces.csv": filecmp.cmp(a / "faces.csv", b / "faces.csv", shallow=False),
    }


def start_ray_nodes(cores: int) -> float:
    """A head and a second node on 127.0.0.1, the cores split between them; the seconds they took to start."""
    subprocess.run([RAY, "get-auth-token", "--generate"], check=True, capture_output=True, env=RAY_ENV)
    start = [RAY, "start", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    started = time.perf_counter()
    subprocess.run(
        start
        + ["--head", "--port", str(RAY_PORT), "--num-cpus", str(cores - cores // 2), "--include-dashboard", "false"],
        check=True,
        capture_output=True,
        env=RAY_ENV,
    )
    subprocess.run(
        start + ["--address", f"127.0.0.1:{RAY_PORT}", "--num-cpus", str(cores // 2)],
        check=True,
        capture_output=True,
        env=RAY_ENV,
    )
    # A first Ray Data job starts the cluster's helper actors (stats, autoscaling coordinator, usage, actor
    # locations), which then serve every later job: a cluster in use has them already.
    subprocess.run(
        [sys.executable, "-c", WARM_UP, f"127.0.0.1:{RAY_PORT}"], check=True, capture_output=True, env=RAY_ENV
    )
    return time.perf_counter() - started


def engines(work: Path, model: str, copies: int) -> None:
    """The local engine and Ray on two nodes, on the same photos and cores; their outputs compared."""
    cores = os.cpu_count() or 2
    photos = photo_folders(work, copies)
    rows = {}
    for name in ("local", "ray"):
        shutil.rmtree(work / name, ignore_errors=True)
        engine = ["--engine", "ray", "--ray-address", f"127.0.0.1:{RAY_PORT}"] if name == "ray" else []
        if name == "ray":
            print(f"ray start: a head and a second node, and a first Ray Data job, in {start_ray_nodes(cores):.1f} s")
        try:
            rows[name] = [timed(command) for command in stage_commands(work / name, photos, engine, model, cores)]
        finally:
            if name == "ray":
                subprocess.run([RAY, "stop", "--force"], capture_output=True, env=RAY_ENV)
    print(f"{cores} cores, {copies} x {len(list(LFW.glob('*/*')))} LFW photos, embed model {model}")
    for name, ((detect_s, detect_line, detect_cpu), (embed_s, embed_line, embed_cpu)) in rows.items():
        print(f"  {name:5s}: detect {detect_s:6.1f} s, embed {embed_s:6.1f} s, together {detect_s + embed_s:6.1f} s")
        for line, cpu in ((detect_line, detect_cpu), (embed_line, embed_cpu)):
            nodes = re.search(r"on \d+ Ray nodes? \([^)]*\)", line)
            print(
                f"         {line.split(':')[0]}: {nodes.group(0) if nodes else 'this process and its workers'}; "
                f"CPU-seconds: workers {cpu['workers']:.1f}, facepipe process {cpu['facepipe']:.1f}, "
                f"Ray's services {cpu['ray']:.1f}"
            )
    print(
        "  byte-identical:",
        ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same_outputs(work / "local", work / "ray").items()),
    )


def synthetic_faces(count: int, dim: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` unit vectors and their identity, as described above."""
    rng = np.random.default_rng(seed)
    sizes = np.where(rng.random(count) < 0.1, 1, rng.geometric(1 / 5, size=count))
    identities = np.repeat(np.arange(count), sizes)[:count]
    centres = rng.normal(size=(int(identities.max()) + 1, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    faces = centres[identities] + rng.normal(scale=0.25 / np.sqrt(dim), size=(count, dim)).astype(np.float32)
    faces /= np.linalg.norm(faces, axis=1, keepdims=True)
    return faces, identities


def child(path: str, out: str, n_init: int) -> None:
    from facepipe.cluster import cluster
    from facepipe.settings import ClusterSettings

    started = time.perf_counter()
    summary = cluster(
        path, out, ClusterSettings(method="graph", n_init=n_init), samples_dir=None, show_progress=False
    )
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - started,
                "groups": summary.k,
                "unknown": summary.unknown,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["engines", "cluster", "all"], default="all")
    parser.add_argument("--model", default="dlib-resnet128", help="embed model of the engines part")
    parser.add_argument("--copies", default="1,4", help="engines part: runs over this many copies of LFW")
    parser.add_argument("--faces", type=int, default=1_000_000)
    parser.add_argument("--n-init", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="facepipe_scale_"))
    if args.part in ("engines", "all"):
        for copies in map(int, args.copies.split(",")):
            engines(work, args.model, copies)
    if args.part in ("cluster", "all"):
        cluster_at_scale(work, args.faces, args.n_init)


def cluster_at_scale(work: Path, count: int, n_init: int) -> None:
    """``count`` synthetic faces through the cluster stage in a child process: time, memory, BCubed."""
    from facepipe.cluster_metrics import bcubed
    from facepipe.formats import CLUSTER_RESULTS_CSV, Embeddings, read_csv, write_embeddings

    faces, identities = synthetic_faces(count)
    names = [f"face_{i:08d}.jpg" for i in range(len(faces))]
    write_embeddings(work / "faces.npz", Embeddings(names, faces, {"model": "dlib-resnet128"}))
    print(
        f"{len(faces):,} faces of {len(np.unique(identities)):,} identities "
        f"({int((np.bincount(identities) == 1).sum()):,} with one face) -> {work}"
    )
    result = subprocess.run(
        [sys.executable, __file__, "_child", str(work / "faces.npz"), str(work / "clusters"), str(n_init)],
        check=True,
        capture_output=True,
        text=True,
    )
    row = json.loads(result.stdout.strip().splitlines()[-1])
    scores = bcubed(identities, read_csv(work / "clusters" / CLUSTER_RESULTS_CSV)["cluster"].to_numpy())
    print(
        f"cluster: {row['seconds']:.0f} s, peak RSS {row['peak_rss_mib']:,.0f} MiB; {row['groups']:,} groups + "
        f"{row['unknown']:,} unknown; BCubed P {scores['precision']:.3f} R {scores['recall']:.3f} F {scores['f']:.3f}"
    )


if __name__ == "__main__":
    main()
