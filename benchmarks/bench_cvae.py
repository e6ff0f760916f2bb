"""train-cvae / generate on LFW: CPU epoch time and peak memory, and the identity fidelity of the aggregated faces.

    python benchmarks/bench_cvae.py timing   [--work DIR] [--sizes 64 128] [--epochs 2] [--identity-weight 1000]
    python benchmarks/bench_cvae.py fidelity [--work DIR] [--image-size 64] [--epochs 40] [--beta 0.1] [--lr 1e-3]
                                             [--mean-anchor 1] [--detail-weight 0] [--identity-weight 1000]
                                             [--data lfw] [--people N] [--align dlib5|none]
                                             [--face-mask landmarks|none] [--decoder-base mean|none]
                                             [--draw-identity 1] [--jitter 1] [--identity-blur S]
                                             [--adversarial-weight W] [--free-bits B]
                                             [--identity-views V] [--anchor-blur S] [--temperature 1]
                                             [--results CLUSTER_RESULTS]
                                             [--judge-dir ../judge]
    python benchmarks/bench_cvae.py dense-alignment [--data lfw] [--people N] [--image-size 64]

Both first prepare, once, in DIR (default benchmarks/out/cvae/<data>[_N], git-ignored): the crops of
../shared/data/<data> (or of N people not in assets/samples, ``--people``; detect, minNeighbors 5, largest face only), their dlib-resnet128 embeddings, and
a cluster_results.csv whose clusters are the manifest identities (what a perfect cluster stage gives).
``timing`` trains each size for a few epochs (train-cvae's defaults otherwise) in a child process and reports
seconds per epoch and the child's peak RSS; ``dense-alignment`` measures what a dense warp onto the pixel
mean would add to its sharpness (``dense_alignment``); ``fidelity`` trains, runs generate --evaluate and prints
fidelity.json's summary (dlib's fidelity of the CVAE faces, the pixel means and the random draws, their
sharpness, the spread of the draws and a KID in dlib's embedding), the fidelity in views the identity term did not optimise (``fidelity_in_other_views``), and, where
the judge's files are in ``--judge-dir``, the fidelity by an independent judge (``judge_faceres.py``: a model
facepipe never trains against) of the CVAE faces, the pixel means and the random draws, the spread of the
draws in its descriptors and KID to the real crops in them. Both score against
centroids of the crops framed as the run trained on them (landmark-aligned, or whole). ``--results`` trains on
a clustering made elsewhere instead (e.g. the sample run's: ``--results runs/samples/cluster_results.csv
--epochs 60 --work benchmarks/out/cvae/samples``).
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

from facepipe.settings import DECODER_BASES, GenerateSettings, TrainSettings

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def chosen_people(data: str, people: int) -> list[str]:
    """``people`` identities of a shared data set drawn at random (seed 0) among those not in assets/samples
    (unseen by the sample run), or all of them for 0."""
    import numpy as np

    identities = sorted(pd.read_csv(DATA / data / "manifest.csv")["identity"].astype(str).unique())
    if not people:
        return identities
    seen = set(pd.read_csv(REPO / "assets" / "samples" / "manifest.csv")["identity"].astype(str))
    unseen = [identity for identity in identities if identity not in seen]
    return sorted(np.random.default_rng(0).choice(unseen, size=people, replace=False).tolist())


def prepare(data: str, work: Path, people: int = 0) -> Path:
    """Crops, embeddings and identity clusters of a shared data set (``people`` of its identities: see
    ``chosen_people``); returns the cluster_results.csv path."""
    from facepipe.detect import DetectorParams, detect
    from facepipe.embed import embed
    from facepipe.formats import DETECTIONS_CSV, read_csv, sidecar_path, write_json_atomic
    from facepipe.labels import attach_labels

    crops, embeddings, results = work / "crops", work / "image_features.csv", work / "cluster_results.csv"
    if not results.is_file():
        folders = (
            [DATA / data / "images"]
            if not people
            else [DATA / data / "images" / person for person in chosen_people(data, people)]
        )
        detect(folders, crops, DetectorParams(detector="haar", min_neighbors=5, largest_only=True), workers=2)
        embed(crops, embeddings, model="dlib-resnet128", workers=2)
        names = read_csv(crops / DETECTIONS_CSV)["crop"].astype(str).tolist()
        labels = attach_labels(names, DATA / data / "manifest.csv", crops)
        labels = labels[labels["matched"]]
        identities = sorted(labels["identity"].unique())
        frame = pd.DataFrame(
            {"name": labels["name"], "cluster": labels["identity"].map(identities.index), "distance": 0.0}
        )
        frame.to_csv(results, index=False)
        write_json_atomic(
            sidecar_path(results),
            {
                "crops_dir": str(crops),
                "embeddings": str(embeddings),
                "model": "dlib-resnet128",
                "k": len(identities),
                "note": "clusters = manifest identities (benchmark)",
            },
        )
    return results


def train_child(results: str, weights: str, image_size: int, epochs: int, identity_weight: float) -> None:
    """Runs in a child process so that its peak RSS is the training's own."""
    from facepipe.cvae import train_cvae

    summary = train_cvae(
        results,
        TrainSettings(image_size=image_size, epochs=epochs, device="cpu", identity_weight=identity_weight),
        weights_dir=weights,
        force=True,
        show_progress=False,
    )
    log = pd.read_csv(Path(weights) / "cvae_log.csv")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "crops": summary.train_count + summary.val_count,
                "train": summary.train_count,
                "epoch_seconds": log["seconds"].tolist(),
                "peak_rss_mib": peak_mib,
            }
        )
    )


def timing(args) -> None:
    import torch

    results = prepare(args.data, args.work, args.people)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| image size | identity weight | crops (train) | seconds per epoch (median) | peak RSS (MiB) |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "_train",
                str(results),
                str(args.work / f"weights_{size}"),
                str(size),
                str(args.epochs),
                str(args.identity_weight),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        seconds = sorted(row["epoch_seconds"])[len(row["epoch_seconds"]) // 2]
        print(
            f"| {size} | {args.identity_weight:g} | {row['crops']} ({row['train']}) | {seconds:.1f} "
            f"| {row['peak_rss_mib']:.0f} |"
        )


def fidelity(args) -> None:
    from facepipe.cvae import train_cvae
    from facepipe.generate import generate

    results = args.results or prepare(args.data, args.work, args.people)
    weights = args.work / (
        f"weights_fidelity_{args.image_size}_{args.align}{args.align_padding:g}_mask{args.face_mask}"
        f"_beta{args.beta:g}_detail{args.detail_weight:g}"
        f"_lr{args.lr:g}_anchor{args.mean_anchor:g}_identity{args.identity_weight:g}"
        f"_draws{args.draw_identity:g}_jitter{args.jitter:g}_blur{args.identity_blur:g}"
        f"_adversarial{args.adversarial_weight:g}_freebits{args.free_bits:g}_views{args.identity_views:g}"
        f"_anchorblur{args.anchor_blur:g}"
        f"_base{args.decoder_base}{args.base_crops}{'' if args.base_channels == 32 else f'_c{args.base_channels}'}_e{args.epochs}{f'_seed{args.seed}' if args.seed else ''}"
    )
    started = time.perf_counter()
    summary = train_cvae(
        results,
        TrainSettings(
            image_size=args.image_size,
            epochs=args.epochs,
            align=args.align,
            align_padding=args.align_padding,
            face_mask=args.face_mask,
            draw_identity=args.draw_identity,
            identity_jitter=args.jitter,
            identity_blur=args.identity_blur,
            adversarial_weight=args.adversarial_weight,
            free_bits=args.free_bits,
            anchor_blur=args.anchor_blur,
            identity_views=args.identity_views,
            decoder_base=args.decoder_base,
            base_crops=args.base_crops,
            base_channels=args.base_channels,
            batch_size=args.batch_size,
            beta=args.beta,
            mean_anchor=args.mean_anchor,
            detail_weight=args.detail_weight,
            identity_weight=args.identity_weight,
            learning_rate=args.lr,
            seed=args.seed,
        ),
        weights_dir=weights,
        resume=True,
    )
    print(summary.line(), f"(wall {time.perf_counter() - started:.0f}s)")
    faces_dir = args.work / f"inference_{weights.name}_t{args.temperature:g}"
    report = generate(weights, out_dir=faces_dir, samples=4, temperature=args.temperature, evaluate=True)
    print(report.line())
    metrics = report.fidelity
    epoch_seconds = sorted(pd.read_csv(weights / "cvae_log.csv")["seconds"])
    print(
        json.dumps(
            {
                "data": args.data,
                "people": args.people,
                "image_size": args.image_size,
                "epochs": args.epochs,
                "align": args.align,
                "align_padding": args.align_padding,
                "face_mask": args.face_mask,
                "beta": args.beta,
                "lr": args.lr,
                "mean_anchor": args.mean_anchor,
                "detail_weight": args.detail_weight,
                "identity_weight": args.identity_weight,
                "draw_identity": args.draw_identity,
                "identity_blur": args.identity_blur,
                "adversarial_weight": args.adversarial_weight,
                "free_bits": args.free_bits,
                "anchor_blur": args.anchor_blur,
                "identity_views": args.identity_views,
                "temperature": args.temperature,
                "jitter": args.jitter,
                "decoder_base": args.decoder_base,
                "base_crops": args.base_crops,
                "median_epoch_seconds": epoch_seconds[len(epoch_seconds) // 2],
                "dlib": {kind: metrics[kind] for kind in ("cvae", "pixel_mean", "random_draws")},
                "sharpness": {k: v for k, v in metrics["sharpness"].items() if k != "measure"},
                "draw_diversity": {k: v for k, v in metrics["draw_diversity"].items() if k.endswith("relative")},
                "realism_dlib": {k: v for k, v in metrics["realism"].items() if k != "measure"},
                "other_views": fidelity_in_other_views(results, weights, faces_dir, args.seed),
                "judge": fidelity_by_judge(results, weights, faces_dir, args.judge_dir),
                "clusters": metrics["clusters_evaluated"],
            }
        )
    )


def dense_alignment(args) -> None:
    """Would a dense warp sharpen the pixel mean? Each cluster's 5-point-aligned crops are warped onto their
    current pixel mean by OpenCV's DIS optical flow (found at the image size, applied to the crop aligned at 4x
    that size, then area-averaged, so the warp itself blurs little), iterated; printed: the sharpness
    (``laplacian_sharpness``) of the mean and of the warped crops, relative to the median of the crops."""
    import cv2
    import numpy as np

    from facepipe.crops import CropAligner, load_crops, read_training_inputs
    from facepipe.face_measures import laplacian_sharpness

    inputs = read_training_inputs(prepare(args.data, args.work, args.people))
    size, scale = args.image_size, 4
    aligner = CropAligner(inputs.crops_dir, args.align_padding)
    small = load_crops(inputs.names, inputs.crops_dir, size, False, aligner)
    large = load_crops(inputs.names, inputs.crops_dir, size * scale, False, aligner)
    x, y = np.meshgrid(np.arange(size * scale, dtype=np.float32), np.arange(size * scale, dtype=np.float32))
    flow_finder = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def warped(target, crop, crop_large):
        grey = [cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) for image in (target, crop)]
        flow = cv2.resize(cv2.GaussianBlur(flow_finder.calc(*grey, None), (0, 0), 1.0), (size * scale,) * 2) * scale
        face = cv2.remap(
            crop_large, x + flow[..., 0], y + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        return cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)

    print("| iterations | pixel mean / crops | warped crops / crops |\n|---|---|---|")
    for iterations in (0, 1, 3):
        means, crops = [], []
        for cluster in np.unique(inputs.clusters):
            rows = inputs.clusters == cluster
            reference = np.median(laplacian_sharpness(small[rows]))
            current, mean = small[rows], small[rows].mean(axis=0)
            for _ in range(iterations):
                target = (mean + 0.5).astype(np.uint8)
                current = np.stack([warped(target, c, l) for c, l in zip(small[rows], large[rows])])
                mean = current.mean(axis=0)
            means.append(laplacian_sharpness((mean + 0.5).astype(np.uint8)[None])[0] / reference)
            crops.append(np.median(laplacian_sharpness(current)) / reference)
        print(f"| {iterations} | {np.mean(means):.3f} | {np.mean(crops):.3f} |")


def crops_as_trained(results: Path, weights: Path):
    """The training inputs of the run in ``weights`` and all their crops at the crops' own size, aligned as that
    run aligned them (landmark-aligned, or whole): what the generated faces are compared with."""
    from facepipe.crops import load_crops, read_training_inputs
    from facepipe.cvae import CVAEConfig, crop_aligner, find_checkpoint, load_checkpoint
    from facepipe.images import load_image_rgb

    inputs = read_training_inputs(results)
    config = CVAEConfig.from_dict(load_checkpoint(find_checkpoint(weights))["config"])
    aligner = crop_aligner(config, inputs.crops_dir, weights)
    side = load_image_rgb(inputs.crops_dir / inputs.names[0]).shape[0]
    return inputs, load_crops(inputs.names, inputs.crops_dir, side, False, aligner), aligner


def fidelity_by_judge(results: Path, weights: Path, faces_dir: Path, judge_dir: Path) -> dict | None:
    """By faceres (``judge_faceres.py``), never used in training: how many clusters' CVAE face, pixel mean and
    random draws are nearest (cosine) their own cluster's centroid of crop descriptors (crops aligned as the
    run aligned them, unmasked), and the mean cosine to it; how much the draws of a cluster differ in its
    descriptors (mean 1 - cosine between two draws) beside its crops, and KID (``face_measures``) in its
    descriptors between the CVAE faces and draws and the real crops, and between the pixel means and the crops,
    with the counts; None when the judge's files are not in ``judge_dir``."""
    import numpy as np
    from judge_faceres import GRAPH_FILE, FaceresJudge

    from facepipe.face_measures import kernel_distance, pairwise_cosine_distance, relative
    from facepipe.formats import generated_face_names
    from facepipe.images import load_image_rgb

    if not (judge_dir / GRAPH_FILE).is_file():
        return None
    judge = FaceresJudge(judge_dir)
    inputs, crops, _ = crops_as_trained(results, weights)
    clusters = sorted(int(c) for c in np.unique(inputs.clusters))
    crops = judge.describe(list(crops))
    centroids = np.stack([crops[inputs.clusters == c].mean(axis=0) for c in clusters])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    scores, described = {}, {}
    for kind in ("face", "mean", "samples"):
        images, owners = [], []
        for position, cluster in enumerate(clusters):
            picture = load_image_rgb(faces_dir / generated_face_names(cluster)[kind])
            side = picture.shape[0]
            tiles = [picture[:, i : i + side] for i in range(0, picture.shape[1], side)]
            images += tiles
            owners += [position] * len(tiles)
        described[kind] = judge.describe(images)
        similarity = described[kind] @ centroids.T
        owners = np.array(owners)
        nearest = similarity.argmax(axis=1) == owners
        scores[{"face": "cvae", "mean": "pixel_mean", "samples": "random_draws"}[kind]] = {
            "nearest_own": int(nearest.sum()),
            "of": len(owners),
            "mean_cosine_to_own": float(similarity[np.arange(len(owners)), owners].mean()),
        }
        if kind == "samples":
            scores["draw_spread_relative"] = relative(
                [pairwise_cosine_distance(described[kind][owners == p]) for p in range(len(clusters))],
                [pairwise_cosine_distance(crops[inputs.clusters == c]) for c in clusters],
            )
    generated = np.concatenate([described["face"], described["samples"]])
    scores["kid"] = {
        "cvae_and_draws": kernel_distance(generated, crops),
        "cvae_and_draws_count": len(generated),
        "pixel_mean": kernel_distance(described["mean"], crops),
        "pixel_mean_count": len(described["mean"]),
        "crops_count": len(crops),
    }
    return scores


def fidelity_in_other_views(results: Path, weights: Path, faces_dir: Path, seed: int) -> dict:
    """Fidelity by dlib (CVAE, pixel means) of generate's faces in views the identity term never optimised: the
    faces JPEG-compressed (quality 75), blurred (Gaussian, sigma 0.7 px), with noise (sigma 3 grey levels);
    against centroids of the validation crops only; and embedded whole (``--dlib-crop whole``: no landmark
    alignment, against whole-crop centroids). Centroids come from the crops aligned as the run aligned them."""
    import io

    import cv2
    import numpy as np
    from PIL import Image

    from facepipe.cvae import split_train_validation
    from facepipe.formats import generated_face_names
    from facepipe.generate import identity_fidelity
    from facepipe.identity import at_crop_size
    from facepipe.images import load_image_rgb
    from facepipe.models.registry import load_embedder

    inputs, crops, aligner = crops_as_trained(results, weights)
    clusters = sorted(int(c) for c in np.unique(inputs.clusters))
    margin = 0.2 if aligner is None else aligner.padding
    embedders = {
        crop: load_embedder("dlib-resnet128", device="cpu", face_margin=margin, dlib_crop=crop, show_progress=False)
        for crop in ("aligned", "whole")
    }
    crop_vectors = {crop: embedder.embed(list(crops)) for crop, embedder in embedders.items()}
    _, val_rows = split_train_validation(np.searchsorted(clusters, inputs.clusters), 0.1, seed)

    def centroids(vectors, rows):
        unit = vectors[rows] / np.linalg.norm(vectors[rows], axis=1, keepdims=True)
        means = np.stack([unit[inputs.clusters[rows] == c].mean(axis=0) for c in clusters])
        return means / np.linalg.norm(means, axis=1, keepdims=True)

    def jpeg(rgb):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, "JPEG", quality=75)
        return np.asarray(Image.open(buffer).convert("RGB"))

    noise = np.random.default_rng(seed)
    every = np.arange(len(inputs.names))
    changes = {
        "jpeg75": jpeg,
        "blur0.7": lambda rgb: cv2.GaussianBlur(rgb, (0, 0), 0.7),
        "noise3": lambda rgb: np.clip(rgb + noise.normal(0, 3, rgb.shape), 0, 255).astype(np.uint8),
    }
    views = {name: (change, "aligned", every) for name, change in changes.items()}
    views["val_centroids"] = (None, "aligned", val_rows)
    views["whole_crop"] = (None, "whole", every)
    scores = {}
    for view, (change, crop, rows) in views.items():
        for kind in ("face", "mean"):
            faces = [load_image_rgb(faces_dir / generated_face_names(c)[kind]) for c in clusters]
            faces = at_crop_size([change(rgb) if change else rgb for rgb in faces], inputs.crops_dir, inputs.names[0])
            correct = identity_fidelity(
                embedders[crop].embed(faces), clusters, clusters, centroids(crop_vectors[crop], rows)
            )["correct"]
            scores.setdefault(view, {})["cvae" if kind == "face" else "pixel_mean"] = correct
    return scores


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_train":
        train_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["timing", "fidelity", "dense-alignment"])
    parser.add_argument("--data", default="lfw")
    parser.add_argument(
        "--people",
        type=int,
        default=0,
        help="this many identities not in assets/samples, drawn at random (seed 0); 0: all",
    )
    parser.add_argument("--work", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--beta", type=float, default=TrainSettings.beta)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--mean-anchor", type=float, default=TrainSettings.mean_anchor)
    parser.add_argument("--detail-weight", type=float, default=0.0)
    parser.add_argument("--identity-weight", type=float, default=1000.0)
    parser.add_argument("--align", default="dlib5", choices=["dlib5", "none"])
    parser.add_argument("--align-padding", type=float, default=0.5)
    parser.add_argument("--face-mask", default="landmarks", choices=["landmarks", "none"])
    parser.add_argument("--draw-identity", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=GenerateSettings.temperature)
    parser.add_argument("--jitter", type=float, default=1.0)
    parser.add_argument(
        "--identity-blur",
        type=float,
        default=TrainSettings.identity_blur,
        help="sigma (pixels of a 64-px face) of the blur the identity term sees the faces through",
    )
    parser.add_argument(
        "--adversarial-weight",
        type=float,
        default=TrainSettings.adversarial_weight,
        help="weight of the patch discriminator's term (TrainSettings.adversarial_weight)",
    )
    parser.add_argument(
        "--free-bits",
        type=float,
        default=TrainSettings.free_bits,
        help="KL floor in nats per latent dimension (TrainSettings.free_bits)",
    )
    parser.add_argument(
        "--anchor-blur",
        type=float,
        default=TrainSettings.anchor_blur,
        help="sigma (pixels of a 64-px face) the mean anchor compares the face and the mean at (TrainSettings.anchor_blur)",
    )
    parser.add_argument(
        "--identity-views",
        type=float,
        default=TrainSettings.identity_views,
        help="strength of the blurred and noisy views the identity term sees (TrainSettings.identity_views)",
    )
    parser.add_argument("--results", type=Path, help="a cluster_results.csv to train on instead of --data's")
    parser.add_argument("--decoder-base", default=TrainSettings.decoder_base, choices=DECODER_BASES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-crops", type=int, default=TrainSettings.base_crops)
    parser.add_argument("--base-channels", type=int, default=TrainSettings.base_channels)
    parser.add_argument(
        "--judge-dir",
        type=Path,
        default=REPO.parent / "judge",
        help="folder with faceres.json and faceres.bin (see judge_faceres.py)",
    )
    args = parser.parse_args()
    args.work = args.work or REPO / "benchmarks" / "out" / "cvae" / (
        args.data + (f"_{args.people}" if args.people else "")
    )
    args.work.mkdir(parents=True, exist_ok=True)
    if args.mode == "timing":
        args.epochs = args.epochs or 2
        timing(args)
    elif args.mode == "dense-alignment":
        dense_alignment(args)
    else:
        args.epochs = args.epochs or 40
        fidelity(args)


if __name__ == "__main__":
    main()
