"""facepipe suggest against the known people of a real collection: are the right merges and groups offered first?

    python benchmarks/bench_suggest.py [--shared ../shared] [--collection celeba|lfw] [--out FOLDER]
        [--thresholds 0.37 0.33 0.30]

The collections (the face a photo's manifest names: in LFW's photos the one nearest the centre, else the
largest): ``celeba`` is celeba_wild (300 photos of 10 people, often with several faces) and lfw_singletons (150
strangers, one photo each); ``lfw`` is the lfw set (1424 photos of 79 people, 10-30 each) and the same
strangers. Each goes through detect (defaults), embed (dlib-resnet128) and cluster at each same-person distance
given (0.37 is the default rule; the tighter ones split people into more groups and leave more faces unknown, so
that there is something to suggest). A group's person is the labelled person of more than half its faces (else
it is nobody's). Scored, per clustering and per ranking (``suggest``: suggest's own, unknown faces by the
clustering's link rule and merges by the RMS distance between the groups' faces; ``centroid``: the one suggest
had before, L2 between centroids and from a face to the nearest centroid, kept here to compare):

- merges: of the group pairs that are one labelled person (n pairs), the share among the top 2n merge
  suggestions (target >= 90%);
- unknown: of the labelled faces left unknown whose person has a group, the share whose first suggestion is
  that group (target >= 80%);
- strangers: of the lfw_singletons faces left unknown, the share whose suggestion lies beyond the clustering's
  same-person distance (target: all), and the nearest such distance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
COLLECTIONS = {"celeba": ("celeba_wild", "lfw_singletons"), "lfw": ("lfw", "lfw_singletons")}  # labelled, strangers
CENTRED_SETS = ("lfw", "lfw_singletons")  # LFW's photos are cut about their person's face (../shared/data/README.md)


def photos_of(shared: Path, sets: tuple[str, ...]) -> pd.Series:
    """Photo path -> "set:identity" for every photo of the sets, in manifest order."""
    identity = {}
    for name in sets:
        manifest = pd.read_csv(shared / "data" / name / "manifest.csv")
        for relpath, person in zip(manifest["relpath"], manifest["identity"]):
            identity[str((shared / "data" / name / relpath).resolve())] = f"{name}:{person}"
    return pd.Series(identity)


def main_faces(out: Path, photos: pd.Series) -> pd.Series:
    """Crop name -> "set:identity" for the face each photo's manifest names: in LFW's photos the face nearest the
    centre (the largest is a bystander's in 5 of LFW's 1,424), else the largest."""
    detections = pd.read_csv(out / "crops" / "detections.csv")
    detections["person"] = detections["source"].map(photos)
    centred = detections["person"].str.split(":").str[0].isin(CENTRED_SETS)
    off_centre = np.hypot(
        detections["x"] + detections["w"] / 2 - detections["source_width"] / 2,
        detections["y"] + detections["h"] / 2 - detections["source_height"] / 2,
    )
    detections["rank"] = np.where(centred, off_centre, -detections["w"] * detections["h"])
    main = detections.sort_values("rank", kind="stable").drop_duplicates("source")
    return pd.Series(main["person"].to_numpy(), index=main["crop"].to_numpy()).dropna()


def centroid_suggestions(clustering) -> pd.DataFrame:
    """The merge and unknown suggestions as suggest ranked them before (to compare): each group's
    MERGE_NEIGHBOURS nearest groups by centroid distance, each unknown face's nearest centroid."""
    from facepipe.grouping import nearest_rows
    from facepipe.suggest import MERGE_NEIGHBOURS

    gaps, others = nearest_rows(clustering.centroids, clustering.centroids, MERGE_NEIGHBOURS + 1)
    merges = {
        (min(a, int(b)), max(a, int(b))): float(d)
        for a, (row_gaps, row_others) in enumerate(zip(gaps, others))
        for d, b in zip(row_gaps, row_others)
        if b >= 0 and b != a
    }
    rows = [{"kind": "merge", "group": a, "other": b, "face": None, "distance": d} for (a, b), d in merges.items()]
    unknown = clustering.results["cluster"].to_numpy() == -1
    gaps, nearest = nearest_rows(clustering.vectors[unknown], clustering.centroids)
    rows += [
        {"kind": "unknown", "group": int(g[0]), "other": None, "face": face, "distance": float(d[0])}
        for face, d, g in zip(clustering.results.loc[unknown, "name"], gaps, nearest)
    ]
    return pd.DataFrame(rows).sort_values(["kind", "distance"], kind="stable")


def owner(people: pd.Series) -> str | None:
    """The person of a group (``people``: its faces' persons, NaN where no manifest names the face): the
    labelled person of more than half its faces, else None (a group of bystanders with one labelled face is
    nobody's)."""
    counts = people.value_counts()
    return counts.index[0] if len(counts) and 2 * counts.iloc[0] > len(people) else None


def score(folder: Path, people: pd.Series, rule: float, labelled: str, offered: pd.DataFrame) -> dict:
    """The three figures of the module docstring for the clustering in ``folder`` and the suggestions
    ``offered`` (by kind, best first); ``labelled``: the set whose people are known."""
    results = pd.read_csv(folder / "cluster_results.csv")
    results["person"] = results["name"].map(people)
    owners = results[results["cluster"] >= 0].groupby("cluster")["person"].agg(owner)
    person_of = owners.dropna().to_dict()
    split = {
        (a, b)
        for a in person_of
        for b in person_of
        if a < b and person_of[a] == person_of[b] and person_of[a].startswith(f"{labelled}:")
    }
    merges = offered[offered["kind"] == "merge"].head(2 * len(split))
    found = {(int(a), int(b)) for a, b in zip(merges["group"], merges["other"])} & split
    first = offered[offered["kind"] == "unknown"].drop_duplicates("face").set_index("face")
    unknown = results[(results["cluster"] == -1) & results["person"].notna()]
    known = unknown[
        unknown["person"].str.startswith(f"{labelled}:") & unknown["person"].isin(set(person_of.values()))
    ]
    right = [
        person_of.get(first["group"].get(face)) == person for face, person in zip(known["name"], known["person"])
    ]
    strangers = unknown[unknown["person"].str.startswith("lfw_singletons")]
    gaps = first["distance"].reindex(strangers["name"]).dropna()
    return {
        "groups": len(owners),
        "unknown": int((results["cluster"] == -1).sum()),
        "pairs": len(split),
        "pairs_found": len(found),
        "labelled_unknown": len(known),
        "first_right": sum(right),
        "strangers": len(gaps),
        "strangers_beyond": int((gaps > rule).sum()),
        "nearest_stranger": float(gaps.min()) if len(gaps) else float("nan"),
    }


def share(part: int, whole: int) -> str:
    return f"{part}/{whole}" + (f" ({100 * part / whole:.0f}%)" if whole else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--collection", choices=sorted(COLLECTIONS), default="celeba")
    parser.add_argument("--out", type=Path, help="work folder (default: benchmarks/out/suggest-COLLECTION)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.37, 0.33, 0.30])
    args = parser.parse_args()
    from facepipe.cluster import cluster
    from facepipe.detect import DetectorParams, detect
    from facepipe.embed import embed
    from facepipe.settings import ClusterSettings
    from facepipe.suggest import read_clustering, suggest

    sets = COLLECTIONS[args.collection]
    out = args.out or REPO / "benchmarks" / "out" / f"suggest-{args.collection}"
    photos = photos_of(args.shared, sets)
    out.mkdir(parents=True, exist_ok=True)
    listing = out / "photos.txt"
    listing.write_text("\n".join(photos.index) + "\n", encoding="utf-8")
    detect([listing], out / "crops", DetectorParams(), workers=2, show_progress=False)
    embed(out / "crops", out / "features.csv", model="dlib-resnet128", show_progress=False)
    people = main_faces(out, photos)
    print(
        f"{' + '.join(sets)}: {len(photos)} photos, {len(pd.read_csv(out / 'crops' / 'detections.csv'))} faces\n\n"
        "| same-person distance | groups | unknown faces | ranking | split pairs in the top 2n merges | labelled "
        "unknown faces: their group first | strangers' suggestion beyond the rule (nearest) |\n"
        "|---|---|---|---|---|---|---|"
    )
    for threshold in args.thresholds:
        folder = out / f"clusters-{threshold:g}"
        cluster(
            out / "features.csv", folder, ClusterSettings(threshold=threshold), samples_dir=None, show_progress=False
        )
        for ranking, offered in (
            ("suggest", suggest(folder)),
            ("centroid", centroid_suggestions(read_clustering(folder))),
        ):
            s = score(folder, people, threshold, sets[0], offered)
            print(
                f"| {threshold:g}{' (default)' if np.isclose(threshold, 0.37) else ''} | {s['groups']} | "
                f"{s['unknown']} | {ranking} | {share(s['pairs_found'], s['pairs'])} | "
                f"{share(s['first_right'], s['labelled_unknown'])} | "
                f"{share(s['strangers_beyond'], s['strangers'])} ({s['nearest_stranger']:.3f}) |"
            )


if __name__ == "__main__":
    main()
