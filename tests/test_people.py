"""From groups to people (issue 16): export into folders, a people file of corrections that survives reruns,
and the report that shows who is where, on real photos."""

from __future__ import annotations

import html
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from facepipe.cluster import cluster
from facepipe.common import FacepipeError
from facepipe.detect import DetectorParams, detect
from facepipe.embed import embed
from facepipe.export import export
from facepipe.formats import (
    CLUSTER_RESULTS_CSV,
    DETECTIONS_CSV,
    EXPORT_MANIFEST_CSV,
    GROUPS_CSV,
    LOCK_FILE,
    NO_FACE_FOLDER,
    SOURCES_CSV,
    UNKNOWN_CLUSTER,
    UNKNOWN_FOLDER,
    read_csv,
)
from facepipe.settings import ClusterSettings

PEOPLE = ["Kofi_Annan", "Jackie_Chan", "Hans_Blix", "Tony_Blair", "Colin_Powell", "Naomi_Watts"]


def faces_table(cluster_dir: Path, crops: Path) -> pd.DataFrame:
    """Each face of a clustering with its group and its source photo."""
    results = read_csv(cluster_dir / CLUSTER_RESULTS_CSV)
    detections = read_csv(crops / DETECTIONS_CSV)
    return results.merge(detections[["crop", "source"]], left_on="name", right_on="crop")


def listing(folder: Path) -> dict[str, tuple]:
    """Every file under ``folder``: (inode, size, mtime): what a rerun must leave as it is."""
    found = {}
    for path in folder.rglob("*"):
        if (path.is_file() or path.is_symlink()) and path.name != LOCK_FILE:
            stat = path.lstat()
            found[str(path.relative_to(folder))] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def collection(tmp_path_factory, data_dir):
    """celeba_wild + lfw_singletons + the no-face photos of group_photos, and two photos of one file name in
    folders with a space and unicode in their names: detected (dlib's HOG), embedded, clustered."""
    work = tmp_path_factory.mktemp("collection")
    odd = [work / "odd names" / "café", work / "odd names" / "другой"]
    singles = sorted((data_dir("lfw_singletons") / "images").rglob("*.jpg"))
    for folder, photo in zip(odd, singles[:2]):
        folder.mkdir(parents=True)
        shutil.copy(photo, folder / "the same name.jpg")
    no_face = data_dir("group_photos") / "images"
    inputs = [
        data_dir("celeba_wild") / "images",
        data_dir("lfw_singletons") / "images",
        work / "odd names",
        *(no_face / name for name in ("dlib_dogs.jpg", "insightface_mask_black.jpg")),
    ]
    detect(inputs, work / "crops", DetectorParams(detector="dlib-hog"), workers=2, show_progress=False)
    embed(work / "crops", work / "image_features.csv", model="dlib-resnet128", workers=2, show_progress=False)
    cluster(work / "image_features.csv", work / "clusters", samples_dir=None, show_progress=False)
    return work


def test_export_puts_each_photo_in_the_folder_of_each_of_its_groups(collection, tmp_path):
    out = tmp_path / "people"
    sentinel = tmp_path / "outside.txt"
    sentinel.write_text("keep me")
    summary = export(collection / "clusters", out, show_progress=False)
    faces = faces_table(collection / "clusters", collection / "crops")
    manifest = read_csv(out / EXPORT_MANIFEST_CSV)
    print(summary.line())
    for row in faces.itertuples():
        folder = UNKNOWN_FOLDER if row.cluster == UNKNOWN_CLUSTER else f"group_{row.cluster}"
        placed = manifest[(manifest["photo"] == row.source) & (manifest["file"].str.startswith(folder + "/"))]
        assert len(placed) == 1, (row.source, folder)
        assert os.path.samefile(out / placed["file"].iloc[0], row.source)  # a hard link of the photo itself
    sources = read_csv(collection / "crops" / SOURCES_CSV)
    empty = set(sources.loc[(sources["status"] == "ok") & (sources["faces"] == 0), "source"])
    assert {"dlib_dogs.jpg", "insightface_mask_black.jpg"} <= {Path(p).name for p in empty}
    assert set(manifest.loc[manifest["file"].str.startswith(NO_FACE_FOLDER + "/"), "photo"]) == empty
    assert set(manifest["photo"]) == set(faces["source"]) | empty  # every photo somewhere
    same_name = manifest[manifest["photo"].str.endswith("the same name.jpg")]
    assert len(same_name) >= 2 and same_name["file"].is_unique  # both survive, under distinct names
    several = faces.groupby("source")["cluster"].nunique()
    assert (several > 1).any()  # a photo of several people is in each of their folders
    before = listing(out)
    again = export(collection / "clusters", out, show_progress=False)
    assert (again.made, again.removed) == (0, 0) and listing(out) == before
    assert sentinel.read_text() == "keep me"


def test_an_interrupted_export_resumes_to_the_same_folder(collection, tmp_path, monkeypatch):
    import facepipe.export as export_module

    whole = tmp_path / "whole"
    export(collection / "clusters", whole, mode="copy", show_progress=False)
    real_make, made = export_module._make, []

    def killed_after_50(target, item, mode):
        if len(made) == 50:
            raise KeyboardInterrupt
        made.append(target)
        return real_make(target, item, mode)

    monkeypatch.setattr(export_module, "_make", killed_after_50)
    with pytest.raises(KeyboardInterrupt):
        export(collection / "clusters", tmp_path / "resumed", mode="copy", show_progress=False)
    monkeypatch.setattr(export_module, "_make", real_make)
    resumed = export(collection / "clusters", tmp_path / "resumed", mode="copy", show_progress=False)
    assert resumed.made == resumed.files - 50
    assert sorted(listing(tmp_path / "resumed")) == sorted(listing(whole))
    assert not list((tmp_path / "resumed").rglob(".*.tmp*"))


def test_export_symlinks_and_crops_and_never_reaches_outside(collection, tmp_path):
    out = tmp_path / "links"
    export(collection / "clusters", out, mode="symlink", crops=True, show_progress=False)
    manifest = read_csv(out / EXPORT_MANIFEST_CSV)
    faces = manifest[manifest["face"].notna() & (manifest["face"] != "")]
    first = faces.iloc[0]
    assert os.readlink(out / first["file"]) == str(collection / "crops" / first["face"])
    copies = tmp_path / "copies"
    export(collection / "clusters", copies, mode="hardlink", show_progress=False)
    export(collection / "clusters", copies, mode="copy", show_progress=False)  # the links become real copies
    listed = read_csv(copies / EXPORT_MANIFEST_CSV)
    assert not any(os.path.samefile(copies / f, p) for f, p in zip(listed["file"], listed["photo"]))
    stranger = copies / listed["file"].iloc[0]
    for made_by_export in (EXPORT_MANIFEST_CSV, EXPORT_MANIFEST_CSV + ".json"):
        (copies / made_by_export).unlink()  # the folder's files are now unknown to export
    stranger.write_bytes(b"somebody's own file")
    with pytest.raises(FacepipeError, match="not made by an earlier export"):
        export(collection / "clusters", copies, mode="copy", show_progress=False)
    assert stranger.read_bytes() == b"somebody's own file"
    outside = tmp_path / "precious.jpg"
    outside.write_text("not facepipe's")
    manifest.loc[len(manifest)] = dict(first, file="../precious.jpg")  # a damaged manifest
    manifest.to_csv(out / EXPORT_MANIFEST_CSV, index=False)
    with pytest.raises(FacepipeError, match="changed since export wrote it"):
        export(collection / "clusters", out, mode="symlink", crops=True, show_progress=False)
    assert outside.read_text() == "not facepipe's"
    with pytest.raises(FacepipeError, match="holds the crops folder"):
        export(collection / "clusters", collection, show_progress=False)


@pytest.fixture(scope="module")
def lfw_six(tmp_path_factory, data_dir):
    """Photos 1-4 and, apart, 5-8 of six LFW people, detected and embedded with dlib-resnet128."""
    work = tmp_path_factory.mktemp("lfw_six")
    for batch, photos in (("first", slice(0, 4)), ("later", slice(4, 8))):
        for person in PEOPLE:
            folder = work / batch / person
            folder.mkdir(parents=True)
            for photo in sorted((data_dir("lfw") / "images" / person).glob("*.jpg"))[photos]:
                shutil.copy(photo, folder / photo.name)
    return work


def clustered(work: Path, batches: list[str], people: Path | None = None) -> pd.DataFrame:
    params = DetectorParams(detector="haar", min_neighbors=5, largest_only=True)
    detect([work / b for b in batches], work / "crops", params, workers=1, show_progress=False)
    embed(work / "crops", work / "f.csv", model="dlib-resnet128", workers=1, show_progress=False)
    summary = cluster(
        work / "f.csv", work / "clusters", ClusterSettings(people=people), samples_dir=None, show_progress=False
    )
    print(summary.line())
    faces = faces_table(work / "clusters", work / "crops")
    return faces.assign(person=faces["source"].map(lambda s: Path(s).parent.name))


def majority_group(faces: pd.DataFrame, person: str) -> int:
    return int(faces.loc[(faces["person"] == person) & (faces["cluster"] >= 0), "cluster"].mode().iloc[0])


def test_a_people_file_names_merges_splits_moves_and_survives_a_rerun(lfw_six, tmp_path):
    faces = clustered(lfw_six, ["first"])
    group = {person: majority_group(faces, person) for person in PEOPLE}
    assert len(set(group.values())) == len(PEOPLE), group
    kofi_faces = faces.loc[faces["cluster"] == group["Kofi_Annan"], "name"].tolist()
    moved = faces.loc[faces["cluster"] == group["Colin_Powell"], "name"].iloc[0]
    people = tmp_path / "people.toml"
    blair_groups = sorted(int(g) for g in faces.loc[faces["person"] == "Tony_Blair", "cluster"].unique() if g >= 0)
    people.write_text(
        f"merge = [[{group['Naomi_Watts']}, {', '.join(map(str, blair_groups))}]]\n"
        f"not_a_person = [{group['Hans_Blix']}]\n"
        f'[names]\n{group["Kofi_Annan"]} = "Kofi Annan"\n{group["Jackie_Chan"]} = "成龙 Jackie Chan"\n'
        f'{group["Tony_Blair"]} = "Tony and Naomi"\n'
        f'[move]\n"{moved}" = {group["Jackie_Chan"]}\n'
        f'[[split]]\nfaces = {kofi_faces[:2]!r}\nname = "Kofi, the first two"\n'.replace("'", '"')
    )
    corrected = clustered(lfw_six, ["first"], people)
    names = dict(zip(*[read_csv(lfw_six / "clusters" / GROUPS_CSV)[c] for c in ("cluster", "person")]))
    by_face = corrected.set_index("name")["cluster"]
    assert names[by_face[kofi_faces[2]]] == "Kofi Annan" and by_face[kofi_faces[2]] == group["Kofi_Annan"]
    assert names[by_face[kofi_faces[0]]] == "Kofi, the first two" == names[by_face[kofi_faces[1]]]
    assert names[by_face[moved]] == "成龙 Jackie Chan"
    merged = corrected.loc[corrected["person"].isin(["Tony_Blair", "Naomi_Watts"]), "cluster"]
    assert merged.nunique() == 1 and names[merged.iloc[0]] == "Tony and Naomi"
    assert merged.iloc[0] == group["Naomi_Watts"]  # the merge keeps the first group's number
    assert (corrected.loc[corrected["person"] == "Hans_Blix", "cluster"] == UNKNOWN_CLUSTER).all()

    exported = tmp_path / "export"
    export(lfw_six / "clusters", exported, show_progress=False)
    folders = {p.name for p in exported.iterdir() if p.is_dir()}
    assert {"Kofi Annan", "Kofi, the first two", "成龙 Jackie Chan", "Tony and Naomi"} <= folders
    from facepipe.config import load_config
    from facepipe.report import write_report

    page = write_report(
        lfw_six / "clusters", {"stages": {}, "facepipe_version": "test", "seconds": 0.0}, load_config()
    ).read_text(encoding="utf-8")
    for cluster_id, name in names.items():
        if isinstance(name, str) and name:
            assert f"<h3>Cluster {cluster_id}: {html.escape(name)}</h3>" in page

    # more photos: a new clustering whose numbers differ; the people file still means the same people
    rerun = clustered(lfw_six, ["first", "later"], people)
    names = dict(zip(*[read_csv(lfw_six / "clusters" / GROUPS_CSV)[c] for c in ("cluster", "person")]))
    kofi_later = rerun[(rerun["person"] == "Kofi_Annan") & rerun["source"].str.contains("/later/")]
    assert names[majority_group(kofi_later, "Kofi_Annan")] == "Kofi Annan"
    assert names[rerun.set_index("name")["cluster"][moved]] == "成龙 Jackie Chan"
    assert (rerun.loc[rerun["person"] == "Hans_Blix", "cluster"] == UNKNOWN_CLUSTER).all()


def test_people_file_errors_are_one_line(lfw_six, tmp_path):
    clustered(lfw_six, ["first"])
    for text, message in (
        ('[names]\nx = "A"\n', "not a group number"),
        ("merge = [[1]]\n", "two or more"),
        ("colour = 3\n", "unknown key"),
        ("[names\n", "not valid TOML"),
        ("names = 3\n", "must be a table"),
        ("merge = 5\n", "must be a list"),
        ("move = [1]\n", "must be a table"),
    ):
        (tmp_path / "p.toml").write_text(text)
        with pytest.raises(FacepipeError, match=message):
            cluster(
                lfw_six / "f.csv",
                lfw_six / "clusters",
                ClusterSettings(people=tmp_path / "p.toml"),
                samples_dir=None,
                show_progress=False,
            )


def test_assign_puts_the_other_half_of_lfw_in_its_people_and_strangers_in_unknown(data_dir, tmp_path):
    """Cluster half of each LFW person's photos, then assign the other half and the lfw_singletons: the known
    people's new faces land in their person's group, the one-off people in unknown; group numbers, names and
    centroids do not change."""
    from facepipe.assign import assign

    lfw = data_dir("lfw")
    manifest = pd.read_csv(lfw / "manifest.csv")
    halves = {"first": [], "second": []}
    for _, photos in manifest.sort_values("relpath").groupby("identity"):
        for position, relpath in enumerate(photos["relpath"]):
            halves["first" if position % 2 == 0 else "second"].append(str(lfw / relpath))
    for half, paths in halves.items():
        (tmp_path / f"{half}.txt").write_text("\n".join(paths) + "\n")
    identity = {str(lfw / r): i for r, i in zip(manifest["relpath"], manifest["identity"])}
    params = DetectorParams(detector="haar", min_neighbors=5, largest_only=True)
    crops, features, clusters = tmp_path / "crops", tmp_path / "f.csv", tmp_path / "clusters"
    detect([tmp_path / "first.txt"], crops, params, workers=2, show_progress=False)
    embed(crops, features, model="dlib-resnet128", workers=2, show_progress=False)
    cluster(features, clusters, samples_dir=None, show_progress=False)
    first = faces_table(clusters, crops).assign(identity=lambda f: f["source"].map(identity))
    group_of = {
        person: int(g["cluster"].mode().iloc[0]) for person, g in first[first["cluster"] >= 0].groupby("identity")
    }
    named = {}
    for person, group in group_of.items():
        named.setdefault(group, person)  # a group two people share keeps one name
    (tmp_path / "people.toml").write_text("[names]\n" + "".join(f'{g} = "{p}"\n' for g, p in named.items()))
    cluster(
        features, clusters, ClusterSettings(people=tmp_path / "people.toml"), samples_dir=None, show_progress=False
    )
    before = read_csv(clusters / CLUSTER_RESULTS_CSV)
    names_before = read_csv(clusters / GROUPS_CSV)[["cluster", "person"]]
    centroids_before = (clusters / "centroids.csv").read_bytes()
    group_of = {p: g for p, g in zip(names_before["person"], names_before["cluster"]) if isinstance(p, str) and p}

    summary = assign([tmp_path / "second.txt", data_dir("lfw_singletons") / "images"], clusters, show_progress=False)
    print(summary.line())
    after = faces_table(clusters, crops)
    kept = after.set_index("name").loc[before["name"], "cluster"].to_numpy()
    assert (kept == before["cluster"].to_numpy()).all()
    assert read_csv(clusters / GROUPS_CSV)[["cluster", "person"]].equals(names_before)
    assert (clusters / "centroids.csv").read_bytes() == centroids_before
    new = after[~after["name"].isin(set(before["name"]))]
    known = new[new["source"].map(identity).isin(group_of)]
    strangers = new[new["source"].str.startswith(str(data_dir("lfw_singletons")))]
    right = (known["cluster"] == known["source"].map(identity).map(group_of)).mean()
    unknown = (strangers["cluster"] == UNKNOWN_CLUSTER).mean()
    print(
        f"{len(group_of)} people with a group; {len(known)} new faces of theirs, {right:.3f} in their group; "
        f"{len(strangers)} one-off people, {unknown:.3f} unknown"
    )
    assert len(known) > 500 and len(strangers) > 100
    assert right >= 0.97 and unknown >= 0.95
    again = assign([tmp_path / "second.txt"], clusters, show_progress=False)  # nothing new: nothing changes
    assert again.new_faces == 0 and len(read_csv(clusters / CLUSTER_RESULTS_CSV)) == len(after)


def test_heic_photos_are_read_like_jpeg(data_dir, tmp_path):
    """Phones' HEIC photos: the same faces as from the JPEG they were made from."""
    import pillow_heif
    from PIL import Image

    pillow_heif.register_heif_opener()
    photos = sorted((data_dir("lfw") / "images" / "Kofi_Annan").glob("*.jpg"))[:3]
    (tmp_path / "jpeg").mkdir()
    (tmp_path / "heic").mkdir()
    for photo in photos:
        shutil.copy(photo, tmp_path / "jpeg" / photo.name)
        Image.open(photo).save(tmp_path / "heic" / f"{photo.stem}.HEIC", quality=95)
    params = DetectorParams(detector="haar", min_neighbors=5, largest_only=True)
    found = {}
    for kind in ("jpeg", "heic"):
        summary = detect([tmp_path / kind], tmp_path / f"crops_{kind}", params, workers=1, show_progress=False)
        assert summary.images == 3 and summary.errors == 0
        boxes = read_csv(tmp_path / f"crops_{kind}" / DETECTIONS_CSV)
        found[kind] = sorted(zip(boxes["source"].map(lambda s: Path(s).stem), boxes["w"]))
    assert len(found["heic"]) == 3
    for (stem_j, w_j), (stem_h, w_h) in zip(found["jpeg"], found["heic"]):
        assert stem_j == stem_h and abs(w_j - w_h) <= 0.1 * w_j  # the same face, up to the codec's loss
