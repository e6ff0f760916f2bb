"""facepipe suggest against the known people of a real collection: are the right merges and groups offered first?

    python benchmarks/bench_suggest.py [--shared ../shared] [--out benchmarks/out/suggest] [--thresholds 0.37 0.33 0.30]

The collection: celeba_wild (300 photos of 10 people; the manifest names each photo's main face, taken here as
its largest) and lfw_singletons (150 strangers, one photo each), through detect (defaults), embed
(dlib-resnet128) and cluster at each same-person distance given (0.37 is the default rule; the tighter ones
split people into more groups and leave more faces unknown, so that there is something to suggest). A group's
person is the most common labelled person among its faces. Scored, per clustering:

- merges: of the group pairs that are one celeba_wild person (n pairs), the share among the top 2n merge
  suggestions (target >= 90%);
- unknown: of the labelled celeba_wild faces left unknown whose person has a group, the share whose first
  suggestion is that group (target >= 80%);
- strangers: of the lfw_singletons faces left unknown, the share whose suggestion lies beyond the clustering's
  same-person distance (target: all), and the nearest such distance.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def main_faces(out: Path, shared: Path) -> pd.Series:
    """Crop name -> "set:identity" for each photo's largest face."""
    detections = pd.read_csv(out / "crops" / "detections.csv")
    detections["area"] = detections["w"] * detections["h"]
    largest = detections.sort_values("area", ascending=False).drop_duplicates("source")
    identity = {}
    for name in ("celeba_wild", "lfw_singletons"):
        manifest = pd.read_csv(shared / "data" / name / "manifest.csv")
        for relpath, person in zip(manifest["relpath"], manifest["identity"]):
            identity[str((shared / "data" / name / relpath).resolve())] = f"{name}:{person}"
    return pd.Series(largest["source"].map(identity).to_numpy(), index=largest["crop"].to_numpy()).dropna()


def score(folder: Path, people: pd.Series, rule: float) -> dict:
    """The three figures of the module docstring for the clustering in ``folder``."""
    from facepipe.suggest import suggest

    results = pd.read_csv(folder / "cluster_results.csv")
    results["person"] = results["name"].map(people)
    grouped = results[(results["cluster"] >= 0) & results["person"].notna()]
    person_of = grouped.groupby("cluster")["person"].agg(lambda p: p.mode().iloc[0]).to_dict()
    split = {
        (a, b)
        for a in person_of
        for b in person_of
        if a < b and person_of[a] == person_of[b] and person_of[a].startswith("celeba")
    }
    offered = suggest(folder)
    merges = offered[offered["kind"] == "merge"].head(2 * len(split))
    found = {(int(a), int(b)) for a, b in zip(merges["group"], merges["other"])} & split
    first = offered[offered["kind"] == "unknown"].set_index("face")["group"]
    unknown = results[(results["cluster"] == -1) & results["person"].notna()]
    labelled = unknown[unknown["person"].str.startswith("celeba") & unknown["person"].isin(set(person_of.values()))]
    right = [person_of.get(first.get(face)) == person for face, person in zip(labelled["name"], labelled["person"])]
    strangers = unknown[unknown["person"].str.startswith("lfw")]
    gaps = offered[offered["kind"] == "unknown"].set_index("face")["distance"].reindex(strangers["name"]).dropna()
    return {
        "groups": len(person_of),
        "unknown": int((results["cluster"] == -1).sum()),
        "pairs": len(split),
        "pairs_found": len(found),
        "labelled_unknown": len(labelled),
        "first_right": sum(right),
        "strangers": len(gaps),
        "strangers_beyond": int((gaps > rule).sum()),
        "nearest_stranger": float(gaps.min()) if len(gaps) else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "suggest")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.37, 0.33, 0.30])
    args = parser.parse_args()
    from bench_collection import build_collection

    from facepipe.cluster import cluster
    from facepipe.detect import DetectorParams, detect
    from facepipe.embed import embed
    from facepipe.settings import ClusterSettings

    collection = build_collection(args.shared)
    args.out.mkdir(parents=True, exist_ok=True)
    listing = args.out / "photos.txt"
    listing.write_text("\n".join(collection.loc[collection["kind"] != "no-face", "path"]) + "\n", encoding="utf-8")
    detect([listing], args.out / "crops", DetectorParams(), workers=2, show_progress=False)
    embed(args.out / "crops", args.out / "features.csv", model="dlib-resnet128", show_progress=False)
    people = main_faces(args.out, args.shared)
    print(
        "| same-person distance | groups | unknown faces | split pairs in the top 2n merges | labelled unknown "
        "faces: their group first | strangers' suggestion beyond the rule (nearest) |"
    )
    print("|---|---|---|---|---|---|")
    for threshold in args.thresholds:
        folder = args.out / f"clusters-{threshold:g}"
        cluster(
            args.out / "features.csv",
            folder,
            ClusterSettings(threshold=threshold),
            samples_dir=None,
            show_progress=False,
        )
        s = score(folder, people, threshold)
        share = lambda part, whole: f"{part}/{whole}" + (f" ({100 * part / whole:.0f}%)" if whole else "")  # noqa: E731
        print(
            f"| {threshold:g}{' (default)' if threshold == 0.37 else ''} | {s['groups']} | {s['unknown']} | "
            f"{share(s['pairs_found'], s['pairs'])} | {share(s['first_right'], s['labelled_unknown'])} | "
            f"{share(s['strangers_beyond'], s['strangers'])} ({s['nearest_stranger']:.3f}) |"
        )


if __name__ == "__main__":
    main()
