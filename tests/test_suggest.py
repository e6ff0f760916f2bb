"""suggest's distances speak the clustering's own rule (issue 27), on real faces: LFW people and one-off
strangers (lfw_singletons), detected, embedded and clustered as ``facepipe run`` does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from facepipe.cluster import cluster
from facepipe.grouping import link_distance, links_needed
from facepipe.models import SAME_PERSON_DISTANCE
from facepipe.settings import ClusterSettings
from facepipe.suggest import read_clustering, suggest

PEOPLE = 8  # LFW's people with the most photos
STRANGERS = 40  # the first lfw_singletons


@pytest.fixture(scope="module")
def collection(data_dir, tmp_path_factory) -> tuple[Path, pd.Series]:
    """The work folder (crops, features.csv) and each crop's person ("lfw:NAME", or "stranger:NAME")."""
    from facepipe.detect import DetectorParams, detect
    from facepipe.embed import embed

    work = tmp_path_factory.mktemp("suggest")
    lfw, singletons = data_dir("lfw"), data_dir("lfw_singletons")
    manifest = pd.read_csv(lfw / "manifest.csv")
    people = manifest["identity"].value_counts().index[:PEOPLE]
    photos = {str(lfw / r): f"lfw:{p}" for r, p in zip(manifest["relpath"], manifest["identity"]) if p in people}
    strangers = pd.read_csv(singletons / "manifest.csv").head(STRANGERS)
    photos |= {str(singletons / r): f"stranger:{p}" for r, p in zip(strangers["relpath"], strangers["identity"])}
    (work / "photos.txt").write_text("".join(f"{path}\n" for path in photos))
    detect([work / "photos.txt"], work / "crops", DetectorParams(largest_only=True), workers=2, show_progress=False)
    embed(work / "crops", work / "features.csv", model="dlib-resnet128", workers=2, show_progress=False)
    detections = pd.read_csv(work / "crops" / "detections.csv")
    return work, pd.Series(detections["source"].map(photos).to_numpy(), index=detections["crop"].to_numpy())


def clustered(collection, threshold: float):
    """The collection clustered at the same-person distance ``threshold``: the clustering, suggest's suggestions
    and each face's person (by row)."""
    work, person = collection
    folder = work / f"clusters-{threshold:g}"
    cluster(
        work / "features.csv", folder, ClusterSettings(threshold=threshold), samples_dir=None, show_progress=False
    )
    clustering = read_clustering(folder)
    return clustering, suggest(folder), clustering.results["name"].map(person).to_numpy()


def members_link(clustering, row: int, group: int) -> float:
    """The face's link distance to the group (``grouping.link_distance``), from its distances to every member."""
    members = clustering.vectors[clustering.results["cluster"].to_numpy() == group]
    gaps = np.sort(np.linalg.norm(members - clustering.vectors[row], axis=1))
    return float(link_distance(gaps[None], links_needed(len(members)))[0])


def test_an_unknown_face_is_offered_a_group_at_the_distance_the_link_rule_would_take_it_in(collection):
    """Each unknown face's suggestion: the group it lies nearest by cluster's link rule (from all its distances to
    each group's members), at that distance; put into the group, the rule turns it away at the clustering's
    distance and takes it in just above the one shown, so that none is offered within the rule."""
    from facepipe.grouping import neighbour_graph, unmatched_faces

    clustering, offered, person = clustered(collection, SAME_PERSON_DISTANCE["dlib-resnet128"])
    rule, labels = clustering.rule_distance, clustering.results["cluster"].to_numpy()
    unknown = offered[offered["kind"] == "unknown"].set_index("face")
    rows = np.flatnonzero(labels == -1)
    assert len(unknown) == len(rows) and any(person[row].startswith("stranger") for row in rows)
    for row in rows:
        face = clustering.results["name"].iloc[row]
        links = {group: members_link(clustering, row, group) for group in range(labels.max() + 1)}
        group, distance = int(unknown.loc[face, "group"]), float(unknown.loc[face, "distance"])
        assert group == min(links, key=links.get) and distance == pytest.approx(links[group], abs=1e-5), face
        assert distance > rule, face
        joined = labels.copy()
        joined[row] = group
        for threshold, turned_away in ((rule, True), (distance + 1e-4, False)):
            assert unmatched_faces(joined, neighbour_graph(clustering.vectors, threshold))[row] == turned_away, face
        nearest_centroid = np.linalg.norm(clustering.centroids - clustering.vectors[row], axis=1).min()
        print(f"{person[row]}: offered {distance:.3f}, nearest centroid {nearest_centroid:.3f}")


def test_a_person_split_in_two_is_offered_as_a_merge_and_their_unknown_faces_their_group(collection):
    """At a tighter rule a person is split and more faces are unknown: every pair of groups of one person is
    among the top 2n merges (n such pairs), each merge at the RMS distance between the two groups' faces, and
    most labelled faces left unknown are offered their own person's group first."""
    clustering, offered, person = clustered(collection, 0.30)
    labels = clustering.results["cluster"].to_numpy()
    person_of = pd.Series(person[labels >= 0]).groupby(labels[labels >= 0]).agg(lambda p: p.mode().iloc[0])
    split = {(a, b) for a in person_of.index for b in person_of.index if a < b and person_of[a] == person_of[b]}
    merges = offered[offered["kind"] == "merge"]
    assert split and split <= set(zip(merges["group"].head(2 * len(split)), merges["other"].head(2 * len(split))))
    for a, b, distance in zip(merges["group"], merges["other"], merges["distance"]):
        faces_a, faces_b = clustering.vectors[labels == a], clustering.vectors[labels == b]
        rms = np.sqrt((np.linalg.norm(faces_a[:, None] - faces_b[None], axis=2) ** 2).mean())
        assert distance == pytest.approx(rms, abs=1e-5)
    first = offered[offered["kind"] == "unknown"].set_index("face")["group"]
    left = [row for row in np.flatnonzero(labels == -1) if person[row] in set(person_of)]
    right = [person_of[first[clustering.results["name"].iloc[row]]] == person[row] for row in left]
    print(f"{sum(right)}/{len(right)} labelled unknown faces offered their person's group first")
    assert left and sum(right) > len(right) / 2
