"""train-cvae / generate on LFW: CPU epoch time and peak memory, and the identity fidelity of the aggregated faces.

    python benchmarks/bench_cvae.py timing   [--work DIR] [--sizes 64 128] [--epochs 2] [--identity-weight 1000]
    python benchmarks/bench_cvae.py fidelity [--work DIR] [--image-size 64] [--epochs 40] [--beta 1] [--lr 1e-3]
                                             [--mean-anchor 100] [--identity-weight 1000] [--data lfw]
                                             [--judge-dir ../judge]

Both first prepare, once, in DIR (default /tmp/facepipe_bench_cvae/<data>): the crops of
../shared/data/<data> (detect, minNeighbors 5, largest face only), their dlib-resnet128 embeddings, and
a cluster_results.csv whose clusters are the manifest identities (what a perfect cluster stage gives).
``timing`` trains each size for a few epochs in a child process and reports seconds per epoch and the
child's peak RSS; ``fidelity`` trains, runs generate --evaluate and prints fidelity.json's summary, and
the fidelity in views the identity term did not optimise (``fidelity_in_other_views``), and, where the
judge's files are in ``--judge-dir``, the fidelity by an independent judge (``judge_faceres.py``: a model
facepipe never trains against) of the CVAE faces, the pixel means and the random draws.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def prepare(data: str, work: Path) -> Path:
    """Crops, embeddings and identity clusters of a shared data set; returns the cluster_results.csv path."""
    from facepipe.detect import DetectorParams, detect
    from facepipe.embed import embed
    from facepipe.formats import DETECTIONS_CSV, read_csv, sidecar_path, write_json_atomic
    from facepipe.labels import attach_labels

    crops, embeddings, results = work / "crops", work / "image_features.csv", work / "cluster_results.csv"
    if not results.is_file():
        detect([DATA / data / "images"], crops, DetectorParams(detector="haar", min_neighbors=5, largest_only=True), workers=2)
        embed(crops, embeddings, model="dlib-resnet128", workers=2)
        names = read_csv(crops / DETECTIONS_CSV)["crop"].astype(str).tolist()
        labels = attach_labels(names, DATA / data / "manifest.csv", crops)
        labels = labels[labels["matched"]]
        identities = sorted(labels["identity"].unique())
        frame = pd.DataFrame({"name": labels["name"], "cluster": labels["identity"].map(identities.index),
                              "distance": 0.0})
        frame.to_csv(results, index=False)
        write_json_atomic(sidecar_path(results), {"crops_dir": str(crops), "embeddings": str(embeddings),
                                                  "model": "dlib-resnet128", "k": len(identities),
                                                  "note": "clusters = manifest identities (benchmark)"})
    return results


def train_child(results: str, weights: str, image_size: int, epochs: int, identity_weight: float) -> None:
    """Runs in a child process so that its peak RSS is the training's own."""
    from facepipe.cvae import train_cvae

    summary = train_cvae(results, weights_dir=weights, image_size=image_size, epochs=epochs, device="cpu",
                         identity_weight=identity_weight, force=True, show_progress=False)
    log = pd.read_csv(Path(weights) / "cvae_log.csv")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"crops": summary.train_count + summary.val_count, "train": summary.train_count,
                      "epoch_seconds": log["seconds"].tolist(), "peak_rss_mib": peak_mib}))


def timing(args) -> None:
    import torch

    results = prepare(args.data, args.work)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| image size | identity weight | crops (train) | seconds per epoch (median) | peak RSS (MiB) |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        out = subprocess.run([sys.executable, __file__, "_train", str(results), str(args.work / f"weights_{size}"),
                              str(size), str(args.epochs), str(args.identity_weight)],
                             check=True, capture_output=True, text=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        seconds = sorted(row["epoch_seconds"])[len(row["epoch_seconds"]) // 2]
        print(f"| {size} | {args.identity_weight:g} | {row['crops']} ({row['train']}) | {seconds:.1f} "
              f"| {row['peak_rss_mib']:.0f} |")


def fidelity(args) -> None:
    from facepipe.cvae import train_cvae
    from facepipe.generate import generate

    results = prepare(args.data, args.work)
    weights = args.work / (f"weights_fidelity_{args.image_size}_beta{args.beta:g}_lr{args.lr:g}"
                           f"_anchor{args.mean_anchor:g}_identity{args.identity_weight:g}")
    started = time.perf_counter()
    summary = train_cvae(results, weights_dir=weights, image_size=args.image_size, epochs=args.epochs,
                         batch_size=args.batch_size, beta=args.beta, mean_anchor=args.mean_anchor,
                         identity_weight=args.identity_weight, learning_rate=args.lr,
                         seed=args.seed, resume=True)
    print(summary.line(), f"(wall {time.perf_counter() - started:.0f}s)")
    faces_dir = args.work / f"inference_{weights.name}"
    report = generate(weights, out_dir=faces_dir, samples=4, evaluate=True)
    print(report.line())
    metrics = report.fidelity
    print(json.dumps({"data": args.data, "image_size": args.image_size, "epochs": args.epochs, "beta": args.beta,
                      "lr": args.lr, "mean_anchor": args.mean_anchor,
                      "identity_weight": args.identity_weight, "cvae": metrics["cvae"],
                      "pixel_mean": metrics["pixel_mean"],
                      "mirror_symmetric_mean": mirror_symmetric_fidelity(results, args.image_size),
                      "other_views": fidelity_in_other_views(results, faces_dir, args.seed),
                      "judge": fidelity_by_judge(results, faces_dir, args.judge_dir),
                      "clusters": metrics["clusters_evaluated"]}))


def fidelity_by_judge(results: Path, faces_dir: Path, judge_dir: Path) -> dict | None:
    """By faceres (``judge_faceres.py``), never used in training: how many clusters' CVAE face, pixel mean and
    random draws are nearest (cosine) their own cluster's centroid of crop descriptors, and the mean cosine to
    it; None when the judge's files are not in ``judge_dir``."""
    import numpy as np

    from facepipe.cvae import read_training_inputs
    from facepipe.formats import generated_face_names
    from facepipe.images import load_image_rgb
    from judge_faceres import GRAPH_FILE, FaceresJudge

    if not (judge_dir / GRAPH_FILE).is_file():
        return None
    judge = FaceresJudge(judge_dir)
    inputs = read_training_inputs(results)
    clusters = sorted(int(c) for c in np.unique(inputs.clusters))
    crops = judge.describe([load_image_rgb(inputs.crops_dir / name) for name in inputs.names])
    centroids = np.stack([crops[inputs.clusters == c].mean(axis=0) for c in clusters])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    scores = {}
    for kind in ("face", "mean", "samples"):
        images, owners = [], []
        for position, cluster in enumerate(clusters):
            picture = load_image_rgb(faces_dir / generated_face_names(cluster)[kind])
            side = picture.shape[0]
            tiles = [picture[:, i:i + side] for i in range(0, picture.shape[1], side)]
            images += tiles
            owners += [position] * len(tiles)
        similarity = judge.describe(images) @ centroids.T
        owners = np.array(owners)
        nearest = similarity.argmax(axis=1) == owners
        scores[{"face": "cvae", "mean": "pixel_mean", "samples": "random_draws"}[kind]] = {
            "nearest_own": int(nearest.sum()), "of": len(owners),
            "mean_cosine_to_own": float(similarity[np.arange(len(owners)), owners].mean())}
    return scores


def mirror_symmetric_fidelity(results: Path, image_size: int) -> dict:
    """Fidelity of (pixel mean + its mirror image) / 2: what a CVAE trained with random flips converges to
    at z = 0 when z carries nothing (a large beta), so the most that route can reach."""
    import numpy as np

    from facepipe.cvae import read_training_inputs
    from facepipe.generate import evaluate_fidelity, pixel_means

    inputs = read_training_inputs(results)
    clusters = sorted(int(c) for c in np.unique(inputs.clusters))
    means, _ = pixel_means(inputs.names, inputs.clusters, clusters, inputs.crops_dir, image_size, False)
    mirrored = ((means.astype(np.float64) + means[:, :, ::-1]) / 2 + 0.5).astype(np.uint8)
    metrics = evaluate_fidelity(mirrored, means, clusters, inputs, results.parent / "image_features.csv")
    return metrics["cvae"]


def fidelity_in_other_views(results: Path, faces_dir: Path, seed: int) -> dict:
    """Fidelity (CVAE, pixel means) of generate's faces in views the identity term never optimised: the faces
    JPEG-compressed (quality 75), blurred (Gaussian, sigma 0.7 px), with noise (sigma 3 grey levels); against
    centroids of the validation crops only; and embedded as whole crops (``--dlib-crop whole``: no landmark
    alignment, against whole-crop centroids)."""
    import io

    import cv2
    import numpy as np
    from PIL import Image

    from facepipe.cvae import read_training_inputs, split_train_validation
    from facepipe.embed import embed, load_embedder_like
    from facepipe.formats import generated_face_names, read_embeddings
    from facepipe.generate import identity_fidelity
    from facepipe.identity import at_crop_size, cluster_centroids
    from facepipe.images import load_image_rgb

    inputs = read_training_inputs(results)
    clusters = sorted(int(c) for c in np.unique(inputs.clusters))
    aligned_file = results.parent / "image_features.csv"
    aligned = read_embeddings(aligned_file)
    whole_file = results.parent / "image_features_whole.csv"
    embed(inputs.crops_dir, whole_file, model="dlib-resnet128", dlib_crop="whole", workers=2, show_progress=False)
    whole = read_embeddings(whole_file)
    _, val_rows = split_train_validation(np.searchsorted(clusters, inputs.clusters), 0.1, seed)

    def jpeg(rgb):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, "JPEG", quality=75)
        return np.asarray(Image.open(buffer).convert("RGB"))

    noise = np.random.default_rng(seed)
    changes = {"jpeg75": jpeg, "blur0.7": lambda rgb: cv2.GaussianBlur(rgb, (0, 0), 0.7),
               "noise3": lambda rgb: np.clip(rgb + noise.normal(0, 3, rgb.shape), 0, 255).astype(np.uint8)}
    aligned_centroids = cluster_centroids(aligned, inputs.names, inputs.clusters)[1]
    views = {name: (change, aligned_file, aligned_centroids) for name, change in changes.items()}
    views["val_centroids"] = (None, aligned_file, cluster_centroids(aligned, [inputs.names[i] for i in val_rows],
                                                                    inputs.clusters[val_rows])[1])
    views["whole_crop"] = (None, whole_file, cluster_centroids(whole, inputs.names, inputs.clusters)[1])
    scores = {}
    for view, (change, embeddings_file, centroids) in views.items():
        embedder = load_embedder_like(read_embeddings(embeddings_file), embeddings_file, "cpu")
        for kind in ("face", "mean"):
            faces = [load_image_rgb(faces_dir / generated_face_names(c)[kind]) for c in clusters]
            faces = at_crop_size([change(rgb) if change else rgb for rgb in faces], inputs.crops_dir, inputs.names[0])
            correct = identity_fidelity(embedder.embed(faces), clusters, clusters, centroids)["correct"]
            scores.setdefault(view, {})["cvae" if kind == "face" else "pixel_mean"] = correct
    return scores


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_train":
        train_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["timing", "fidelity"])
    parser.add_argument("--data", default="lfw")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--mean-anchor", type=float, default=100.0)
    parser.add_argument("--identity-weight", type=float, default=1000.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--judge-dir", type=Path, default=REPO.parent / "judge",
                        help="folder with faceres.json and faceres.bin (see judge_faceres.py)")
    args = parser.parse_args()
    args.work = args.work or Path("/tmp/facepipe_bench_cvae") / args.data
    args.work.mkdir(parents=True, exist_ok=True)
    if args.mode == "timing":
        args.epochs = args.epochs or 2
        timing(args)
    else:
        args.epochs = args.epochs or 40
        fidelity(args)


if __name__ == "__main__":
    main()
