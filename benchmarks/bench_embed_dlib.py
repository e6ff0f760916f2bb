"""dlib-resnet128 throughput (crops/s) and peak memory: facepipe's embed stage (dlib alignment, network in
PyTorch) against dlib's own compute_face_descriptor on the same crops.

Each configuration runs in a fresh child process so its peak RSS (parent + decoding workers) is its own.
Usage: python benchmarks/bench_embed_dlib.py [--crops FOLDER] [--native-crops 300]
Without --crops, all LFW photos are detected first (minNeighbors 5, largest face only) into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

USAGE = """
def usage(start, crops):
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    print(json.dumps({"crops": crops, "seconds": time.perf_counter() - start, "cpu_seconds": cpu - start_cpu,
                      "peak_rss_mib": (own.ru_maxrss + children.ru_maxrss) / 1024}))
"""

STAGE = (
    """
import json, resource, sys, time, torch
from facepipe.embed import embed
torch.set_num_threads(int(sys.argv[5]))
"""
    + USAGE
    + """
start, start_cpu = time.perf_counter(), time.process_time()
summary = embed(sys.argv[1], sys.argv[2], model="dlib-resnet128", workers=int(sys.argv[3]),
                batch_size=int(sys.argv[4]), device="cpu", show_progress=False)
usage(start, summary.embedded)
"""
)

NATIVE = (
    """
import json, resource, sys, time
import dlib
from facepipe.embed import list_crops
from facepipe.images import load_image_rgb
from facepipe.models.dlib_resnet import RESNET_FILE, DlibResNet128Embedder, model_file
crops = list_crops(sys.argv[1])
names = crops.names[: int(sys.argv[2])]
aligner = DlibResNet128Embedder(face_margin=crops.margin, device="cpu")
network = dlib.face_recognition_model_v1(str(model_file(RESNET_FILE)))
"""
    + USAGE
    + """
start, start_cpu = time.perf_counter(), time.process_time()
for first in range(0, len(names), 32):
    chips = [aligner.prepare(load_image_rgb(crops.crops_dir / n)) for n in names[first:first + 32]]
    network.compute_face_descriptor(chips)
usage(start, len(names))
"""
)


def run_child(code: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--crops", help="a crops folder from `facepipe detect` (default: detect all of LFW first)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "lfw" / "images"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--native-crops", type=int, default=300, help="crops for dlib's own (slow) implementation")
    args = parser.parse_args()
    load_before = f"{os.getloadavg()[0]:.1f}"
    with tempfile.TemporaryDirectory() as scratch:
        crops = args.crops
        if crops is None:
            from facepipe.detect import DetectorParams, detect

            crops = os.path.join(scratch, "crops")
            detect(
                [args.data],
                crops,
                DetectorParams(detector="haar", min_neighbors=5, largest_only=True),
                workers=2,
                show_progress=False,
            )
        rows = []
        for workers, threads in ((1, 1), (2, 2)):
            output = os.path.join(scratch, f"features_{workers}.csv")
            r = run_child(STAGE, crops, output, str(workers), str(args.batch_size), str(threads))
            rows.append(
                (f"facepipe embed (network in PyTorch, {threads} thread(s)), {workers} decoding worker(s)", r)
            )
        r = run_child(NATIVE, crops, str(args.native_crops))
        rows.append(("dlib's own compute_face_descriptor (dlib-bin wheel, no BLAS), same alignment", r))
    print(f"load average before / after: {load_before} / {os.getloadavg()[0]:.1f}")
    print("| implementation | batch | crops | seconds | crops/s | CPU ms per crop | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for label, r in rows:
        print(
            f"| {label} | {args.batch_size if 'facepipe' in label else 32} | {r['crops']} | {r['seconds']:.1f} "
            f"| {r['crops'] / r['seconds']:.1f} | {1000 * r['cpu_seconds'] / r['crops']:.0f} | {r['peak_rss_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
