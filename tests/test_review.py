"""From groups to named people (issue 27): suggestions, the review page (its security, and a real browser
naming, merging, splitting and answering suggestions), on a real clustering of the bundled sample photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from facepipe.cli import main
from facepipe.cluster import cluster
from facepipe.common import FacepipeError
from facepipe.formats import CLUSTER_RESULTS_CSV, SUGGESTION_COLUMNS, UNKNOWN_CLUSTER
from facepipe.people import PEOPLE_TOML, People, read_people, write_people
from facepipe.suggest import suggest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "assets" / "samples"


def clustered_samples(work: Path) -> Path:
    """The bundled sample photos (6 LFW people) detected, embedded and clustered into ``work`` as a run lays a
    folder out (crops in temp/, image_features.csv, the clustering beside them)."""
    from facepipe.detect import DetectorParams, detect
    from facepipe.embed import embed

    detect([SAMPLES / "images"], work / "temp", DetectorParams(largest_only=True), workers=2, show_progress=False)
    embed(work / "temp", work / "image_features.csv", model="dlib-resnet128", workers=2, show_progress=False)
    cluster(work / "image_features.csv", work, samples_dir=work / "cluster_samples", show_progress=False)
    return work


@pytest.fixture(scope="module")
def samples_clustering(tmp_path_factory):
    return clustered_samples(tmp_path_factory.mktemp("samples"))


@pytest.fixture
def folder(samples_clustering, tmp_path):
    """A copy of the sample clustering of one's own (its people file and lock are the test's)."""
    copy = tmp_path / "run"
    shutil.copytree(samples_clustering, copy)
    cluster(copy / "image_features.csv", copy, samples_dir=copy / "cluster_samples", force=True, show_progress=False)
    return copy


def test_suggestions_rank_each_kind_and_leave_out_what_the_people_file_turned_down(folder):
    frame = suggest(folder, folder / "s.csv")
    assert list(pd.read_csv(folder / "s.csv").columns) == SUGGESTION_COLUMNS
    results = pd.read_csv(folder / CLUSTER_RESULTS_CSV)
    groups = results.loc[results["cluster"] >= 0, "cluster"].nunique()
    merges = frame[frame["kind"] == "merge"]
    assert set(merges["group"]) | set(merges["other"]) == set(range(groups))  # each group's nearest is offered
    assert merges["rank"].tolist() == list(range(1, len(merges) + 1))
    assert merges["distance"].is_monotonic_increasing and (merges["group"] < merges["other"]).all()
    unknown = frame[frame["kind"] == "unknown"]
    assert set(unknown["face"]) == set(results.loc[results["cluster"] == UNKNOWN_CLUSTER, "name"])
    first = merges.iloc[0]
    an_unknown = unknown.iloc[0] if len(unknown) else None
    people = People(rejected_merges={(int(first["group"]), int(first["other"]))})
    if an_unknown is not None:
        people.rejected_faces.add((an_unknown["face"], int(an_unknown["group"])))
    write_people(folder / PEOPLE_TOML, people)
    assert read_people(folder / PEOPLE_TOML) == people
    cluster(folder / "image_features.csv", folder, samples_dir=folder / "cluster_samples", show_progress=False)
    again = suggest(folder)
    pairs = set(zip(again.loc[again["kind"] == "merge", "group"], again.loc[again["kind"] == "merge", "other"]))
    assert (first["group"], first["other"]) not in pairs and len(pairs) == len(merges) - 1
    if an_unknown is not None:
        offered = again[(again["kind"] == "unknown") & (again["face"] == an_unknown["face"])]
        assert offered.empty or int(offered["group"].iloc[0]) != int(an_unknown["group"])


def test_suggest_cli_writes_its_csv_and_never_overwrites_another_file(folder, tmp_path):
    out = tmp_path / "suggestions.csv"
    result = CliRunner().invoke(main, ["suggest", str(folder), "-o", str(out)])
    assert result.exit_code == 0 and "merges" in result.output and out.is_file()
    mine = tmp_path / "notes.csv"
    mine.write_text("my,own\n1,2\n")
    result = CliRunner().invoke(main, ["suggest", str(folder), "-o", str(mine)])
    assert result.exit_code == 1 and "not a suggestions CSV" in result.output
    assert mine.read_text() == "my,own\n1,2\n"
    with pytest.raises(FacepipeError, match="out of range"):
        suggest(folder, outlier_distance=-1.0)
