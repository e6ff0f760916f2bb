"""The cluster stage's rules chosen on held-out people: folds over the people of ../shared/data.

    python benchmarks/bench_cluster_rules.py [--shared ../shared] [--out benchmarks/out/people] [--folds 5]
    python benchmarks/bench_cluster_rules.py --links-only [--links 2 3 4]

The photos of celeba_wild, lfw, dlib_johns and deepface_ids (103 people), lfw_singletons (150 one-off
people) and group_photos go once through ``detect`` (stage defaults) and ``embed --model dlib-resnet128``
(cached in ``--out``; a rerun skips them). A photo's largest face carries the manifest's identity; its other
faces stay in the collection, unlabelled. The people are dealt into ``--folds`` folds (each set shuffled and
dealt round-robin, seeded), the one-off people and group_photos likewise, and each fold is clustered as a
collection of its own with every setting of the grid: the same-person distance, and the face link rule
(``facepipe.grouping``: ``full_weight_share``, below which share of the distance an edge weighs 1;
``links``, the neighbours within the distance a face needs in its group; ``close_share``, below which share
of the distance one neighbour is enough).

Scored per fold: BCubed precision / recall / F over the faces with a known identity (the labelled people's,
and each one-off person as an identity of one face), and the share of one-off people put in a labelled
person's group. Each fold's setting is chosen on the other folds (highest mean F, to 3 decimals, among the
settings that keep at most 2% of their one-off people in people's groups; then the fewest strangers), then
scored on the held-out fold: the table gives the
choice and the held-out figures per fold, and their spread.

``--links-only`` skips the grid and scores the stage's rule with each number of members needed (``--links``):
on all the faces pooled in one collection, and on LFW's 79 people as docs/commands.md detects them (haar at
minNeighbors 5, largest face; cached in ``--out``/lfw) over seeds 0-9.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
PEOPLE_SETS = ("celeba_wild", "lfw", "dlib_johns", "deepface_ids")
ONE_OFF_SET = "lfw_singletons"
OTHER_SET = "group_photos"  # group photos, portraits and no-face photos: their faces are unlabelled here
SETTINGS = ("distance", "full_weight_share", "links", "close_share")
GRID = {
    "distance": (0.35, 0.37, 0.39),
    "full_weight_share": (0.0, 0.55, 0.7, 0.85),
    "links": (1, 2, 3, 4),
    "close_share": (0.8, 0.9),
}  # full_weight_share 0: the weights before; links 1: the link rule before
MAX_STRANGERS = 0.02


def detected_faces(photos: list[str], out: Path, params) -> tuple[pd.DataFrame, np.ndarray]:
    """``photos`` through detect (``params``) and embed (dlib-resnet128) once, cached in ``out``: their detections
    (one row per face) and unit embeddings, in the same order."""
    from facepipe.detect import detect
    from facepipe.embed import embed
    from facepipe.formats import read_embeddings

    out.mkdir(parents=True, exist_ok=True)
    listing = out / "photos.txt"
    listing.write_text("\n".join(photos) + "\n", encoding="utf-8")
    detect([listing], out / "crops", params, workers=2, show_progress=False)
    embed(out / "crops", out / "features.csv", model="dlib-resnet128", workers=2, show_progress=False)
    embeddings = read_embeddings(out / "features.csv")
    faces = pd.read_csv(out / "crops" / "detections.csv").set_index("crop").loc[embeddings.names].reset_index()
    vectors = embeddings.vectors / np.linalg.norm(embeddings.vectors, axis=1, keepdims=True)
    return faces, vectors.astype(np.float32)


def prepare(shared: Path, out: Path) -> pd.DataFrame:
    """Detect and embed every photo of the sets once; one row per face: name, source, set, identity (the
    manifest's on a photo's largest face, else None), vector."""
    from facepipe.detect import DetectorParams

    identities = {}
    for name in (*PEOPLE_SETS, ONE_OFF_SET, OTHER_SET):
        manifest = pd.read_csv(shared / "data" / name / "manifest.csv")
        for relpath, identity in zip(manifest["relpath"], manifest["identity"]):
            path = str((shared / "data" / name / relpath).resolve())
            identities[path] = (name, f"{name}:{identity}" if pd.notna(identity) and name != OTHER_SET else None)
    faces, vectors = detected_faces(list(identities), out, DetectorParams())
    faces["set"] = faces["source"].map(lambda s: identities[s][0])
    largest = (
        faces.assign(area=faces["w"] * faces["h"]).sort_values("area", ascending=False).drop_duplicates("source")
    )
    faces["identity"] = None
    faces.loc[largest.index, "identity"] = largest["source"].map(lambda s: identities[s][1])
    return faces.assign(vector=list(vectors))[["crop", "source", "set", "identity", "vector"]]


def deal_folds(faces: pd.DataFrame, folds: int, seed: int = 0) -> np.ndarray:
    """A fold per face: each set's people (one-off people, other photos) shuffled and dealt round-robin, a
    photo's faces in its person's fold."""
    rng = np.random.default_rng(seed)
    photo_fold = {}
    for _, photos in faces.groupby("set"):
        owner = photos.groupby("source")["identity"].first().fillna("")
        keys = owner.where(owner != "", owner.index.to_series())  # a person, else the photo itself
        people = rng.permutation(sorted(set(keys)))
        fold_of = {person: i % folds for i, person in enumerate(people)}
        photo_fold.update({source: fold_of[key] for source, key in keys.items()})
    return faces["source"].map(photo_fold).to_numpy()


def score(faces: pd.DataFrame, labels: np.ndarray) -> dict:
    """BCubed over the faces with a known identity (a one-off person is an identity of one face) and the share
    of one-off people in a labelled person's group."""
    from facepipe.cluster_metrics import bcubed

    known = faces["identity"].notna().to_numpy()
    one_off = (faces["set"] == ONE_OFF_SET).to_numpy() & known
    people = known & ~one_off
    metrics = bcubed(faces.loc[known, "identity"].to_numpy(), labels[known])
    people_groups = set(labels[people][labels[people] >= 0].tolist())
    strangers = float(np.isin(labels[one_off], list(people_groups)).mean()) if one_off.any() else 0.0
    return {"precision": metrics["precision"], "recall": metrics["recall"], "f": metrics["f"], "strangers": strangers}


def group(
    faces: pd.DataFrame, distance: float, full_weight_share: float, links: int, close_share: float, seed: int = 0
) -> np.ndarray:
    """The cluster stage's grouping of these faces (its defaults but for the settings given)."""
    from facepipe.grouping import best_whispers, finish_groups, neighbour_graph, unmatched_faces

    vectors = np.stack(faces["vector"].to_numpy())
    photos = np.unique(faces["source"].to_numpy(), return_inverse=True)[1]
    graph = neighbour_graph(vectors, distance, full_weight_share=full_weight_share)
    raw = best_whispers(graph, seed)
    return finish_groups(vectors, raw, unmatched_faces(raw, graph, links, close_share), photos, 2).labels


def grid_scores(faces: pd.DataFrame, fold: np.ndarray) -> pd.DataFrame:
    """Every setting of the grid on every fold (one link needed makes the close share moot: tried once)."""
    settings = [s for s in itertools.product(*GRID.values()) if s[2] > 1 or s[3] == GRID["close_share"][0]]
    rows = []
    for part in sorted(set(fold)):
        members = faces[fold == part].reset_index(drop=True)
        for setting in settings:
            rows.append({"fold": part, **dict(zip(SETTINGS, setting)), **score(members, group(members, *setting))})
    return pd.DataFrame(rows)


def held_out(table: pd.DataFrame) -> pd.DataFrame:
    """Per fold: the setting chosen on the other folds and its figures on this one."""
    rows = []
    for part in sorted(table["fold"].unique()):
        others = table[table["fold"] != part].groupby(list(SETTINGS))[["f", "strangers"]].mean()
        allowed = others[others["strangers"] <= MAX_STRANGERS]
        allowed = (allowed if len(allowed) else others).assign(f=lambda t: t["f"].round(3))
        setting = allowed.sort_values(["f", "strangers"], ascending=[False, True], kind="stable").index[0]
        mine = table[table["fold"] == part].set_index(list(SETTINGS)).loc[setting]
        rows.append(
            {
                "fold": part,
                **dict(zip(SETTINGS, setting)),
                **mine[["precision", "recall", "f", "strangers"]].to_dict(),
            }
        )
    return pd.DataFrame(rows)


def lfw_faces(shared: Path, out: Path) -> pd.DataFrame:
    """LFW's photos through detect (haar at minNeighbors 5, largest face, as docs/commands.md) and embed once:
    one row per face: source, identity, vector."""
    from facepipe.detect import DetectorParams

    manifest = pd.read_csv(shared / "data" / "lfw" / "manifest.csv")
    identities = {
        str((shared / "data" / "lfw" / r).resolve()): i for r, i in zip(manifest["relpath"], manifest["identity"])
    }
    faces, vectors = detected_faces(
        list(identities), out, DetectorParams(detector="haar", min_neighbors=5, largest_only=True)
    )
    return faces.assign(identity=faces["source"].map(identities), vector=list(vectors))


def links_table(pooled: pd.DataFrame, lfw: pd.DataFrame, links: list[int]) -> pd.DataFrame:
    """The stage's rule (its same-person distance, full-weight and close shares) with each number of members
    needed: the pooled faces' BCubed F and strangers, LFW's BCubed F at seed 0, its median and minimum over seeds
    0-9, and LFW's faces left unknown at seed 0."""
    from facepipe.cluster_metrics import bcubed
    from facepipe.grouping import CLOSE_SHARE, FULL_WEIGHT_SHARE
    from facepipe.models import DLIB_RESNET128, SAME_PERSON_DISTANCE

    rule = (SAME_PERSON_DISTANCE[DLIB_RESNET128], FULL_WEIGHT_SHARE)
    rows = []
    for needed in links:
        pooled_scores = score(pooled, group(pooled, *rule, needed, CLOSE_SHARE))
        lfw_labels = [group(lfw, *rule, needed, CLOSE_SHARE, seed) for seed in range(10)]
        lfw_f = [bcubed(lfw["identity"].to_numpy(), labels)["f"] for labels in lfw_labels]
        rows.append(
            {
                "members needed": needed,
                "pooled F": pooled_scores["f"],
                "pooled strangers": pooled_scores["strangers"],
                "LFW F, seed 0": f"{lfw_f[0]:.4f}",
                "LFW F, seeds 0-9 median": f"{np.median(lfw_f):.4f}",
                "min": f"{min(lfw_f):.4f}",
                "LFW unknown": int((lfw_labels[0] < 0).sum()),
            }
        )
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    """A table as markdown, numbers to 3 decimals."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in table.itertuples(index=False)]
    lines = [list(map(str, table.columns)), ["---"] * len(table.columns), *cells]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "people")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--links-only", action="store_true", help="only the members-needed table (see above)")
    parser.add_argument("--links", type=int, nargs="+", default=[2, 3, 4])
    args = parser.parse_args()
    faces = prepare(args.shared, args.out)
    if args.links_only:
        print(markdown(links_table(faces, lfw_faces(args.shared, args.out / "lfw"), args.links)))
        return
    fold = deal_folds(faces, args.folds)
    table = grid_scores(faces, fold)
    table.to_csv(args.out / "grid.csv", index=False)
    mean = table.groupby(list(SETTINGS))[["precision", "recall", "f", "strangers"]].agg(["mean", "min", "max"])
    print(mean.round(3).to_string())
    chosen = held_out(table)
    print(markdown(chosen))
    print(markdown(chosen[["precision", "recall", "f", "strangers"]].agg(["mean", "min", "max"]).reset_index()))


if __name__ == "__main__":
    main()
