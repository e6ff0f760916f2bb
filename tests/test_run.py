"""run: the whole chain on a small real LFW set, every output and the report's links, and reruns."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from facepipe.cli import main
from facepipe.common import FacepipeError
from facepipe.config import config_to_toml, load_config
from facepipe.formats import sample_grid
from facepipe.run import run

WOMEN = ["Angelina_Jolie", "Naomi_Watts", "Nicole_Kidman", "Venus_Williams", "Meryl_Streep", "Hillary_Clinton"]
MEN = ["Kofi_Annan", "Jackie_Chan", "Hans_Blix", "Tony_Blair", "Colin_Powell", "Bill_Gates"]
PHOTOS_EACH = 4


class LinkCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.sources, self.ids = [], [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and "href" in attrs:
            self.hrefs.append(attrs["href"])
        if tag == "img":
            self.sources.append(attrs.get("src", ""))


@pytest.fixture(scope="module")
def small_set(data_dir, tmp_path_factory):
    """A list file of 4 photos each of 6 women and 6 men from LFW, and the LFW manifest."""
    lfw = data_dir("lfw")
    rows = list(csv.DictReader(open(lfw / "manifest.csv", encoding="utf-8")))
    chosen = []
    for person in WOMEN + MEN:
        chosen += sorted(r["relpath"] for r in rows if r["identity"] == person)[:PHOTOS_EACH]
    listing = tmp_path_factory.mktemp("inputs") / "photos.txt"
    listing.write_text("\n".join(str(lfw / r) for r in chosen) + "\n", encoding="utf-8")
    return listing, lfw / "manifest.csv"


def small_config(labels: Path, **cluster):
    config = load_config(
        None,
        [
            "detect.largest_only=true",
            'embed.model="dlib-resnet128"',
            "cluster.k_range=[2, 16]",
            "train_cvae.epochs=3",
            "train_cvae.image_size=32",
            "generate.samples=2",
            'probe.targets=["male"]',
            "probe.folds=2",
            "probe.holdout=0.34",
        ],
    )
    config["run"]["labels"] = str(labels)
    config["cluster"].update(cluster)
    return config


@pytest.fixture(scope="module")
def finished_run(small_set, tmp_path_factory):
    listing, manifest = small_set
    out = tmp_path_factory.mktemp("run")
    summary = run([listing], out, small_config(manifest), show_progress=False)
    return out, summary, listing, manifest


def test_run_writes_every_output(finished_run):
    out, summary, _, _ = finished_run
    statuses = {s.name: s.status for s in summary.stages}
    assert statuses == {name: "ran" for name in ("detect", "embed", "cluster", "train_cvae", "generate", "probe")}
    for relative in (
        "temp/detections.csv",
        "image_features.csv",
        "image_features.csv.json",
        "cluster_results.csv",
        "k_selection.csv",
        "cluster_samples/overview.jpg",
        "weights/cvae_best.pt",
        "inference_results/clusters_sheet.png",
        "inference_results/fidelity.json",
        "probe/male.json",
        "report.html",
        "run.log",
        "summary.json",
        "config.toml",
        "state.json",
    ):
        assert (out / relative).is_file(), relative
    faces = pd.read_csv(out / "temp/detections.csv")
    features = pd.read_csv(out / "image_features.csv")
    assert len(faces) >= 0.9 * len(WOMEN + MEN) * PHOTOS_EACH and len(features) == len(faces)
    assert not (out / "elbow.png").exists()  # the default for dlib embeddings: the same-person graph, no k to choose
    clusters = sorted(c for c in pd.read_csv(out / "cluster_results.csv")["cluster"].unique() if c >= 0)
    for cluster in clusters:
        assert (out / "cluster_samples" / sample_grid(cluster)).is_file()
        assert (out / f"inference_results/cluster_{cluster}.png").is_file()
        assert (out / f"inference_results/cluster_{cluster}_mean.png").is_file()

    data = json.loads((out / "summary.json").read_text())
    assert data["stages"]["detect"]["faces"] == len(faces)
    assert data["stages"]["cluster"]["k"] == len(clusters)
    assert data["stages"]["cluster"]["metrics"]["bcubed_f"] > 0.8  # dlib separates 12 people well
    assert data["stages"]["probe"]["targets"]["male"]["count"] > 0
    assert load_config(out / "config.toml")["train_cvae"]["epochs"] == 3  # the config used is saved and loads
    assert "cluster:" in (out / "run.log").read_text()


def test_report_is_self_contained_and_its_links_resolve(finished_run):
    out, _, _, _ = finished_run
    page = LinkCollector()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    groups = pd.read_csv(out / "cluster_results.csv")["cluster"]
    # overview, then per group: grid, CVAE face, pixel mean and random draws (generate.samples=2)
    assert len(page.sources) >= 1 + 4 * groups[groups >= 0].nunique()
    text = (out / "report.html").read_text(encoding="utf-8")
    fidelity = text[text.index('<h2 id="fidelity">') : text.index('<h2 id="probe">')]
    assert "random draws" in fidelity and "sharpness" in fidelity
    assert all(src.startswith("data:image/") for src in page.sources)
    assert page.hrefs
    for href in page.hrefs:
        if href.startswith("#"):
            assert href[1:] in page.ids, href
        else:
            assert (out / href).is_file(), href
    assert {"stages", "clusters", "fidelity", "probe", "versions"} <= page.ids


def test_changing_k_reruns_cluster_and_later_stages_only(finished_run, tmp_path):
    out, first, listing, manifest = finished_run
    crops_before = {p.name: p.stat().st_mtime_ns for p in (out / "temp").glob("*.jpg")}
    features_before = (out / "image_features.csv").stat().st_mtime_ns
    chosen_k = next(s for s in first.stages if s.name == "cluster").details["k"]

    again = run([listing], out, small_config(manifest), show_progress=False)
    assert {s.name: s.status for s in again.stages} == {
        name: "skipped" for name in ("detect", "embed", "cluster", "train_cvae", "generate", "probe")
    }

    changed = run([listing], out, small_config(manifest, k=chosen_k + 1), show_progress=False)
    statuses = {s.name: s.status for s in changed.stages}
    assert statuses == {
        "detect": "skipped",
        "embed": "skipped",
        "cluster": "ran",
        "train_cvae": "ran",
        "generate": "ran",
        "probe": "skipped",
    }
    details = next(s for s in changed.stages if s.name == "cluster").details
    assert details["k_rule"].startswith(f"k = {chosen_k + 1}: given")  # a k given means k-means
    groups = pd.read_csv(out / "cluster_results.csv")["cluster"]
    assert groups[groups >= 0].nunique() == details["k"] >= chosen_k
    assert (out / f"inference_results/cluster_{details['k'] - 1}.png").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in (out / "temp").glob("*.jpg")} == crops_before
    assert (out / "image_features.csv").stat().st_mtime_ns == features_before


def test_interrupted_stage_resumes_and_from_forces(finished_run):
    out, _, listing, manifest = finished_run
    config = small_config(manifest, k=5)
    run([listing], out, config, show_progress=False)
    state = json.loads((out / "state.json").read_text())
    state["train_cvae"]["completed"] = False  # as if the run was killed during training
    (out / "state.json").write_text(json.dumps(state))
    resumed = run([listing], out, config, show_progress=False)
    statuses = {s.name: s.status for s in resumed.stages}
    assert statuses["cluster"] == "skipped" and statuses["train_cvae"] == "resumed"
    assert statuses["generate"] == "skipped"  # its input fingerprint did not change

    forced = run([listing], out, config, from_stage="generate", show_progress=False)
    statuses = {s.name: s.status for s in forced.stages}
    assert statuses["train_cvae"] == "skipped" and statuses["generate"] == "ran" and statuses["probe"] == "ran"


def test_cli_run_prints_json_summary_and_config(finished_run, tmp_path):
    out, _, listing, manifest = finished_run
    config_file = tmp_path / "facepipe.toml"
    config_file.write_text(config_to_toml(small_config(manifest, k=5)))
    result = CliRunner().invoke(
        main, ["run", str(listing), "--out", str(out), "--config", str(config_file), "--json", "-q"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["stages"]["embed"]["status"] == "skipped"

    printed = CliRunner().invoke(main, ["run", "--print-config"])
    assert printed.exit_code == 0 and "[train_cvae]" in printed.output and "min_neighbors = 45" in printed.output


@pytest.mark.fast
def test_bad_config_is_refused_before_anything_runs(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[cluster]\nkk = 3\n")
    with pytest.raises(FacepipeError, match="unknown option"):
        load_config(bad)
    with pytest.raises(FacepipeError, match="section.option=value"):
        load_config(None, ["k=3"])
    result = CliRunner().invoke(main, ["run", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(bad)])
    assert result.exit_code == 2 and "unknown option" in result.output  # a bad config: README's 2
    assert not (tmp_path / "o").exists()
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--model",
            "vggface2-resnet50",
            "--set",
            "train_cvae.identity_weight=10",
        ],
    )
    assert result.exit_code == 1 and "identity term needs dlib-resnet128" in result.output
    assert not (tmp_path / "o").exists()


def test_report_shows_who_is_where(finished_run):
    """Issue 16: per group its photos and the faces farthest from its centroid, per-cluster fidelity, the
    photos without a face, and the CVAE's loss curve."""
    out, _, listing, _ = finished_run
    text = (out / "report.html").read_text(encoding="utf-8")
    faces = pd.read_csv(out / "cluster_results.csv").merge(
        pd.read_csv(out / "temp/detections.csv"), left_on="name", right_on="crop"
    )
    fidelity = json.loads((out / "inference_results/fidelity.json").read_text())
    for cluster, members in faces[faces["cluster"] >= 0].groupby("cluster"):
        card = text[text.index(f'id="cluster-{cluster}"') :]
        card = card[: card.index('<div class="cluster"', 1) if '<div class="cluster"' in card[1:] else len(card)]
        assert f"{len(members)} face(s) in {members['source'].nunique()} photo(s)" in card
        assert Path(sorted(members["source"])[0]).name in card
        assert "farthest from the centroid" in card and "CVAE face" in card and "centroid (cosine" in card
        row = next(r for r in fidelity["per_cluster"] if r["cluster"] == cluster)
        assert ("CVAE face nearest its own centroid" in card) == (row["cvae_nearest"] == cluster)
    assert '<h2 id="no-face">Photos without a face</h2>' in text
    assert "<h3>Training loss</h3><svg" in text and text.count("<polyline") == 2
    assert "No labels were given" not in text


def test_report_in_a_real_headless_browser(finished_run, tmp_path):
    """The report, moved to another folder, rendered by Chromium: every image loads, no script error."""
    import shutil

    from helpers import headless_chromium

    out, _, _, _ = finished_run
    moved = tmp_path / "moved run"
    shutil.copytree(out, moved)
    browser = headless_chromium()
    try:
        browser.get((moved / "report.html").as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])"
        )
        links = browser.execute_script(
            "return Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))"
        )
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        browser.save_screenshot(str(tmp_path / "report.png"))
    finally:
        browser.quit()
    assert len(images) > 10 and all(loaded for _, loaded in images), [alt for alt, ok in images if not ok]
    assert not errors, errors
    files = [link for link in links if not link.startswith("#")]
    assert files and all((moved / link).exists() for link in files)
