"""cluster at scale: 100,000 x 2048 embeddings, k = 100, facepipe's stage next to scikit-learn's KMeans.

Synthetic data (seeded): 100 random centres on the unit sphere plus Gaussian noise, L2-normalised,
saved as an embeddings .npz. Each case runs in a fresh child process, so its time and peak RSS are
its own. Inertia is the sum of squared distances of all points to their centroid, on the same
normalised vectors, so the rows compare.

Cases:
  facepipe      the whole ``cluster`` stage (read .npz, fingerprint, k-means, write CSVs, no sample grids)
  sklearn       ``sklearn.cluster.KMeans(n_clusters=k, random_state=0)``: its defaults (k-means++,
                n_init="auto" = 1 run, max_iter=300, tol=1e-4, Lloyd), fitted on all points

Usage: python benchmarks/bench_cluster.py [--n 100000] [--dim 2048] [--k 100] [--n-init 1 3] [--skip-sklearn]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD_FACEPIPE = """
import json, resource, sys, time
from facepipe.cluster import cluster
from facepipe.formats import read_json
from facepipe.settings import ClusterSettings
start = time.perf_counter()
summary = cluster(sys.argv[1], sys.argv[2], ClusterSettings(k=int(sys.argv[3]), n_init=int(sys.argv[4])),
                  samples_dir=None, show_progress=False)
seconds = time.perf_counter() - start
meta = read_json(sys.argv[2] + "/cluster_results.csv.json")
print(json.dumps({"seconds": seconds, "inertia": meta["inertia"], "clusters": summary.k,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

CHILD_SKLEARN = """
import json, resource, sys, time
import numpy as np
from sklearn.cluster import KMeans
with np.load(sys.argv[1]) as data:
    vectors = data["vectors"]
start = time.perf_counter()
model = KMeans(n_clusters=int(sys.argv[3]), random_state=0).fit(vectors)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "inertia": float(model.inertia_), "clusters": int(len(set(model.labels_))),
                  "iterations": int(model.n_iter_),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_embeddings(path: Path, n: int, dim: int, groups: int, seed: int = 0) -> None:
    """Seeded synthetic embeddings (float32, unit length) in ``groups`` noisy groups, as an embeddings .npz."""
    from facepipe.formats import Embeddings, write_embeddings

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 10_000):
        stop = min(n, start + 10_000)
        chunk = centres[rng.integers(0, groups, stop - start)]
        chunk += rng.standard_normal(chunk.shape, dtype=np.float32) * np.float32(0.7 / np.sqrt(dim))
        vectors[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    write_embeddings(path, Embeddings([f"face_{i:06d}.jpg" for i in range(n)], vectors, {"model": "synthetic"}))


def run_child(code: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--n-init", type=int, nargs="+", default=[1, 3], help="facepipe restarts to measure")
    parser.add_argument("--skip-sklearn", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "embeddings.npz"
        make_embeddings(data, args.n, args.dim, args.k)
        print(f"{args.n} x {args.dim} embeddings ({data.stat().st_size / 2**20:.0f} MiB .npz), k = {args.k}")
        print("| engine | settings | seconds | peak RSS (MiB) | inertia |")
        print("|---|---|---|---|---|")
        for n_init in args.n_init:
            r = run_child(CHILD_FACEPIPE, str(data), str(Path(folder) / f"out{n_init}"), str(args.k), str(n_init))
            print(
                f"| facepipe `cluster` (k-means++ + faiss Lloyd) | n_init {n_init}, 30 iterations on a "
                f"{min(args.n, 256 * args.k)}-point sample, then all points assigned; whole stage incl. reading and "
                f"writing | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | {r['inertia']:.1f} |",
                flush=True,
            )
        if not args.skip_sklearn:
            r = run_child(CHILD_SKLEARN, str(data), "", str(args.k))
            print(
                f"| scikit-learn KMeans | defaults (k-means++, 1 run, max_iter 300, tol 1e-4), all points; "
                f"fit only ({r['iterations']} iterations) | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | "
                f"{r['inertia']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
