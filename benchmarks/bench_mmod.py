"""facepipe's PyTorch port of dlib's MMOD CNN face detector against dlib's own (``dlib.cnn_face_detection_model_v1``):
the same boxes and scores, and the CPU-seconds of each, on real photos.

    python benchmarks/bench_mmod.py [--shared ../shared] [--every 10] [--max-side 512] [--upsample 0 1]

Photos: all of group_photos, and every N-th of celeba_wild and of lfw, each scaled down to ``--max-side`` as
detect gives them to the CNN. Both detectors run in this one process, one photo at a time, torch on one
thread as detect's workers set it. A dlib box is matched to the port's box of highest IoU; reported: dlib's
boxes, those matched at IoU >= 0.9 and identical, the largest score difference of a matched pair, the port's
boxes that match no dlib box, and the CPU-seconds a photo.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MATCH_IOU = 0.9


def photos(shared: Path, every: int) -> dict[str, list[Path]]:
    """The photos of each set compared."""
    data = shared / "data"
    return {
        "group_photos": sorted((data / "group_photos" / "images").iterdir()),
        "celeba_wild": sorted((data / "celeba_wild" / "images").rglob("*.jpg"))[::every],
        "lfw": sorted((data / "lfw" / "images").rglob("*.jpg"))[::every],
    }


def compare(reference: list[tuple], port: list[tuple]) -> dict:
    """How the port's (left, top, right, bottom, score) boxes match dlib's on one photo."""
    from facepipe.detectors import box_iou

    def xywh(box):
        return box[0], box[1], box[2] - box[0] + 1, box[3] - box[1] + 1

    matched, identical, score_gap, used = 0, 0, 0.0, set()
    for box in reference:
        ious = [box_iou(xywh(box), xywh(other)) for other in port]
        best = int(np.argmax(ious)) if ious else None
        if best is not None and ious[best] >= MATCH_IOU:
            matched += 1
            identical += tuple(box[:4]) == tuple(port[best][:4])
            score_gap = max(score_gap, abs(box[4] - port[best][4]))
            used.add(best)
    return {
        "dlib": len(reference),
        "matched": matched,
        "identical": identical,
        "score_gap": score_gap,
        "extra": len(port) - len(used),
    }


def main() -> None:
    import dlib
    import torch

    from facepipe.detectors import scaled_down
    from facepipe.images import load_image_rgb
    from facepipe.models import model_file
    from facepipe.models.dlib_mmod import MMOD_FILE, default_mmod

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--upsample", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    torch.set_num_threads(1)
    reference, port = dlib.cnn_face_detection_model_v1(str(model_file(MMOD_FILE))), default_mmod()
    print(
        "| set | upsample | photos | dlib's boxes | matched (IoU >= 0.9) | identical | largest score difference "
        "| port's boxes dlib lacks | dlib CPU-s a photo | port CPU-s a photo | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, paths in photos(args.shared, args.every).items():
        images = [scaled_down(load_image_rgb(path), args.max_side)[0] for path in paths]
        for upsample in args.upsample:
            rows, dlib_cpu, port_cpu = [], 0.0, 0.0
            for rgb in images:
                started = time.process_time()
                theirs = [
                    (d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), d.confidence)
                    for d in reference(rgb, upsample)
                ]
                dlib_cpu += time.process_time() - started
                started = time.process_time()
                ours = port.detect(rgb, upsample)
                port_cpu += time.process_time() - started
                rows.append(compare(theirs, ours))
            total = {key: sum(row[key] for row in rows) for key in ("dlib", "matched", "identical", "extra")}
            gap = max(row["score_gap"] for row in rows)
            print(
                f"| {name} | {upsample} | {len(images)} | {total['dlib']} | {total['matched']} | {total['identical']} "
                f"| {gap:.1e} | {total['extra']} | {dlib_cpu / len(images):.3f} | {port_cpu / len(images):.3f} "
                f"| {dlib_cpu / port_cpu:.1f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
