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
from facepipe.formats import CLUSTER_RESULTS_CSV, PEOPLE_TOML, SUGGESTION_COLUMNS, UNKNOWN_CLUSTER
from facepipe.people import People, read_people, write_people
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


@pytest.fixture
def client(folder):
    """A TestClient of a review session on ``folder`` (its lock held), as the browser reaches it, and the session."""
    from starlette.testclient import TestClient

    from facepipe.review import review_session
    from facepipe.review_page import review_app

    with review_session(folder) as (session, _, _):
        with TestClient(review_app(session), base_url="http://127.0.0.1:8123") as test_client:
            yield test_client, session


def test_review_refuses_requests_without_the_token_from_another_host_or_naming_a_path(client):
    http, session = client
    token = {"token": session.token}
    page = http.get("/", params=token)
    assert page.status_code == 200 and page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert http.get("/").status_code == 403 and http.get("/", params={"token": "x" * 32}).status_code == 403
    assert http.get("/", params=token, headers={"Host": "evil.example:8123"}).status_code == 400  # DNS rebinding
    assert http.get("/face/0", params=token).status_code == 200
    assert http.get("/face/0").status_code == 403
    results = pd.read_csv(session.folder / CLUSTER_RESULTS_CSV)
    assert http.get(f"/face/{len(results)}", params=token).status_code == 404  # a crop not in the clustering
    for path in (
        "/face/../../etc/passwd",
        "/face/%2e%2e%2fimage_features.csv",
        "/face//etc/passwd",
        "/face/-1",
        "/aggregate/0",
        "/../image_features.csv",
        f"/{session.folder}/image_features.csv",
        "/face/" + results["name"].iloc[0],
    ):
        answer = http.get(path, params=token)
        assert answer.status_code == 404 and b"e0" not in answer.content, path
    generated = session.folder / "inference_results"  # generate's CVAE faces, where it ran
    generated.mkdir()
    shutil.copy(SAMPLES / "images" / "Kofi_Annan" / "Kofi_Annan_0001.jpg", generated / "cluster_0.png")
    assert http.get("/aggregate/0", params=token).content == (generated / "cluster_0.png").read_bytes()
    assert http.get("/aggregate/0").status_code == 403 and http.get("/aggregate/999", params=token).status_code == 404
    assert 'alt="group 0: CVAE face"' in http.get("/", params=token).text
    edit = {"action": "name", "group": 0, "name": "Someone"}
    assert http.post("/edit", json=edit).status_code == 403  # no token
    assert http.post("/edit", params=token, json=edit).status_code == 403  # in the URL is not enough for a POST
    assert http.get("/edit", params=token).status_code == 405  # state changes only by POST
    assert not (session.folder / PEOPLE_TOML).exists()
    header = {"X-Facepipe-Token": session.token}
    for bad in (
        {"action": "name", "group": 999, "name": "x"},
        {"action": "move", "faces": ["../x"], "group": 0},
        {"action": "split", "faces": []},
        {"action": "delete"},
        [1, 2],
    ):
        answer = http.post("/edit", headers=header, json=bad)
        assert answer.status_code == 400 and answer.json()["error"], bad
    assert http.post("/edit", headers=header, json=edit).status_code == 200
    assert read_people(session.folder / PEOPLE_TOML).names == {0: "Someone"}
    assert http.post("/undo", headers=header).status_code == 200 and not (session.folder / PEOPLE_TOML).exists()


def test_a_second_review_or_a_cluster_run_on_the_folder_is_stopped_by_the_lock(folder):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "facepipe"]
    first = subprocess.Popen(
        [*command, "review", str(folder), "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert "review: http://127.0.0.1:" in first.stdout.readline()
        for second in (
            ["review", str(folder), "--no-browser"],
            ["cluster", str(folder / "image_features.csv"), "-o", str(folder), "--force"],
        ):
            done = subprocess.run([*command, *second], capture_output=True, text=True, env=env, timeout=120)
            assert done.returncode == 1 and "in use by another facepipe command" in done.stderr + done.stdout
            assert "Traceback" not in done.stderr
    finally:
        first.terminate()
        first.wait(timeout=30)


def _face_names(browser, group: int) -> list[str]:
    return browser.execute_script(
        f"return Array.from(document.querySelectorAll('#group-{group} .face')).map(f => f.alt)"
    )


def test_review_in_a_real_browser_names_merges_splits_and_answers_suggestions(folder, tmp_path):
    """Chromium on the page: name a group, merge two, split one, accept a suggestion and reject the next;
    then export and the report show the names, and a rerun of cluster keeps every edit."""
    import threading

    from helpers import headless_chromium
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from facepipe.config import load_config
    from facepipe.export import export
    from facepipe.report import write_report
    from facepipe.review import review_session
    from facepipe.review_page import server_for

    with review_session(folder) as (session, listener, url):
        server = server_for(session)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
        thread.start()
        browser = headless_chromium("1400,1800")
        try:
            browser.get(url)

            def edits(count: int) -> None:
                WebDriverWait(browser, 120).until(
                    lambda b: b.execute_script("return document.body.dataset.edits") == str(count)
                )

            groups = [
                int(g)
                for g in browser.execute_script(
                    "return Array.from(document.querySelectorAll('.group')).map(g => g.dataset.group)"
                )
                if int(g) >= 0
            ]
            assert len(groups) >= 4, groups
            named, merged = groups[0], groups[1:3]
            named_faces, merged_faces = (
                _face_names(browser, named),
                _face_names(browser, merged[0]) + _face_names(browser, merged[1]),
            )
            box = browser.find_element(By.CSS_SELECTOR, f"#group-{named} input[name=name]")
            box.clear()
            box.send_keys("Ada Lovelace", Keys.ENTER)
            edits(1)
            for group in merged:
                browser.find_element(By.CSS_SELECTOR, f"#group-{group} .choose").click()
            browser.find_element(By.TAG_NAME, "body").send_keys("m")  # the shortcut
            edits(2)
            kept = min(merged)
            split_group = next(g for g in groups if g not in (named, kept) and len(_face_names(browser, g)) >= 3)
            faces = browser.find_elements(By.CSS_SELECTOR, f"#group-{split_group} .face")[:2]
            split_faces = [face.get_attribute("alt") for face in faces]
            for face in faces:
                face.click()
            browser.find_element(By.ID, "split").click()
            edits(3)
            split_number = int(
                browser.execute_script(
                    f"return document.querySelector('img[alt=\"{split_faces[0]}\"]').closest('.group').dataset.group"
                )
            )
            queue = browser.execute_script(
                "return Array.from(document.querySelectorAll('#queue li')).map(i => JSON.parse(i.dataset.suggestion))"
            )
            edited = {named, kept, split_number}
            position = next(i for i, s in enumerate(queue) if not {s["group"], s["other"]} & edited)
            accepted = queue[position]
            together = ([accepted["face"]] if accepted["kind"] == "unknown" else []) + [
                face
                for g in (accepted["group"], accepted["other"])
                if accepted["kind"] != "outlier" and g is not None
                for face in _face_names(browser, g)
            ]
            browser.find_element(By.TAG_NAME, "body").send_keys("j" * position + "a")  # j: the next suggestion
            edits(4)
            rejected = browser.execute_script(
                "return JSON.parse(document.querySelector('#queue li').dataset.suggestion)"
            )
            browser.find_element(By.CSS_SELECTOR, "#queue li .reject").click()
            edits(5)
            errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
            browser.save_screenshot(str(tmp_path / "review.png"))
        finally:
            browser.quit()
            server.should_exit = True
            thread.join(timeout=30)
    assert not errors, errors

    people = read_people(folder / PEOPLE_TOML)
    assert people.names[named] == "Ada Lovelace" and sorted(merged) in people.merges
    assert (split_faces, "") in people.splits
    if rejected["kind"] == "merge":
        assert (rejected["group"], rejected["other"]) in people.rejected_merges
    else:
        assert (rejected["face"], rejected["group"]) in people.rejected_faces

    def check_clustering() -> dict[int, str]:
        results = pd.read_csv(folder / CLUSTER_RESULTS_CSV).set_index("name")["cluster"]
        names = dict(pd.read_csv(folder / "groups.csv", keep_default_na=False)[["cluster", "person"]].values)
        assert {names[results[face]] for face in named_faces} == {"Ada Lovelace"}
        assert results[merged_faces].nunique() == 1 and results[split_faces].nunique() == 1
        assert results[split_faces[0]] not in set(results[merged_faces]) | {results[named_faces[0]], -1}
        if accepted["kind"] == "outlier":
            assert results[accepted["face"]] == UNKNOWN_CLUSTER
        else:
            assert results[together].nunique() == 1 and results[together[0]] != UNKNOWN_CLUSTER
        return names

    check_clustering()
    exported = tmp_path / "export"
    export(folder, exported, show_progress=False)
    assert (exported / "Ada Lovelace").is_dir() and any((exported / "Ada Lovelace").iterdir())
    page = write_report(folder, {"stages": {}, "facepipe_version": "test", "seconds": 0.0}, load_config())
    assert f"Cluster {named}: Ada Lovelace</h3>" in page.read_text(encoding="utf-8")
    cluster(
        folder / "image_features.csv", folder, samples_dir=folder / "cluster_samples", force=True, show_progress=False
    )  # a rerun: people.toml in the folder is followed without being named
    check_clustering()
    offered = suggest(folder)
    if rejected["kind"] == "merge":
        assert not ((offered["group"] == rejected["group"]) & (offered["other"] == rejected["other"])).any()
    else:
        assert not ((offered["face"] == rejected["face"]) & (offered["group"] == rejected["group"])).any()


def test_edits_of_a_number_merged_away_go_by_faces_and_a_run_folder_report_follows(client):
    """After merging groups 0 and 1, number 1 goes to another group: naming that group (or marking it not a
    person) must not touch the merged one. In a run folder, report.html is rewritten after each edit."""
    from facepipe.config import load_config, save_config
    from facepipe.formats import write_json_atomic
    from facepipe.report import write_report

    http, session = client
    folder, header = session.folder, {"X-Facepipe-Token": session.token}
    summary = {"stages": {}, "facepipe_version": "test", "seconds": 0.0}
    write_json_atomic(folder / "summary.json", summary)
    save_config(load_config(), folder / "config.toml")
    write_report(folder, summary, load_config())
    before = pd.read_csv(folder / CLUSTER_RESULTS_CSV).set_index("name")["cluster"]
    first, second = before[before == 0].index.tolist(), before[before == 1].index.tolist()
    assert http.post("/edit", headers=header, json={"action": "merge", "groups": [0, 1]}).status_code == 200
    merged = pd.read_csv(folder / CLUSTER_RESULTS_CSV).set_index("name")["cluster"]
    assert set(merged[first + second]) == {0}
    other = merged[merged == 1].index.tolist()
    assert other and not set(other) & set(first + second)
    assert http.post("/edit", headers=header, json={"action": "name", "group": 1, "name": "Other"}).status_code == 200
    after = pd.read_csv(folder / CLUSTER_RESULTS_CSV).set_index("name")["cluster"]
    names = dict(pd.read_csv(folder / "groups.csv", keep_default_na=False)[["cluster", "person"]].values)
    assert {names[g] for g in after[other]} == {"Other"} and {names[g] for g in after[first + second]} == {""}
    assert after[other].nunique() == 1 and f"Cluster {after[other[0]]}: Other</h3>" in (
        folder / "report.html"
    ).read_text(encoding="utf-8")
    number = int(after[other[0]])
    assert http.post("/edit", headers=header, json={"action": "not_a_person", "group": number}).status_code == 200
    last = pd.read_csv(folder / CLUSTER_RESULTS_CSV).set_index("name")["cluster"]
    assert (last[other] == UNKNOWN_CLUSTER).all() and set(last[first + second]) == {0}
    for count in range(3):
        assert http.post("/undo", headers=header).status_code == 200
    assert http.post("/undo", headers=header).json()["error"] == "nothing to undo"
    assert (pd.read_csv(folder / CLUSTER_RESULTS_CSV).set_index("name")["cluster"] == before).all()


USERS_PEOPLE_FILE = """# Our family archive: who is who (written by hand, kept by facepipe)
[names]   # checked against the 1998 album
0 = "Kofi Annan"   # the one in the blue suit

[[rejected]]
groups = [2, 3]    # brothers, not one person
"""


def test_review_edits_the_users_own_people_file_in_place_and_undo_gives_it_back_byte_for_byte(client):
    """A people file the user wrote by hand keeps its comments and layout through review's edits (only the
    entries that change are written), and undo puts back the very bytes the user wrote."""
    http, session = client
    header = {"X-Facepipe-Token": session.token}
    session.people_file.write_text(USERS_PEOPLE_FILE, encoding="utf-8")
    assert http.post("/edit", headers=header, json={"action": "name", "group": 1, "name": "Other"}).status_code == 200
    edited = session.people_file.read_text(encoding="utf-8")
    assert set(USERS_PEOPLE_FILE.splitlines()) <= set(edited.splitlines()), edited
    assert read_people(session.people_file) == People(names={0: "Kofi Annan", 1: "Other"}, rejected_merges={(2, 3)})
    assert http.post("/edit", headers=header, json={"action": "name", "group": 0, "name": ""}).status_code == 200
    edited = session.people_file.read_text(encoding="utf-8")
    assert "blue suit" not in edited and "# checked against the 1998 album" in edited and "brothers" in edited
    for count in range(2):
        assert http.post("/undo", headers=header).status_code == 200
    assert session.people_file.read_text(encoding="utf-8") == USERS_PEOPLE_FILE


@pytest.mark.fast
def test_any_edit_of_a_commented_people_file_reads_back_as_the_edit_and_keeps_the_untouched_comments(tmp_path):
    """Seeded random edits of every kind on the documented example (docs/commands.md, with its comments): each
    written file reads back as exactly the edit, and the comments on the sections' first lines stay."""
    import random

    from facepipe.people import people_text

    doc = (REPO / "docs" / "commands.md").read_text(encoding="utf-8")
    start = doc.index("```toml\nmerge = ") + len("```toml\n")
    text = doc[start : doc.index("```", start)]
    path = tmp_path / PEOPLE_TOML
    path.write_text(text, encoding="utf-8")
    people = read_people(path)
    edits = [
        lambda p, r: p.names.update({r.randrange(20): r.choice(["Ann", "Bo Li", "成龙"])}),
        lambda p, r: p.names.pop(r.choice(sorted(p.names)), None) if p.names else None,
        lambda p, r: p.merges.append([r.randrange(20), 20 + r.randrange(20)]),
        lambda p, r: p.merges[0].append(40 + r.randrange(20)) if p.merges else None,
        lambda p, r: p.merges.pop(0) if p.merges else None,
        lambda p, r: p.not_a_person.append(r.randrange(60)),
        lambda p, r: p.moves.update({f"face_{r.randrange(9)}.jpg": r.randrange(-1, 9)}),
        lambda p, r: p.moves.pop(r.choice(sorted(p.moves)), None) if p.moves else None,
        lambda p, r: p.splits.append(([f"s{r.randrange(9)}.jpg"], r.choice(["", "Hans"]))),
        lambda p, r: p.rejected_merges.add((r.randrange(5), 5 + r.randrange(5))),
        lambda p, r: p.rejected_faces.discard(min(p.rejected_faces)) if p.rejected_faces else None,
    ]
    generator = random.Random(0)
    for step in range(300):
        generator.choice(edits)(people, generator)
        write_people(path, people)
        assert read_people(path) == people, (step, path.read_text(encoding="utf-8"))
    text = path.read_text(encoding="utf-8")
    assert "# group number = name" in text and "# suggestions turned down" in text
    assert people_text(People(names={0: "A"})) == '[names]\n0 = "A"\n'


@pytest.mark.fast
def test_an_edit_keeps_the_people_files_permissions_and_edits_a_symlinks_target(tmp_path):
    """A people file the user keeps private (0600), reached through a symlink (a synced folder, say): an edit
    writes the target, keeps the link a link and the file private; so does putting the earlier text back (undo)."""
    import stat

    from facepipe.people import write_people_text

    target = tmp_path / "synced" / "people.toml"
    target.parent.mkdir()
    target.write_text(USERS_PEOPLE_FILE, encoding="utf-8")
    target.chmod(0o600)
    link = tmp_path / "run" / PEOPLE_TOML
    link.parent.mkdir()
    link.symlink_to(target)
    people = read_people(link)
    people.names[4] = "Ann"
    write_people(link, people)
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert read_people(target) == people and "# the one in the blue suit" in target.read_text(encoding="utf-8")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and sorted(p.name for p in target.parent.iterdir()) == [
        "people.toml"
    ]
    write_people_text(link, USERS_PEOPLE_FILE)
    assert link.is_symlink() and target.read_text(encoding="utf-8") == USERS_PEOPLE_FILE
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_people_file_rejected_entries_round_trip_and_bad_ones_are_one_line(tmp_path):
    people = People(
        names={0: 'Ann "A" Lee', 3: "成龙"},
        merges=[[0, 7]],
        not_a_person=[9],
        moves={"a b.jpg": -1},
        splits=[(["x.jpg", "y.jpg"], "Hans"), (["z.jpg"], "")],
        rejected_merges={(2, 5)},
        rejected_faces={("t.jpg", 4)},
    )
    write_people(tmp_path / "p.toml", people)
    assert read_people(tmp_path / "p.toml") == people
    for text in (
        "[[rejected]]\ngroups = [1]\n",
        '[[rejected]]\nface = "x.jpg"\n',
        '[[rejected]]\ngroups = [1, 2]\nface = "x.jpg"\n',
        "rejected = 3\n",
        "[[rejected]]\nface = 3\ngroup = 1\n",
    ):
        (tmp_path / "bad.toml").write_text(text)
        with pytest.raises(FacepipeError) as error:
            read_people(tmp_path / "bad.toml")
        assert "\n" not in str(error.value) and "bad.toml" in str(error.value)
