"""The fast tier (``pytest -m fast``): file formats, the run config, image inputs and the label join on small
synthetic data written by the tests themselves; no ../shared, no model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from facepipe.common import FacepipeError
from facepipe.config import config_to_toml, default_config, load_config
from facepipe.formats import (
    Embeddings,
    read_alignment,
    read_centroids,
    read_embeddings,
    recorded_path,
    sidecar_path,
    write_alignment,
    write_centroids,
    write_embeddings,
)
from facepipe.images import collect_images, load_image_rgb, save_image_atomic
from facepipe.labels import attach_labels

pytestmark = pytest.mark.fast


@pytest.mark.parametrize("suffix", [".csv", ".npz"])
def test_embeddings_round_trip_with_their_sidecar(tmp_path, suffix):
    vectors = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    written = Embeddings([f"p{i}/face {i}.jpg" for i in range(5)], vectors, {"model": "dlib-resnet128"})
    path = tmp_path / f"features{suffix}"
    write_embeddings(path, written)
    read = read_embeddings(path)
    assert read.names == written.names and read.model == "dlib-resnet128"
    assert np.array_equal(read.vectors, vectors)  # float32 values survive the CSV exactly
    assert sidecar_path(path).is_file()


def test_centroids_and_alignment_round_trip(tmp_path):
    centroids = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    write_centroids(tmp_path / "centroids.csv", centroids)
    assert np.array_equal(read_centroids(tmp_path / "centroids.csv"), centroids)
    landmarks = {"a.jpg": np.arange(10).reshape(5, 2), "b/c.jpg": np.arange(10, 20).reshape(5, 2)}
    write_alignment(tmp_path / "alignment.csv", landmarks)
    read = read_alignment(tmp_path / "alignment.csv")
    assert set(read) == set(landmarks) and all(np.array_equal(read[k], landmarks[k]) for k in landmarks)
    (tmp_path / "bad.csv").write_text("name,x0\na.jpg,1\n")
    with pytest.raises(FacepipeError, match="alignment CSV"):
        read_alignment(tmp_path / "bad.csv")


def test_recorded_paths_follow_the_data_file(tmp_path, monkeypatch):
    (tmp_path / "run" / "temp").mkdir(parents=True)
    data_file = tmp_path / "run" / "cluster_results.csv"
    assert recorded_path("temp", data_file) == tmp_path / "run" / "temp"  # beside the data file
    assert recorded_path(tmp_path / "elsewhere", data_file) == tmp_path / "elsewhere"  # absolute as it is
    (tmp_path / "crops").mkdir()
    monkeypatch.chdir(tmp_path)
    assert recorded_path("crops", data_file).resolve() == tmp_path / "crops"  # only from here: from here


def test_config_overrides_types_and_unknown_keys(tmp_path):
    config_file = tmp_path / "my.toml"
    config_file.write_text('[cluster]\nk = 5\n[run]\nlabels = "labels.csv"\n')
    config = load_config(config_file, ["train_cvae.epochs=3", "generate.temperature=0.5"])
    assert config["cluster"]["k"] == 5 and config["train_cvae"]["epochs"] == 3
    assert config["generate"]["temperature"] == 0.5 and config["detect"] == default_config()["detect"]
    assert config["run"]["labels"] == str(tmp_path / "labels.csv")  # relative to the config file
    written = tmp_path / "written.toml"
    written.write_text(config_to_toml(config))
    assert load_config(written) == config
    with pytest.raises(FacepipeError, match="unknown option"):
        load_config(None, ["cluster.kk=3"])
    config_file.write_text("[cluster\n")
    with pytest.raises(FacepipeError, match="not valid TOML"):
        load_config(config_file)


def test_inputs_folders_lists_and_odd_images(tmp_path):
    folder = tmp_path / "photos" / "sub dir"
    folder.mkdir(parents=True)
    grey = np.full((6, 8), 100, dtype=np.uint8)
    from PIL import Image

    Image.fromarray(grey).save(folder / "grey.PNG")
    Image.fromarray(np.zeros((4, 4, 4), dtype=np.uint8), "RGBA").save(tmp_path / "alpha.png")
    (tmp_path / "photos" / ".hidden.jpg").write_bytes(b"")
    (tmp_path / "list.txt").write_text("# photos\nalpha.png\n\nphotos\n")
    found = collect_images([tmp_path / "list.txt"])
    assert [p.name for p in found] == ["alpha.png", "grey.PNG"]
    assert load_image_rgb(folder / "grey.PNG").shape == (6, 8, 3)
    assert load_image_rgb(tmp_path / "alpha.png").shape == (4, 4, 3)
    save_image_atomic(tmp_path / "out.png", np.zeros((3, 3, 3), dtype=np.uint8))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("out")] == ["out.png"]
    with pytest.raises(FacepipeError, match="input not found"):
        collect_images([tmp_path / "missing"])


def test_labels_join_by_source_photo_and_by_name(tmp_path):
    crops = tmp_path / "crops"
    crops.mkdir()
    pd.DataFrame({"crop": ["x_0.jpg", "y_0.jpg"], "source": ["/photos/Ann/1.jpg", "/photos/Bob/2.jpg"]}).to_csv(
        crops / "detections.csv", index=False
    )
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"relpath": ["Ann/1.jpg", "Bob/2.jpg"], "identity": ["Ann", "Bob"], "bald": [0, 1]}).to_csv(
        manifest, index=False
    )
    joined = attach_labels(["x_0.jpg", "y_0.jpg", "z_0.jpg"], manifest, crops)
    assert joined["identity"].tolist()[:2] == ["Ann", "Bob"] and joined["matched"].tolist() == [True, True, False]
    pd.DataFrame({"identity": ["Ann"]}).to_csv(tmp_path / "no_key.csv", index=False)
    with pytest.raises(FacepipeError, match="relpath"):
        attach_labels(["x_0.jpg"], tmp_path / "no_key.csv", crops)


def test_one_naming_rule_for_inputs_and_outputs_and_the_old_spellings_retired():
    """The thing a command works on is its argument and what it writes is -o/--out; the spellings from before the
    rule are gone (README, "Changes"): each is an unknown option, as `--from train_cvae` is an unknown stage."""
    from click.testing import CliRunner

    from facepipe.cli import main

    old_spellings = {
        ("detect",): (),
        ("embed",): ("--output",),
        ("cluster",): (),
        ("run",): (),
        ("train-cvae",): ("--clusters", "--weights-dir", "--latent", "--channels", "--lr"),
        ("generate",): ("--checkpoint",),
        ("probe", "train"): ("--embeddings",),
        ("probe", "predict"): ("--embeddings",),
        ("probe", "evaluate"): ("--embeddings", "--out-dir"),
    }
    for command, spellings in old_spellings.items():
        text = CliRunner().invoke(main, [*command, "--help"]).output
        assert "-o, --out" in text, command
        for old in spellings:
            assert f"{old} " not in text, (command, old)
            result = CliRunner().invoke(main, [*command, old, "x"])
            assert result.exit_code == 2 and f"No such option '{old}'" in result.output, (command, old)
    result = CliRunner().invoke(main, ["run", "--from", "train_cvae", "--print-config"])
    assert result.exit_code == 2 and "train-cvae" in result.output
    result = CliRunner().invoke(main, ["probe", "predict", "--probe", "p.json"])
    assert result.exit_code == 2 and "Missing argument 'EMBEDDINGS'" in result.output


def test_people_corrections_follow_earlier_merges():
    """A merge chain, a move into a merged group and a not-a-person mark on one: each sees the merges before it."""
    from facepipe.people import People, apply_people

    labels = np.array([0, 0, 7, 7, 9, 9, 3, 3])
    names = [f"f{i}.jpg" for i in range(len(labels))]
    people = People(names={7: "Seven"}, merges=[[0, 7], [7, 9]], moves={"f6.jpg": 9}, not_a_person=[])
    corrected, named, numbers = apply_people(labels, names, people, {0: 0, 3: 3, 7: 7, 9: 9})
    assert corrected.tolist() == [0, 0, 0, 0, 0, 0, 0, 3] and named == {0: "Seven"} and numbers == {0: 0, 3: 3}
    gone, _, _ = apply_people(labels, names, People(merges=[[0, 7]], not_a_person=[7]), {0: 0, 3: 3, 7: 7, 9: 9})
    assert gone.tolist() == [-1, -1, -1, -1, 9, 9, 3, 3]


def test_group_names_round_trip_as_written(tmp_path):
    """groups.csv keeps a name as the user wrote it: "NA" is no missing value, "007" no number, "=x" no formula."""
    from facepipe.formats import GROUPS_CSV, group_names, write_groups

    write_groups(tmp_path, [3, 2, 1, 4], {0: "NA", 1: "007", 3: "=x"})
    assert group_names(tmp_path) == {0: "NA", 1: "007", 3: "=x"}
    assert "'=x" in (tmp_path / GROUPS_CSV).read_text()
