"""Clustering at archive scale: the cluster stage on synthetic 128-d faces of seeded identities, with time
and peak memory (issue 17, its clustering part).

    python benchmarks/bench_scale.py [--faces 1000000] [--n-init 1] [--work DIR]

The faces imitate dlib-resnet128 embeddings of a big collection: identities with a geometric number of
photos (mean 5; one in ten people a one-off stranger), each face its identity's unit centre plus Gaussian
noise of norm 0.25, L2-normalised, so that two photos of a person lie about 0.35 apart, under dlib's
same-person distance 0.37, and two people about 1.4. The embeddings go to an .npz with a dlib-resnet128
sidecar; `cluster` (the same-person graph: above 100,000 faces faiss's inverted file and whispers in rounds)
runs in a child process, whose wall time and peak RSS are reported with BCubed F against the identities.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


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

    started = time.perf_counter()
    summary = cluster(path, out, method="graph", n_init=n_init, samples_dir=None, show_progress=False)
    print(json.dumps({"seconds": time.perf_counter() - started, "groups": summary.k, "unknown": summary.unknown,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=1_000_000)
    parser.add_argument("--n-init", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    from facepipe.cluster_metrics import bcubed
    from facepipe.formats import CLUSTER_RESULTS_CSV, Embeddings, read_csv, write_embeddings

    work = args.work or Path(tempfile.mkdtemp(prefix="facepipe_scale_"))
    faces, identities = synthetic_faces(args.faces)
    names = [f"face_{i:08d}.jpg" for i in range(len(faces))]
    write_embeddings(work / "faces.npz", Embeddings(names, faces, {"model": "dlib-resnet128"}))
    print(f"{len(faces):,} faces of {len(np.unique(identities)):,} identities "
          f"({int((np.bincount(identities) == 1).sum()):,} with one face) -> {work}")
    result = subprocess.run([sys.executable, __file__, "_child", str(work / "faces.npz"), str(work / "clusters"),
                             str(args.n_init)], check=True, capture_output=True, text=True)
    row = json.loads(result.stdout.strip().splitlines()[-1])
    scores = bcubed(identities, read_csv(work / "clusters" / CLUSTER_RESULTS_CSV)["cluster"].to_numpy())
    print(f"cluster: {row['seconds']:.0f} s, peak RSS {row['peak_rss_mib']:,.0f} MiB; {row['groups']:,} groups + "
          f"{row['unknown']:,} unknown; BCubed P {scores['precision']:.3f} R {scores['recall']:.3f} F {scores['f']:.3f}")


if __name__ == "__main__":
    main()
