"""Every file a stage reads is checked, not trusted (issue 28, class 2): a hand-edited or damaged file is one
line naming the file (and in a CSV the row and column), never a traceback or a silently wrong result; a
refused command changes nothing; detect redoes a crop changed since it wrote it."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from facepipe.cli import main
from facepipe.common import FacepipeError
from facepipe.formats import (
    CENTROIDS_CSV,
    CLUSTER_RESULTS_CSV,
    DETECTIONS_CSV,
    LOCK_FILE,
    MAX_GROUP_NUMBER,
    Embeddings,
    embed_checkpoint_path,
    group_names,
    read_alignment,
    read_centroids,
    read_cluster_results,
    read_embeddings,
    read_embeddings_checkpoint,
    read_fidelity,
    read_json,
    read_run_state,
    sidecar_path,
    write_embeddings,
    write_embeddings_checkpoint,
)
from facepipe.people import read_anchors, read_people

RESULTS = "name,cluster,distance\na.jpg,0,0.1\nb.jpg,1,0.2\nc.jpg,-1,0.9\n"


def _results(folder, cluster_cell: str, centroids: int | None = None):
    """A cluster_results.csv whose third face's cluster is ``cluster_cell`` (with a sidecar naming a crops
    folder, and a centroids.csv of ``centroids`` groups)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CLUSTER_RESULTS_CSV
    path.write_text(RESULTS.replace("c.jpg,-1", f"c.jpg,{cluster_cell}"))
    (folder / "crops").mkdir(exist_ok=True)
    sidecar_path(path).write_text(json.dumps({"crops_dir": "crops", "embeddings": "f.csv"}))
    if centroids is not None:
        rows = "".join(f"{g},0.6,0.8\n" for g in range(centroids))
        (folder / CENTROIDS_CSV).write_text("cluster,e0,e1\n" + rows)
    return path


@pytest.mark.fast
@pytest.mark.parametrize(
    "cell, message",
    [
        ("2.5", "row 4, column cluster: 2.5 is not a whole number"),
        ("two", "row 4, column cluster: 'two' is not a number"),
        ("", "row 4, column cluster: the cell is empty"),
        (
            "99999999999999999999999",
            "row 4, column cluster: 99999999999999999999999 is out of range (must be from -1 to",
        ),
        ("1e300", "row 4, column cluster: 1e+300 is out of range"),
        ("-2", "row 4, column cluster: -2 is out of range (must be from -1 to 1000000)"),
        ("inf", "row 4, column cluster: inf is not a finite number"),
    ],
)
def test_a_damaged_cluster_number_names_the_file_row_and_column(tmp_path, cell, message):
    path = _results(tmp_path, cell)
    with pytest.raises(FacepipeError) as error:
        read_cluster_results(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value), str(error.value)


@pytest.mark.fast
def test_cluster_results_are_read_with_their_types_and_checked_against_the_centroids(tmp_path):
    results = read_cluster_results(_results(tmp_path, "1.0", centroids=2))
    assert results["cluster"].tolist() == [0, 1, 1] and results["cluster"].dtype == np.int64
    assert results["name"].tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    with pytest.raises(
        FacepipeError, match=r"row 4, column cluster: group 5 is not among the 2 groups of .*centroids"
    ):
        read_cluster_results(_results(tmp_path, "5", centroids=2))
    (tmp_path / CLUSTER_RESULTS_CSV).write_text(RESULTS + "a.jpg,1,0.3\n")
    with pytest.raises(FacepipeError, match=r"row 5, column name: 'a.jpg' appears again \(first in row 2\)"):
        read_cluster_results(tmp_path / CLUSTER_RESULTS_CSV)
    (tmp_path / CLUSTER_RESULTS_CSV).write_text(RESULTS.replace("0.9", "-0.5"))
    with pytest.raises(FacepipeError, match="row 4, column distance: -0.5 is out of range"):
        read_cluster_results(tmp_path / CLUSTER_RESULTS_CSV)


@pytest.mark.fast
@pytest.mark.parametrize(
    "command", [["export", "-o", "{out}"], ["train-cvae", "-o", "{out}"], ["assign", "{photo}", "--clusters"]]
)
@pytest.mark.parametrize("cell", ["2.5", "many"])
def test_every_command_refuses_a_damaged_cluster_number_in_one_line(tmp_path, command, cell):
    """A float cluster number used to be taken as its whole part by export and train-cvae; text crashed."""
    path = _results(tmp_path / "clusters", cell, centroids=2)
    (tmp_path / "photo.jpg").write_bytes(b"")
    args = [a.format(out=tmp_path / "out", photo=tmp_path / "photo.jpg") for a in command]
    args = [*args, str(path)] if command[0] == "assign" else [args[0], str(path), *args[1:]]
    before = sorted(p.name for p in tmp_path.rglob("*") if p.name != LOCK_FILE)
    result = CliRunner().invoke(main, [*args, "-q"])
    assert result.exit_code == 1, result.output
    assert "row 4, column cluster" in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1
    assert sorted(p.name for p in tmp_path.rglob("*") if p.name != LOCK_FILE) == before  # nothing written


@pytest.mark.fast
@pytest.mark.parametrize(
    "sidecar, message",
    [
        ("[1, 2]", "holds a JSON list, not an object"),
        ('"vggface2"', "holds a JSON str, not an object"),
        ('{"model": ["x"]}', "model must be text"),
        ('{"dimension": "2"}', "dimension must be a whole number"),
        ('{"count": 2.5}', "count must be a whole number"),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_an_embeddings_sidecar_of_the_wrong_type_is_one_line(tmp_path, sidecar, message):
    path = tmp_path / "f.csv"
    write_embeddings(path, Embeddings(["a.jpg", "b.jpg"], np.eye(2, dtype=np.float32), {"model": "m"}))
    sidecar_path(path).write_text(sidecar)
    with pytest.raises(FacepipeError, match=message):
        read_embeddings(path)


@pytest.mark.fast
@pytest.mark.parametrize(
    "names, message",
    [
        (np.asarray("a.jpg"), "a list of text, not a 0-d"),
        (np.asarray([["a.jpg"], ["b.jpg"]]), "a list of text, not a 2-d"),
        (np.asarray([1, 2]), "a list of text"),
        (np.asarray(["a.jpg"]), "one vector of numbers per name"),
        (np.asarray(["a.jpg", "a.jpg"]), r"more than once \(a.jpg\)"),
    ],
)
def test_an_npz_whose_names_are_not_a_list_of_names_is_one_line(tmp_path, names, message):
    path = tmp_path / "f.npz"
    np.savez(path, names=names, vectors=np.eye(2, dtype=np.float32))
    with pytest.raises(FacepipeError, match=message):
        read_embeddings(path)


@pytest.mark.fast
@pytest.mark.parametrize("content", [b"PK\x03\x04 not really a zip archive" * 10, b"garbage" * 50, b""])
def test_a_garbage_embed_progress_file_is_one_line_that_says_what_to_do(tmp_path, content):
    path = embed_checkpoint_path(tmp_path / "f.csv")
    path.write_bytes(content)
    with pytest.raises(FacepipeError, match="is not an embed progress file.*delete it or rerun with --force"):
        read_embeddings_checkpoint(path)
    np.save(tmp_path / "one.npy", np.zeros(3))  # a single array, not an archive
    (tmp_path / "one.npy").replace(path)
    with pytest.raises(FacepipeError, match="not an embed progress file"):
        read_embeddings_checkpoint(path)


@pytest.mark.fast
def test_an_embed_progress_file_with_bad_arrays_or_meta_is_one_line(tmp_path):
    path = embed_checkpoint_path(tmp_path / "f.csv")
    good = Embeddings(["a.jpg", "b.jpg"], np.eye(2, dtype=np.float32), {"model": "m"})
    write_embeddings_checkpoint(path, good)
    assert read_embeddings_checkpoint(path).names == good.names
    np.savez(path, names=np.asarray(["a.jpg", "b.jpg"]), vectors=np.eye(2), meta=np.asarray("[1]"))
    with pytest.raises(FacepipeError, match="meta is not a JSON object.*--force"):
        read_embeddings_checkpoint(path)
    np.savez(path, names=np.asarray(["a.jpg", "b.jpg"]), vectors=np.full((2, 2), np.nan), meta=np.asarray("{}"))
    with pytest.raises(FacepipeError, match="non-finite values.*--force"):
        read_embeddings_checkpoint(path)
    np.savez(
        path, names=np.asarray(["a.jpg", "b.jpg"]), vectors=np.ones((2, 5)), meta=np.asarray('{"dimension": 128}')
    )
    with pytest.raises(FacepipeError, match="meta says dimension 128 but it holds 5-d vectors.*--force"):
        read_embeddings_checkpoint(path)


@pytest.mark.fast
def test_centroids_and_people_anchors_with_text_are_one_line(tmp_path):
    (tmp_path / CENTROIDS_CSV).write_text("cluster,e0,e1\n0,0.6,0.8\n1,x,0.1\n")
    with pytest.raises(FacepipeError, match=r"centroids.csv row 3, column e0: 'x' is not a number"):
        read_centroids(tmp_path / CENTROIDS_CSV)
    (tmp_path / CENTROIDS_CSV).write_text("cluster,e0,e1\n0,0.6,0.8\n1,1e39,0.1\n")
    with pytest.raises(FacepipeError, match=r"row 3, column e0: 1e\+39 is out of range"):
        read_centroids(tmp_path / CENTROIDS_CSV)
    (tmp_path / "people_anchors.csv").write_text("group,e0,e1\n0,0.6,0.8\n3,0.1,abc\n")
    with pytest.raises(FacepipeError, match=r"people_anchors.csv row 3, column e1: 'abc' is not a number"):
        read_anchors(tmp_path, 2)
    (tmp_path / "people_anchors.csv").write_text("group,e0,e1\n0,0.6,0.8\n0.5,0.1,0.2\n")
    with pytest.raises(FacepipeError, match=r"row 3, column group: 0.5 is not a whole number"):
        read_anchors(tmp_path, 2)
    (tmp_path / "people_anchors.csv").write_text("group,e0,e1\n2,0.6,0.8\n2,0.1,0.2\n")
    with pytest.raises(FacepipeError, match=r"row 3, column group: 2 appears again"):
        read_anchors(tmp_path, 2)
    (tmp_path / "people_anchors.csv").write_text("group,e0\n0,0.6\n2,0.1\n")  # a column fewer
    with pytest.raises(FacepipeError, match=r"people_anchors.csv holds 1-d anchors but the embeddings are 2-d"):
        read_anchors(tmp_path, 2)


@pytest.mark.fast
def test_a_people_file_split_with_an_unknown_key_is_refused(tmp_path):
    people = tmp_path / "people.toml"
    people.write_text('[[split]]\nfaces = ["a.jpg"]\nnmae = "x"\n')
    with pytest.raises(FacepipeError, match=r"\[\[split\]\] has unknown key\(s\) nmae; known: faces, name"):
        read_people(people)
    people.write_text('[[split]]\nfaces = ["a.jpg"]\nname = "x"\n')
    assert read_people(people).splits == [(["a.jpg"], "x")]


@pytest.mark.fast
def test_a_people_file_nested_ten_thousand_deep_is_one_line(tmp_path):
    for text in ("merge = " + "[" * 10_000 + "]" * 10_000 + "\n", '[names]\n1000000000000 = "X"\n'):
        (tmp_path / "people.toml").write_text(text)
        with pytest.raises(FacepipeError, match="nested too deep|not a group number"):
            read_people(tmp_path / "people.toml")


@pytest.mark.fast
def test_the_other_readers_refuse_wrong_types_in_one_line(tmp_path):
    (tmp_path / "groups.csv").write_text("cluster,person,faces\n0,Ann,3\nx,Bob,2\n")
    with pytest.raises(FacepipeError, match=r"groups.csv row 3, column cluster: 'x' is not a number"):
        group_names(tmp_path)
    (tmp_path / "groups.csv").write_text("cluster,person,faces\n0,NA,3\n1,,2\n")
    assert group_names(tmp_path) == {0: "NA"}
    header = "name," + ",".join(f"{a}{i}" for i in range(5) for a in "xy")
    (tmp_path / "alignment.csv").write_text(header + "\na.jpg," + ",".join(["10"] * 9 + ["10.5"]) + "\n")
    with pytest.raises(FacepipeError, match=r"alignment.csv row 2, column y4: 10.5 is not a whole number"):
        read_alignment(tmp_path / "alignment.csv")
    (tmp_path / "state.json").write_text('{"detect": [1], "embed": {}}')
    with pytest.raises(FacepipeError, match=r"state.json: detect must be an object"):
        read_run_state(tmp_path / "state.json")
    (tmp_path / "state.json").write_text('{"detect": {"completed": "yes"}}')
    with pytest.raises(FacepipeError, match=r"state.json \[detect\]: completed must be true or false"):
        read_run_state(tmp_path / "state.json")
    (tmp_path / "fidelity.json").write_text('{"cvae": {"correct": 2}, "per_cluster": []}')
    with pytest.raises(FacepipeError, match=r"fidelity.json \[cvae\] lacks fraction"):
        read_fidelity(tmp_path / "fidelity.json")
    (tmp_path / "fidelity.json").write_text('{"per_cluster": [{"cluster": "0"}]}')
    with pytest.raises(FacepipeError, match=r"per_cluster\[0\]: cluster must be a whole number"):
        read_fidelity(tmp_path / "fidelity.json")
    (tmp_path / "fidelity.json").write_text('{"per_cluster": [{"cluster": 0, "crops_sharpness": NaN}]}')
    assert read_fidelity(tmp_path / "fidelity.json")["per_cluster"][0]["cluster"] == 0
    (tmp_path / "detect.json").write_text("[]")
    with pytest.raises(FacepipeError, match="holds a JSON list, not an object"):
        read_json(tmp_path / "detect.json")


@pytest.mark.fast
def test_a_detect_json_of_the_wrong_types_is_one_line(tmp_path):
    from facepipe.detect import recorded_params

    for params, message in (
        ("[1]", "params must be an object"),
        ('{"size": "224"}', "size must be a whole number"),
        ('{"margin": 7}', "margin 7 is out of range"),
    ):
        (tmp_path / "detect.json").write_text('{"params": %s}' % params)
        with pytest.raises(FacepipeError, match=message):
            recorded_params(tmp_path)


# --- with real photos ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clustering(tmp_path_factory, data_dir):
    """Eight LFW photos of two people detected, embedded (dlib-resnet128) and clustered: the work folder."""
    from facepipe.cluster import cluster
    from facepipe.detect import DetectorParams, detect
    from facepipe.embed import embed

    work = tmp_path_factory.mktemp("clustering")
    (work / "photos").mkdir()
    (work / "new").mkdir()
    for person in ("Kofi_Annan", "Hans_Blix"):
        found = sorted((data_dir("lfw") / "images" / person).glob("*.jpg"))
        for source in found[:4]:
            shutil.copy(source, work / "photos" / source.name)
        shutil.copy(found[5], work / "new" / found[5].name)
    detect([work / "photos"], work / "crops", DetectorParams(min_neighbors=5), workers=1, show_progress=False)
    embed(work / "crops", work / "f.csv", model="dlib-resnet128", workers=1, show_progress=False)
    cluster(work / "f.csv", work / "clusters", samples_dir=None, show_progress=False)
    return work


def _snapshot(folder):
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


@pytest.mark.parametrize(
    "damage, message",
    [
        ("float", "column cluster"),
        ("beyond", "column cluster"),
        ("groups", "column cluster"),
        ("centroids", "holds 127-d centroids but"),
    ],
)
def test_an_assign_refused_on_a_bad_clustering_changes_nothing(clustering, tmp_path, damage, message):
    """assign used to detect and embed the new photos into the collection before it read the clustering."""
    work = tmp_path / "work"
    shutil.copytree(clustering, work, symlinks=True)
    results = work / "clusters" / CLUSTER_RESULTS_CSV
    lines = results.read_text().splitlines()
    name, _, distance = lines[1].split(",")
    if damage == "groups":
        (work / "clusters" / "groups.csv").write_text("cluster,person,faces\nzero,Ann,1\n")
    elif damage == "centroids":  # a column fewer
        centroids = work / "clusters" / CENTROIDS_CSV
        centroids.write_text("".join(line.rsplit(",", 1)[0] + "\n" for line in centroids.read_text().splitlines()))
    else:
        lines[1] = f"{name},{'0.5' if damage == 'float' else '7'},{distance}"
        results.write_text("\n".join(lines) + "\n")
    before = _snapshot(work)
    result = CliRunner().invoke(
        main, ["assign", str(work / "new"), "--clusters", str(work / "clusters"), "-q", "--workers", "1"]
    )
    assert result.exit_code == 1, result.output
    assert (message in result.output) and "Traceback" not in result.output, result.output
    assert _snapshot(work) == before  # no crop, row or vector of the new photos was added


@pytest.mark.fast
def test_a_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    from facepipe.common import check_writable

    check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing behind
    (tmp_path / "file").write_text("x")
    with pytest.raises(FacepipeError, match=r"cannot write into .*file: .*nothing was changed"):
        check_writable(tmp_path / "file")


def test_detect_redoes_a_crop_truncated_after_it_was_written(clustering, tmp_path):
    from facepipe.detect import DetectorParams, detect

    crops = tmp_path / "crops"
    shutil.copytree(clustering / "crops", crops)
    params = DetectorParams(min_neighbors=5)
    rows = (crops / DETECTIONS_CSV).read_text().splitlines()
    assert rows[0].split(",")[-1] == "sha256"
    victim = crops / rows[1].split(",")[0]
    whole = victim.read_bytes()
    victim.write_bytes(whole[: len(whole) // 2])
    summary = detect([clustering / "photos"], crops, params, workers=1, show_progress=False)
    assert summary.processed_now == 1 and summary.skipped == 7
    assert victim.read_bytes() == whole
    assert _snapshot(crops) == _snapshot(clustering / "crops")
    again = detect([clustering / "photos"], crops, params, workers=1, show_progress=False)
    assert again.processed_now == 0


@pytest.mark.parametrize("column, cell", [("x", "nan"), ("face_index", "first")])
def test_detect_redoes_a_photo_whose_detection_row_is_damaged_and_embed_refuses_it(
    clustering, tmp_path, column, cell
):
    from facepipe.detect import DetectorParams, detect
    from facepipe.formats import DETECTION_COLUMNS

    crops = tmp_path / "crops"
    shutil.copytree(clustering / "crops", crops)
    rows = [line.split(",") for line in (crops / DETECTIONS_CSV).read_text().splitlines()]
    rows[1][DETECTION_COLUMNS.index(column)] = cell
    (crops / DETECTIONS_CSV).write_text("".join(",".join(row) + "\n" for row in rows))
    result = CliRunner().invoke(
        main,
        ["embed", str(crops), "-o", str(tmp_path / "f.csv"), "--model", "dlib-resnet128", "--workers", "1", "-q"],
    )
    assert result.exit_code == 1 and f"row 2, column {column}" in result.output, result.output
    assert "detect rerun" in result.output and not (tmp_path / "f.csv").exists()
    summary = detect([clustering / "photos"], crops, DetectorParams(min_neighbors=5), workers=1, show_progress=False)
    assert summary.processed_now == 1
    assert (crops / DETECTIONS_CSV).read_bytes() == (clustering / "crops" / DETECTIONS_CSV).read_bytes()


@pytest.mark.fast
def test_detections_probe_and_checkpoint_files_of_the_wrong_types_are_one_line(tmp_path):
    import torch

    from facepipe.cvae.checkpoints import load_checkpoint
    from facepipe.formats import CVAE_CHECKPOINT_FORMAT, read_detections, read_probe_json

    (tmp_path / DETECTIONS_CSV).write_text("crop,source\na.jpg,/p/1.jpg\nb.jpg,/p/1.jpg\na.jpg,/p/2.jpg\n")
    with pytest.raises(FacepipeError, match=r"detections.csv row 4, column crop: 'a.jpg' appears again"):
        read_detections(tmp_path / DETECTIONS_CSV)
    (tmp_path / DETECTIONS_CSV).write_text("crop,source\na.jpg,\n")
    with pytest.raises(FacepipeError, match=r"detections.csv row 2, column source: the cell is empty"):
        read_detections(tmp_path / DETECTIONS_CSV)
    for text, message in (
        ("crop,source\n/elsewhere/holiday.jpg,/p/1.jpg\n", "row 2, column crop: '/elsewhere/"),
        ("crop,source\nsub/../../x.jpg,/p/1.jpg\n", "row 2, column crop: 'sub/../../x.jpg' is not"),
        (
            "crop,source,face_index\na.jpg,/p/1.jpg,0\nb.jpg,/p/1.jpg,first\n",
            "row 3, column face_index: 'first' is not a number",
        ),
        ("crop,source,x,w\na.jpg,/p/1.jpg,nan,3\n", "row 2, column x: 'nan' is not a number"),
        ("crop,source,w\na.jpg,/p/1.jpg,-3\n", "row 2, column w: -3 is out of range"),
    ):
        (tmp_path / DETECTIONS_CSV).write_text(text)
        with pytest.raises(FacepipeError, match=re.escape(message) + ".*a detect rerun into that folder redoes"):
            read_detections(tmp_path / DETECTIONS_CSV)
    (tmp_path / DETECTIONS_CSV).write_text("crop,source,face_index,x,score\nsub/a.jpg,/p/1.jpg,0,-4,\n")
    assert read_detections(tmp_path / DETECTIONS_CSV)["crop"].tolist() == ["sub/a.jpg"]
    probe = {
        "format": "facepipe-linear-probe/1",
        "target": ["male"],
        "intercept": 0.0,
        "threshold": 0.5,
        "C": 1.0,
        "embedding_model": "m",
        "embedding_dimension": 1,
        "coefficients": [1.0],
        "scaler_mean": [0.0],
        "scaler_scale": [1.0],
    }
    (tmp_path / "probe.json").write_text(json.dumps(probe))
    with pytest.raises(FacepipeError, match="probe.json: target must be text"):
        read_probe_json(tmp_path / "probe.json")
    torch.save({"format": CVAE_CHECKPOINT_FORMAT, "config": {}, "model": {}, "epoch": "3"}, tmp_path / "c.pt")
    with pytest.raises(FacepipeError, match="c.pt: epoch must be a whole number"):
        load_checkpoint(tmp_path / "c.pt")


@pytest.mark.fast
def test_an_embed_progress_file_with_nothing_done_yet_reads_as_empty(tmp_path):
    """A Ctrl-C before the first batch leaves a progress file with no embedding: the plain rerun starts from it
    (it is not a damaged file)."""
    from facepipe.formats import Embeddings, read_embeddings_checkpoint, write_embeddings_checkpoint

    path = tmp_path / "f.csv.partial.npz"
    write_embeddings_checkpoint(path, Embeddings([], np.zeros((0, 128), np.float32), {"model": "dlib-resnet128"}))
    progress = read_embeddings_checkpoint(path)
    assert progress.names == [] and progress.vectors.shape == (0, 128) and progress.meta["model"] == "dlib-resnet128"


@pytest.mark.fast
def test_a_checkpoint_with_a_huge_cluster_id_is_one_line():
    from facepipe.cvae import CVAEConfig

    for clusters in ([2**70, 1, 2], [True, 1], [0, MAX_GROUP_NUMBER + 1]):
        with pytest.raises(FacepipeError, match="clusters must be a list of cluster ids"):
            CVAEConfig(image_size=32, clusters=clusters).check()
    CVAEConfig(image_size=32, clusters=[0, 4, MAX_GROUP_NUMBER]).check()


@pytest.mark.fast
def test_a_header_only_cluster_results_is_damaged_where_its_sidecar_counts_faces(tmp_path):
    path = _results(tmp_path, "0")
    path.write_text("name,cluster,distance\n")
    sidecar_path(path).write_text(json.dumps({"crops_dir": "crops", "items": 3}))
    with pytest.raises(FacepipeError, match=r"cluster_results.csv has no rows but its sidecar .* counts 3 faces"):
        read_cluster_results(path)
    result = CliRunner().invoke(main, ["export", str(tmp_path), "-o", str(tmp_path / "x")])
    assert result.exit_code == 1 and "no rows" in result.output and not (tmp_path / "x").exists()
    sidecar_path(path).write_text(json.dumps({"crops_dir": "crops", "items": 0}))
    assert read_cluster_results(path).empty
