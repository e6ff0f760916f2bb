"""Detect throughput (images/s) and peak memory on ../shared/data/lfw, for 1 and 2 workers.

Each configuration runs in a fresh child process so its peak RSS (parent + workers) is its own.
Usage: python benchmarks/bench_detect.py [--data ../shared/data/lfw/images] [--min-neighbors 45]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
from facepipe.detect import DetectorParams, detect
start = time.perf_counter()
summary = detect([sys.argv[1]], sys.argv[2], DetectorParams(min_neighbors=int(sys.argv[4])),
                 workers=int(sys.argv[3]), show_progress=False)
seconds = time.perf_counter() - start
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"images": summary.images, "faces": summary.faces, "seconds": seconds,
                  "peak_rss_mib": (own + children) / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "lfw" / "images"))
    parser.add_argument("--min-neighbors", type=int, default=45)
    args = parser.parse_args()
    print("| workers | images | faces | seconds | images/s | peak RSS (MiB, parent + largest worker) |")
    print("|---|---|---|---|---|---|")
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as out:
            result = subprocess.run(
                [sys.executable, "-c", CHILD, args.data, out, str(workers), str(args.min_neighbors)],
                check=True,
                capture_output=True,
                text=True,
            )
        r = json.loads(result.stdout.strip().splitlines()[-1])
        print(
            f"| {workers} | {r['images']} | {r['faces']} | {r['seconds']:.1f} | {r['images'] / r['seconds']:.0f} "
            f"| {r['peak_rss_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
