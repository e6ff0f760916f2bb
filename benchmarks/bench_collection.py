"""A real mixed photo collection end to end: facepipe's stages with their defaults beside face_recognition's recipe.

    python benchmarks/bench_collection.py [--shared ../shared] [--out benchmarks/out/collection] [--detectors [--every N]]

The collection, built from ../shared/data: celeba_wild (300 unaligned photos of 10 people, often with
several faces; the manifest names the main face's person), lfw_singletons (150 people with one photo
each: strangers) and the 5 photos of group_photos with no human face. Each pipeline runs in a fresh
process (so its peak memory is its own) over the same list of photos:

- facepipe: ``detect`` (its defaults, 2 workers as in ``facepipe run``), ``embed --model dlib-resnet128``,
  ``cluster`` (its defaults);
- facepipe, the old defaults: ``detect --detector haar`` and ``cluster --method kmeans`` (auto k 2..40);
- face_recognition's recipe, written here on dlib's own API as face_recognition calls it: HOG detector
  upsampled once, 5-point landmarks, dlib's ResNet (``compute_face_descriptor``), then
  ``dlib.chinese_whispers_clustering`` at 0.5; 2 processes for the per-photo work, as ``--cpus 2``.

Scored per pipeline: the share of labelled photos (celeba_wild) where a face was found; end-to-end BCubed
precision / recall / F over the labelled photos, each photo represented by its largest face (a photo
without a face, or whose face is unknown, is a group of its own); the share of one-off people whose
largest face landed in a labelled person's group (a group holding the largest face of a labelled photo);
faces found on the no-face photos; photos/s over the whole pipeline; peak memory (RSS, all processes).

``--detectors`` also runs each detector alone (facepipe's, 2 workers, and face_recognition's HOG, 2 processes),
face by face: the annotated faces of group_photos/faces.csv (dlib's boxes of the 43 faces of its 9 group photos)
found at IoU >= 0.3; on the collection's photos (every ``--every``-th), the faces that any of haar, dlib-hog
and dlib-cnn finds alone (overlapping boxes counted once) found; faces on the no-face photos; photos/s, peak
memory.

``--cpu-every N`` also compares CPU-seconds in one process on every N-th labelled and one-off photo:
facepipe's detect and embed against face_recognition's recipe (steadier than photos/s on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
NO_FACE_PHOTOS = [
    "dlib_dogs.jpg",
    "insightface_mask_black.jpg",
    "insightface_mask_blue.jpg",
    "insightface_mask_green.jpg",
    "insightface_mask_white.jpg",
]
PIPELINES = ("facepipe", "facepipe-old-defaults", "face_recognition")


def build_collection(shared: Path) -> pd.DataFrame:
    """One row per photo: path, identity (None for the no-face photos), kind (labelled / one-off / no-face)."""
    rows = []
    for name, kind in (("celeba_wild", "labelled"), ("lfw_singletons", "one-off")):
        manifest = pd.read_csv(shared / "data" / name / "manifest.csv")
        for relpath, identity in zip(manifest["relpath"], manifest["identity"]):
            rows.append(
                {
                    "path": str((shared / "data" / name / relpath).resolve()),
                    "identity": f"{name}:{identity}",
                    "kind": kind,
                }
            )
    for photo in NO_FACE_PHOTOS:
        rows.append(
            {
                "path": str((shared / "data" / "group_photos" / "images" / photo).resolve()),
                "identity": None,
                "kind": "no-face",
            }
        )
    return pd.DataFrame(rows)


def run_facepipe(photos: list[str], out: Path, old_defaults: bool) -> pd.DataFrame:
    """detect -> embed (dlib-resnet128) -> cluster with the stage defaults; one row per face: path, area, group."""
    from facepipe.cluster import cluster
    from facepipe.detect import DetectorParams, detect
    from facepipe.embed import embed
    from facepipe.settings import ClusterSettings

    listing = out / "photos.txt"
    listing.write_text("\n".join(photos) + "\n", encoding="utf-8")
    params = DetectorParams(detector="haar") if old_defaults else DetectorParams()
    detect([listing], out / "crops", params, workers=2, force=True, show_progress=False)
    embed(out / "crops", out / "features.csv", model="dlib-resnet128", force=True, show_progress=False)
    cluster(
        out / "features.csv",
        out,
        ClusterSettings(method="kmeans" if old_defaults else "auto"),
        samples_dir=None,
        force=True,
        show_progress=False,
    )
    detections = pd.read_csv(out / "crops" / "detections.csv")
    groups = pd.read_csv(out / "cluster_results.csv").set_index("name")["cluster"]
    return pd.DataFrame(
        {
            "path": detections["source"],
            "area": detections["w"] * detections["h"],
            "group": groups.reindex(detections["crop"]).to_numpy(),
        }
    )


_recipe: dict = {}


def _recipe_init() -> None:
    import dlib

    from facepipe.models.dlib_resnet import LANDMARKS_FILE, RESNET_FILE, model_file

    _recipe.update(
        detector=dlib.get_frontal_face_detector(),
        landmarks=dlib.shape_predictor(str(model_file(LANDMARKS_FILE))),
        encoder=dlib.face_recognition_model_v1(str(model_file(RESNET_FILE))),
    )


def _recipe_photo(path: str) -> list[tuple[str, int, np.ndarray]]:
    """face_recognition.face_locations(image, 1) + face_encodings(image, locations) (model "small")."""
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"))
    faces = []
    for rect in _recipe["detector"](image, 1):
        shape = _recipe["landmarks"](image, rect)
        descriptor = np.asarray(_recipe["encoder"].compute_face_descriptor(image, shape, 0))
        faces.append((path, int(rect.width() * rect.height()), descriptor))
    return faces


def run_face_recognition(photos: list[str], out: Path) -> pd.DataFrame:
    """face_recognition's recipe over 2 processes, then dlib's Chinese whispers at 0.5."""
    import dlib

    with get_context("fork").Pool(2, initializer=_recipe_init) as pool:
        faces = [face for found in pool.imap(_recipe_photo, photos, chunksize=4) for face in found]
    labels = dlib.chinese_whispers_clustering([dlib.vector(f[2].tolist()) for f in faces], 0.5)
    sizes = pd.Series(labels).value_counts()
    groups = [label if sizes[label] > 1 else -1 for label in labels]  # a face alone is a face matching no one
    return pd.DataFrame({"path": [f[0] for f in faces], "area": [f[1] for f in faces], "group": groups})


def score(collection: pd.DataFrame, faces: pd.DataFrame) -> dict:
    """The benchmark's figures for one pipeline's faces (see the module docstring)."""
    from facepipe.cluster_metrics import bcubed

    main = faces.sort_values("area", ascending=False).drop_duplicates("path").set_index("path")["group"]
    photos = collection.assign(group=main.reindex(collection["path"]).to_numpy())
    labelled = photos[photos["kind"] == "labelled"].reset_index(drop=True)
    found = labelled["group"].notna()
    # a photo with no face or an unknown face is a group of its own
    predicted = [
        f"group {int(g)}" if pd.notna(g) and g >= 0 else f"alone {i}" for i, g in enumerate(labelled["group"])
    ]
    metrics = bcubed(labelled["identity"].tolist(), predicted)
    labelled_groups = {int(g) for g in labelled["group"].dropna() if g >= 0}
    one_off = photos[(photos["kind"] == "one-off") & photos["group"].notna()]
    no_face = faces[faces["path"].isin(collection.loc[collection["kind"] == "no-face", "path"])]
    return {
        "labelled_found": float(found.mean()),
        "bcubed_precision": metrics["precision"],
        "bcubed_recall": metrics["recall"],
        "bcubed_f": metrics["f"],
        "one_off_in_labelled_group": float(one_off["group"].isin(labelled_groups).mean()),
        "one_off_found": len(one_off),
        "no_face_faces": len(no_face),
        "faces": len(faces),
    }


def face_clustering(collection: pd.DataFrame, faces: pd.DataFrame) -> dict:
    """Clustering scored by faces, not photos: BCubed over the faces with a known identity (the largest face
    of each labelled photo, and of each one-off photo, a one-off person being an identity of one face; photos
    where no face was found are left out, as detect's share), and the share of the one-off people found whose
    face is in a group that holds a labelled person's face."""
    from facepipe.cluster_metrics import bcubed

    main = faces.sort_values("area", ascending=False).drop_duplicates("path")
    known = main.merge(collection[collection["kind"] != "no-face"], on="path")
    predicted = [f"group {int(g)}" if g >= 0 else f"alone {i}" for i, g in enumerate(known["group"])]
    metrics = bcubed(known["identity"].tolist(), predicted)
    people_groups = set(known.loc[(known["kind"] == "labelled") & (known["group"] >= 0), "group"])
    strangers = known.loc[known["kind"] == "one-off", "group"]
    return {
        "face_bcubed_precision": metrics["precision"],
        "face_bcubed_recall": metrics["recall"],
        "face_bcubed_f": metrics["f"],
        "strangers_in_people_groups": int(strangers.isin(people_groups).sum()),
        "one_off_faces": len(strangers),
    }


def print_face_clustering(rows: list[dict]) -> None:
    """The table of ``face_clustering``'s figures, a row per pipeline."""
    print(
        "\n| pipeline | faces with a known identity: BCubed P | R | F | one-off people in a labelled person's group |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['pipeline']} | {r['face_bcubed_precision']:.3f} | {r['face_bcubed_recall']:.3f} "
            f"| **{r['face_bcubed_f']:.3f}** | {r['strangers_in_people_groups']} of {r['one_off_faces']} "
            f"({r['strangers_in_people_groups'] / max(1, r['one_off_faces']):.1%}) |"
        )


def run_one(pipeline: str, collection_csv: Path, out: Path) -> None:
    """Run one pipeline (in this process) and print its figures as JSON."""
    collection = pd.read_csv(collection_csv)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    photos = collection["path"].tolist()
    if pipeline == "face_recognition":
        faces = run_face_recognition(photos, out)
    else:
        faces = run_facepipe(photos, out, old_defaults=pipeline == "facepipe-old-defaults")
    seconds = time.perf_counter() - started
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    figures = score(collection, faces)
    figures.update(face_clustering(collection, faces))
    figures.update(
        pipeline=pipeline,
        photos=len(photos),
        seconds=seconds,
        photos_per_s=len(photos) / seconds,
        peak_rss_mib=max(own.ru_maxrss, children.ru_maxrss) / 1024,
    )
    print(json.dumps(figures))


def _recipe_boxes(path: str) -> tuple[str, list[list[int]]]:
    """face_recognition.face_locations(image, 1): dlib's HOG upsampled once on the full photo, boxes (x, y, w, h)."""
    from PIL import Image

    rects = _recipe["detector"](np.asarray(Image.open(path).convert("RGB")), 1)
    return path, [[r.left(), r.top(), r.width(), r.height()] for r in rects]


def detect_one(detector: str, photos_file: Path, out: Path) -> None:
    """One detector alone (2 processes) over the listed photos, in this process; prints its boxes per photo, its
    seconds and peak memory as JSON. ``detector`` is one of facepipe's or "face_recognition" (the recipe's HOG)."""
    from facepipe.detect import DetectorParams, detect

    photos = photos_file.read_text(encoding="utf-8").splitlines()
    started = time.perf_counter()
    if detector == "face_recognition":
        with get_context("fork").Pool(2, initializer=_recipe_init) as pool:
            boxes = dict(pool.imap(_recipe_boxes, photos, chunksize=4))
    else:
        detect([photos_file], out, DetectorParams(detector=detector), workers=2, force=True, show_progress=False)
        detections = pd.read_csv(out / "detections.csv")
        boxes = {path: [] for path in photos}
        for path, rows in detections.groupby("source"):
            boxes[path] = rows[["x", "y", "w", "h"]].to_numpy().tolist()
    seconds = time.perf_counter() - started
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        json.dumps(
            {
                "detector": detector,
                "seconds": seconds,
                "boxes": boxes,
                "peak_rss_mib": max(own.ru_maxrss, children.ru_maxrss) / 1024,
            }
        )
    )


def matched_faces(targets: list, found: list) -> int:
    """How many of the ``targets`` boxes a box of ``found`` overlaps at IoU >= 0.3, each found box used once."""
    from facepipe.detectors import box_iou

    free, count = list(found), 0
    for target in targets:
        best = max(free, key=lambda box: box_iou(target, box), default=None)
        if best is not None and box_iou(target, best) >= 0.3:
            free.remove(best)
            count += 1
    return count


def union_of_alone(results: dict[str, dict], photos: list[str]) -> dict[str, list]:
    """Per photo, the faces that any of facepipe's detectors finds when run alone, overlapping boxes counted once."""
    from facepipe.detectors import CNN, HAAR, HOG, Face, merge_faces

    return {
        path: [
            face.box
            for face in merge_faces(
                [[Face(tuple(box), name, 0.0) for box in results[name]["boxes"][path]] for name in (HAAR, HOG, CNN)]
            )
        ]
        for path in photos
    }


def compare_detectors(shared: Path, collection: pd.DataFrame, out: Path, every: int) -> None:
    """Each detector alone (facepipe's, its default first, and face_recognition's), face by face: the annotated
    faces of group_photos/faces.csv found, the faces that any of facepipe's detectors finds alone found on every
    ``every``-th photo of the collection, faces on the no-face photos, and what it costs (fresh process each)."""
    from facepipe.detectors import DETECTORS

    annotations = pd.read_csv(shared / "data" / "group_photos" / "faces.csv")
    annotations["path"] = [str((shared / "data" / "group_photos" / rel).resolve()) for rel in annotations["relpath"]]
    no_face = collection.loc[collection["kind"] == "no-face", "path"].tolist()
    sample = collection.loc[collection["kind"] != "no-face", "path"].tolist()[::every]
    annotated = sorted(set(annotations["path"]))
    photos_file = out / "detector-photos.txt"
    photos_file.write_text("\n".join(annotated + no_face + sample) + "\n", encoding="utf-8")
    results = {}
    for detector in (*DETECTORS, "face_recognition"):
        result = subprocess.run(
            [sys.executable, __file__, "--out", str(out), "--one-detector", detector],
            capture_output=True,
            text=True,
            env=dict(os.environ),
        )
        if result.returncode != 0:
            sys.exit(f"detector {detector} failed:\n{result.stderr}")
        results[detector] = json.loads(result.stdout.strip().splitlines()[-1])
    union = union_of_alone(results, sample)
    in_union = sum(len(faces) for faces in union.values())
    n_photos = len(annotated) + len(no_face) + len(sample)
    print(
        f"\n{n_photos} photos: the {len(annotated)} annotated group photos ({len(annotations)} faces), the "
        f"{len(no_face)} no-face photos, every {every}th other photo of the collection ({len(sample)}: "
        f"{in_union} faces that haar, dlib-hog or dlib-cnn finds alone)"
    )
    print(
        "\n| detector | annotated faces found | faces any detector finds alone, found | faces on no-face photos "
        "| seconds | photos/s | peak RSS (MiB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for detector, r in results.items():
        boxes = r["boxes"]
        found = sum(
            matched_faces(rows[["left", "top", "width", "height"]].to_numpy().tolist(), boxes[path])
            for path, rows in annotations.groupby("path")
        )
        alone = sum(matched_faces(union[path], boxes[path]) for path in sample)
        print(
            f"| {detector} | {found} of {len(annotations)} ({found / len(annotations):.1%}) "
            f"| {alone} of {in_union} ({alone / in_union:.1%}) | {sum(len(boxes[p]) for p in no_face)} "
            f"| {r['seconds']:.1f} | {n_photos / r['seconds']:.2f} | {r['peak_rss_mib']:.0f} |",
            flush=True,
        )


def cpu_per_photo(collection: pd.DataFrame, every: int) -> None:
    """CPU-seconds in one process (1 thread), which other jobs on the machine change far less than the wall
    clock: facepipe's detect (stage defaults, crops cut as detect cuts them) and dlib-resnet128 embedding
    against face_recognition's recipe (HOG upsampled once on the full photo, landmarks, dlib's descriptor),
    on every ``every``-th labelled and one-off photo."""
    import cv2
    import torch

    from facepipe.detect import DetectorParams, face_finder, square_crop
    from facepipe.detectors import find_faces
    from facepipe.images import load_image_rgb
    from facepipe.models.dlib_resnet import DlibResNet128Embedder

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    photos = collection.loc[collection["kind"] != "no-face", "path"].tolist()[::every]
    finder, embedder = face_finder(DetectorParams()), DlibResNet128Embedder(face_margin=0.2, device="cpu")
    started, crops = time.process_time(), []
    for path in photos:
        rgb = load_image_rgb(path)
        crops += [square_crop(rgb, face.box, 0.2, 224) for face in find_faces(rgb, finder, 640)]
    detect_cpu = time.process_time() - started
    started = time.process_time()
    embedder.embed(crops)
    embed_cpu = time.process_time() - started
    _recipe_init()
    started = time.process_time()
    recipe_faces = sum(len(_recipe_photo(path)) for path in photos)
    recipe_cpu = time.process_time() - started
    print(
        f"\nCPU-s in one process on {len(photos)} photos: facepipe detect {detect_cpu:.1f} ({len(crops)} faces) + "
        f"embed {embed_cpu:.1f} = {detect_cpu + embed_cpu:.1f}; face_recognition's recipe {recipe_cpu:.1f} "
        f"({recipe_faces} faces): facepipe {recipe_cpu / (detect_cpu + embed_cpu):.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "collection")
    parser.add_argument("--pipelines", nargs="*", choices=PIPELINES, default=list(PIPELINES))
    parser.add_argument("--detectors", action="store_true", help="also compare the detectors alone, face by face")
    parser.add_argument(
        "--every",
        type=int,
        default=1,
        help="--detectors: compare them on every N-th photo of the collection (default 1: all)",
    )
    parser.add_argument(
        "--cpu-every",
        type=int,
        default=0,
        help="also compare the CPU-seconds per photo in one process on every N-th photo (0: not)",
    )
    parser.add_argument("--one", choices=PIPELINES, help=argparse.SUPPRESS)
    parser.add_argument("--one-detector", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    collection_csv = args.out / "collection.csv"
    if args.one_detector:
        detect_one(args.one_detector, args.out / "detector-photos.txt", args.out / f"detect-{args.one_detector}")
        return
    if args.one:
        run_one(args.one, collection_csv, args.out / args.one)
        return
    collection = build_collection(args.shared)
    collection.to_csv(collection_csv, index=False)
    print(
        f"collection: {len(collection)} photos: "
        + ", ".join(f"{n} {k}" for k, n in collection["kind"].value_counts().items())
    )
    rows = []
    for pipeline in args.pipelines:
        result = subprocess.run(
            [sys.executable, __file__, "--shared", str(args.shared), "--out", str(args.out), "--one", pipeline],
            capture_output=True,
            text=True,
            env=dict(os.environ),
        )
        if result.returncode != 0:
            sys.exit(f"{pipeline} failed:\n{result.stderr}")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    reference = next((r for r in rows if r["pipeline"] == "face_recognition"), None)
    print(
        "\n| pipeline | labelled photos with a face | BCubed P | BCubed R | BCubed F | one-off people in a labelled "
        "group | faces on no-face photos | photos/s | vs face_recognition | peak RSS (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        speed = f"{r['photos_per_s'] / reference['photos_per_s']:.2f}x" if reference else "-"
        print(
            f"| {r['pipeline']} | {r['labelled_found']:.1%} | {r['bcubed_precision']:.3f} | {r['bcubed_recall']:.3f} "
            f"| **{r['bcubed_f']:.3f}** | {r['one_off_in_labelled_group']:.1%} | {r['no_face_faces']} "
            f"| {r['photos_per_s']:.2f} | {speed} | {r['peak_rss_mib']:.0f} |"
        )
    print_face_clustering(rows)
    if args.detectors:
        compare_detectors(args.shared, collection, args.out, args.every)
    if args.cpu_every:
        cpu_per_photo(collection, args.cpu_every)


if __name__ == "__main__":
    main()
