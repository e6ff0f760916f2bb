"""Hostile inputs and a faulty machine against the real command line: counts tracebacks, wrong exit codes and
silent wrong results (issue 18's probe, rerun).

    python benchmarks/probe_faults.py [--work DIR]

Each case is one `facepipe` command in a child process with an expected exit code (0 done, 1 error, 2 bad
usage, 3 done with unreadable inputs) and, for some, a check of what it left behind. The read-only cases run
without root's permission override (util-linux setpriv), the full-disk case on a 160 KiB tmpfs (needs root).
Prints one line per case and the totals; exits 1 if any case fails. ``limit_cases``: issue 28's class 3
(numbers out of range, worker counts, a nan loss, embeddings scaled by 1e30, the same weights beside a
refused command).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LFW = REPO.parent / "shared" / "data" / "lfw" / "images"
PLAIN_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def facepipe(*args, plain_user=False, cwd=None) -> subprocess.CompletedProcess:
    prefix = PLAIN_USER if plain_user else []
    return subprocess.run([*prefix, sys.executable, "-m", "facepipe", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=900)


class Probe:
    def __init__(self, work: Path):
        self.work, self.rows = work, []

    def case(self, name: str, expected: set[int], *args, check=None, plain_user=False) -> None:
        result = facepipe(*args, plain_user=plain_user)
        problems = []
        if "Traceback" in result.stderr:
            problems.append("traceback")
        if result.returncode not in expected:
            problems.append(f"exit {result.returncode}, expected {sorted(expected)}")
        if check is not None:
            problems += [p for p in [check(result)] if p]
        last = (result.stderr.strip().splitlines() or [""])[-1][:110]
        self.rows.append((name, not problems, problems))
        print(f"{'ok ' if not problems else 'BAD'} {name}: exit {result.returncode}; {'; '.join(problems) or last}")


def setup(work: Path) -> dict:
    """Six LFW photos, their crops, dlib embeddings, a clustering and a tiny CVAE to attack."""
    photos = work / "photos"
    photos.mkdir(parents=True)
    for person in ("Kofi_Annan", "Hans_Blix"):
        for photo in sorted((LFW / person).glob("*.jpg"))[:3]:
            shutil.copy(photo, photos / photo.name)
    crops, features, clusters, weights = work / "crops", work / "f.csv", work / "clusters", work / "weights"
    for args in (["detect", photos, "-o", crops, "--min-neighbors", "5", "-q"],
                 ["embed", crops, "-o", features, "--model", "dlib-resnet128", "-q"],
                 ["cluster", features, "-o", clusters, "--k", "2", "-q"],
                 ["train-cvae", clusters / "cluster_results.csv", "-o", weights, "--epochs", "2", "--image-size", "32",
                  "--identity-weight", "0", "-q"]):
        result = facepipe(*args)
        assert result.returncode == 0, result.stderr
    return dict(photos=photos, crops=crops, features=features, clusters=clusters, weights=weights)


def hostile_photos(work: Path, photos: Path) -> Path:
    from PIL import Image

    folder = work / "hostile"
    shutil.copytree(photos, folder)
    first = next(photos.glob("*.jpg")).read_bytes()
    (folder / "random.jpg").write_bytes(np.random.default_rng(0).bytes(5000))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "half.jpg").write_bytes(first[: len(first) // 2])
    (folder / "text.png").write_text("not an image")
    Image.new("L", (13000, 13000)).save(folder / "huge.png")
    (folder / "unreadable.jpg").write_bytes(first)
    (folder / "unreadable.jpg").chmod(0)
    (folder / "private").mkdir()
    (folder / "private" / "x.jpg").write_bytes(first)
    (folder / "private").chmod(0)
    return folder


def run_cases(probe: Probe, data: dict) -> None:
    w = probe.work
    photos, crops, features, clusters, weights = (data[k] for k in ("photos", "crops", "features", "clusters", "weights"))
    results = clusters / "cluster_results.csv"
    hostile = hostile_photos(w, photos)

    def errors_listed(*names):
        def check(_):
            text = (w / "d_hostile" / "errors.csv").read_text()
            missing = [n for n in names if n not in text]
            return f"not in errors.csv: {missing}" if missing else None
        return check

    probe.case("detect: corrupt, empty, truncated, non-image, huge, unreadable file and folder", {3}, "detect",
               hostile, "-o", w / "d_hostile", "-q", "--min-neighbors", "5", plain_user=True,
               check=errors_listed("random.jpg", "empty.jpg", "half.jpg", "text.png", "huge.png", "unreadable.jpg",
                                   "private"))
    (w / "anim.gif").write_bytes(b"GIF89a" + bytes(100))
    probe.case("detect: a .gif input", {1}, "detect", w / "anim.gif", "-o", w / "d_gif", "-q")
    (w / "binary.txt").write_bytes(b"\x00\x01\x02")
    probe.case("detect: a binary list file", {1}, "detect", w / "binary.txt", "-o", w / "d_bin", "-q")
    (w / "latin1.txt").write_bytes(f"{next(photos.glob('*.jpg'))}\n".encode("latin-1"))
    probe.case("detect: a Latin-1 list file", {0}, "detect", w / "latin1.txt", "-o", w / "d_latin", "-q")
    probe.case("detect: a missing input", {1}, "detect", w / "nope", "-o", w / "d_missing", "-q")
    (w / "bad.xml").write_text("<x/>")
    probe.case("detect: a cascade that is not one", {1}, "detect", photos, "-o", w / "d_xml", "--cascade", w / "bad.xml")
    for option in (["--min-neighbors", "-1"], ["--scale-factor", "1.0"], ["--scale-factor", "nan"],
                   ["--margin", "inf"], ["--workers", "0"], ["--max-pixels", "0"], ["--dlib-threshold", "nan"]):
        probe.case(f"detect {' '.join(option)}", {2}, "detect", photos, "-o", w / "d_opt", *option)

    probe.case("embed: a missing crops folder", {1}, "embed", w / "nope", "-o", w / "e.csv", "--model", "dlib-resnet128")
    (w / "afile").write_text("x")
    probe.case("embed -o under a file", {1}, "embed", crops, "-o", w / "afile" / "e.csv", "--model", "dlib-resnet128")
    probe.case("embed --batch-size 0", {2}, "embed", crops, "--batch-size", "0")
    probe.case("embed --model nope", {2}, "embed", crops, "--model", "nope")

    (w / "garbage.csv").write_text("name,e0\nx,notanumber\n")
    probe.case("cluster: a garbage embeddings CSV", {1}, "cluster", w / "garbage.csv", "-o", w / "c1")
    lines = features.read_text().splitlines()
    (w / "nan.csv").write_text("\n".join([lines[0], lines[1].rsplit(",", 1)[0] + ",nan", *lines[2:]]) + "\n")
    probe.case("cluster: an embeddings CSV with NaN", {1}, "cluster", w / "nan.csv", "-o", w / "c2")
    for option in (["--k", "0"], ["--k", "many"], ["--k-range", "5:2"], ["--k-range", "1:5"], ["--threshold", "9"],
                   ["--threshold", "nan"]):
        probe.case(f"cluster {' '.join(option)}", {2}, "cluster", features, "-o", w / "c3", *option)
    probe.case("cluster --k 1000 (more than the faces)", {1}, "cluster", features, "-o", w / "c4", "--k", "1000")

    for option in (["--beta", "nan"], ["--beta", "-1"], ["--learning-rate", "inf"], ["--learning-rate", "0"],
                   ["--epochs", "0"], ["--image-size", "1000"], ["--latent-dim", "0"]):
        probe.case(f"train-cvae {' '.join(option)}", {2}, "train-cvae", results, "-o", w / "t", *option)
    probe.case("train-cvae: missing cluster results", {1}, "train-cvae", w / "nope.csv", "-o", w / "t2")

    (w / "corrupt.pt").write_bytes(b"PK\x03\x04 broken")
    probe.case("generate: a corrupt checkpoint", {1}, "generate", w / "corrupt.pt", "--all", "-o", w / "g1")
    marker = w / "PWNED"
    payload = (f"import torch, os\nclass P:\n    def __reduce__(self):\n        return (os.system, ('touch {marker}',))\n"
               f"torch.save({{'format': 'facepipe-cvae/1', 'x': P()}}, '{w / 'evil.pt'}')\n")
    subprocess.run([sys.executable, "-c", payload], check=True)
    probe.case("generate: a pickle payload in a checkpoint is refused, never run", {1}, "generate", w / "evil.pt",
               "--all", "-o", w / "g2", check=lambda _: "the payload ran" if marker.exists() else None)
    import torch

    from facepipe.cvae import CVAEConfig

    torch.save({"format": "facepipe-cvae/1", "config": dict(CVAEConfig(clusters=[0]).to_dict(), image_size=10**6),
                "model": {}, "epoch": 1}, w / "huge.pt")
    probe.case("generate: a checkpoint asking for image size 1,000,000", {1}, "generate", w / "huge.pt", "--all",
               "-o", w / "g3")
    probe.case("generate --cluster 99", {1}, "generate", weights, "--cluster", "99", "-o", w / "g4")
    probe.case("generate --temperature nan", {2}, "generate", weights, "--all", "--temperature", "nan")

    good = {"format": "facepipe-linear-probe/1", "target": "bald", "intercept": 0.0, "threshold": 0.5, "C": 1.0,
            "embedding_model": "dlib-resnet128", "embedding_dimension": 128, "coefficients": [0.0] * 128,
            "scaler_mean": [0.0] * 128, "scaler_scale": [1.0] * 128}
    for name, change in (("a NaN coefficient", {"coefficients": [float("nan")] + [0.0] * 127}),
                         ("a zero scale", {"scaler_scale": [0.0] * 128}), ("a threshold of 7", {"threshold": 7})):
        (w / "p.json").write_text(json.dumps(dict(good, **change)))
        probe.case(f"probe predict: {name}", {1}, "probe", "predict", features, "--probe", w / "p.json", "-o",
                   w / "pred.csv", check=lambda _: "predictions written" if (w / "pred.csv").exists() else None)

    for key, value in (("train_cvae", "epochs = 2.5"), ("train_cvae", "epochs = \"two\""), ("train_cvae", "epochs = 1e20"),
                       ("train_cvae", "learning_rate = nan"), ("detect", "min_neighbors = \"five\""),
                       ("detect", "scale_factor = 1.0"), ("train_cvae", "epochs = true"), ("train_cvae", "latent_dim = 0"),
                       ("cluster", "k = -3"), ("generate", "samples = 1.5"), ("run", "labels = \"nope.csv\""),
                       ("embed", "model = 3")):
        (w / "c.toml").write_text(f"[{key}]\n{value}\n")
        probe.case(f"run config [{key}] {value}", {2}, "run", photos, "--out", w / "r_bad", "--config", w / "c.toml",
                   check=lambda _: "a stage ran" if (w / "r_bad" / "temp").exists() else None)
    (w / "c.toml").write_text("[detect\n")
    probe.case("run: a config that is not TOML", {2}, "run", photos, "--out", w / "r_bad", "--config", w / "c.toml")
    (w / "c.toml").write_text("[detect]\ncolour = 3\n")
    probe.case("run: an unknown config key", {2}, "run", photos, "--out", w / "r_bad", "--config", w / "c.toml")

    locked = w / "read_only"
    locked.mkdir()
    locked.chmod(0o555)
    for name, args in (("detect", ["detect", photos, "-o", locked / "x"]),
                       ("embed", ["embed", crops, "-o", locked / "x.csv", "--model", "dlib-resnet128"]),
                       ("cluster", ["cluster", features, "-o", locked / "x", "--k", "2"]),
                       ("train-cvae", ["train-cvae", results, "-o", locked / "x", "--epochs", "1", "--image-size", "32",
                                       "--identity-weight", "0"]),
                       ("generate", ["generate", weights, "--all", "-o", locked / "x", "--no-evaluate"]),
                       ("run", ["run", photos, "--out", locked / "x"])):
        probe.case(f"{name} into a read-only folder", {1}, *args, "-q", plain_user=True,
                   check=lambda _: "wrote into it" if any(locked.iterdir()) else None)

    small = w / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(small)], capture_output=True).returncode == 0:
        try:
            def whole_crops(_):
                from PIL import Image
                for crop in (small / "c").glob("*.png"):
                    try:
                        Image.open(crop).load()
                    except OSError:
                        return f"truncated crop {crop.name}"
                return None
            probe.case("detect onto a full disk", {1}, "detect", LFW / "Kofi_Annan", "-o", small / "c", "-q",
                       "--crop-format", "png", "--min-neighbors", "5", check=whole_crops)
        finally:
            subprocess.run(["umount", str(small)], check=True)

    first = subprocess.Popen([sys.executable, "-m", "facepipe", "detect", LFW, "-o", w / "busy", "-q", "--detector",
                              "haar"], stderr=subprocess.DEVNULL)
    while not ((w / "busy" / ".facepipe.lock").is_file() and (w / "busy" / ".facepipe.lock").stat().st_size):
        time.sleep(0.1)
    probe.case("a second detect on a busy folder", {1}, "detect", LFW, "-o", w / "busy", "-q", "--detector", "haar",
               check=lambda r: None if f"pid {first.pid}" in r.stderr else "holder not named")
    first.send_signal(signal.SIGKILL)
    first.wait()
    probe.case("detect resumed after kill -9", {0}, "detect", LFW, "-o", w / "busy", "-q", "--detector", "haar")
    probe.case("the same detect uninterrupted", {0}, "detect", LFW, "-o", w / "whole", "-q", "--detector", "haar",
               check=lambda _: None if (w / "busy" / "detections.csv").read_bytes()
               == (w / "whole" / "detections.csv").read_bytes() else "the resumed run's detections differ")


def ctrl_c_while_workers_start(args: list) -> subprocess.CompletedProcess:
    """Run facepipe ``args`` in its own process group and send the group SIGINT (a terminal's Ctrl-C) once a
    first worker has been forked (4 processes with the resource tracker and the fork server)."""
    child = subprocess.Popen([sys.executable, "-m", "facepipe", *map(str, args)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120

    def in_group() -> int:
        count = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                count += int(stat.read_text().rsplit(")", 1)[1].split()[2]) == child.pid
        return count

    while in_group() < 4 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGINT)
    stdout, stderr = child.communicate(timeout=300)
    return subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)


def layout_and_fault_cases(probe: Probe, data: dict) -> None:
    """Issue 28's faults, folder layouts, odd inputs and run-config exit codes."""
    from PIL import Image

    w, photos = probe.work / "layouts", data["photos"]
    w.mkdir()
    rng = np.random.default_rng(0)
    (w / "noface").mkdir()
    Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(w / "noface" / "noise.jpg")
    for attempt in ("", " again"):
        probe.case(f"detect: a folder with no face{attempt}", {0}, "detect", w / "noface", "-o", w / "d_noface", "-q")
    for name, size in (("dot.jpg", (1, 1)), ("wide.jpg", (20000, 8)), ("tall.jpg", (8, 20000)), ("small.png", (19, 19))):
        Image.new("RGB", size).save(w / name)
        errors = w / f"d_{name}" / "errors.csv"
        probe.case(f"detect: a {size[0]}x{size[1]} photo", {3}, "detect", w / name, "-o", errors.parent, "-q",
                   check=lambda _, name=name, errors=errors: None if errors.is_file() and name in errors.read_text()
                   else "not in errors.csv")
    Image.fromarray(rng.integers(0, 256, (24, 640, 3), dtype=np.uint8)).save(w / "strip.png")
    for detector in ("dlib-cnn", "haar+hog+cnn"):
        probe.case(f"detect {detector} --cnn-max-side 64: a 640x24 strip", {0}, "detect", w / "strip.png", "-o",
                   w / f"d_strip_{detector}", "-q", "--detector", detector, "--cnn-max-side", "64")

    def names_valid_utf8(out: Path):
        def check(_):
            try:
                for name in ("errors.csv", "sources.csv", "detections.csv"):
                    (out / name).read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError) as error:
                return f"{type(error).__name__}: {error}"
            return None if "caf\\xe9.jpg" in (out / "errors.csv").read_text() else "not in errors.csv"
        return check

    latin = w / "latin"
    shutil.copytree(photos, latin)
    shutil.copy(next(photos.glob("*.jpg")), os.path.join(os.fsencode(latin), b"caf\xe9.jpg"))
    probe.case("detect: a file name that is not UTF-8", {3}, "detect", latin, "-o", w / "d_latin", "-q",
               "--min-neighbors", "5", check=names_valid_utf8(w / "d_latin"))
    probe.case("embed: a crop whose name is not UTF-8", {1}, "embed", latin, "-o", w / "e_latin.csv", "--model",
               "dlib-resnet128", "-q")

    inside = w / "inside"
    shutil.copytree(photos, inside)
    count = len(list(photos.glob("*.jpg")))

    def faces_are(out: Path, expected: int):
        def check(_):
            found = len((out / "sources.csv").read_text().splitlines()) - 1 if (out / "sources.csv").is_file() else 0
            return None if found == expected else f"{found} photos, not {expected}"
        return check

    for attempt in ("", " again"):
        probe.case(f"detect -o inside the input folder{attempt}", {0}, "detect", inside, "-o", inside / "crops", "-q",
                   "--min-neighbors", "5", check=faces_are(inside / "crops", count))
    probe.case("detect from a folder holding another's crops", {0}, "detect", inside, "-o", w / "d_after", "-q",
               "--min-neighbors", "5", check=faces_are(w / "d_after", count))
    before = sorted(p.name for p in inside.iterdir())
    untouched = lambda _: None if sorted(p.name for p in inside.iterdir()) == before else "wrote into the input folder"
    probe.case("detect -o the input folder", {1}, "detect", inside, "-o", inside, "-q", check=untouched)
    probe.case("detect -o the folder of an input photo", {1}, "detect", next(inside.glob("*.jpg")), "-o", inside, "-q",
               check=untouched)
    probe.case("run --out the input folder", {1}, "run", inside, "--out", inside, "-q", check=untouched)
    (w / "link").symlink_to(photos, target_is_directory=True)
    probe.case("detect: a folder and a symlink to it", {0}, "detect", w / "link", photos, "-o", w / "d_link", "-q",
               "--min-neighbors", "5", check=faces_are(w / "d_link", count))

    configs = {"an unknown section": "[nosuch]\nx = 1\n", "a section that is not a table": "detect = 5\n",
               "a float k range": "[cluster]\nk_range = [2.5, 10]\n", "a bool k range": "[cluster]\nk_range = [true, 9]\n",
               "an unknown key": "[embed]\nnosuch = 1\n", "a missing ]": "[detect\n", "a duplicate key": "[detect]\nsize = 1\nsize = 2\n"}
    for name, text in configs.items():
        shutil.rmtree(w / "r_bad", ignore_errors=True)  # left by an earlier case that ran
        (w / "c.toml").write_text(text)
        probe.case(f"run config: {name}", {2}, "run", photos, "--out", w / "r_bad", "--config", w / "c.toml",
                   check=lambda _: "a stage ran" if (w / "r_bad").exists() else None)
    (w / "c.toml").write_bytes(b"[run]\nlabels = \"\xe9\"\n")
    probe.case("run config: not UTF-8", {2}, "run", photos, "--out", w / "r_bad", "--config", w / "c.toml")
    for item in ("cluster", "nosuch.k=2", "cluster.nosuch=2"):
        probe.case(f"run --set {item}", {2}, "run", photos, "--out", w / "r_bad", "--set", item)

    for command in (["detect", photos, "-o", w / "d_ctrl_c", "--min-neighbors", "5", "--workers", "2"],
                    ["embed", data["crops"], "-o", w / "e_ctrl_c.csv", "--model", "dlib-resnet128", "--workers", "2"]):
        result = ctrl_c_while_workers_start([*command, "-q"])
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        name = f"{command[0]}: Ctrl-C while its workers start"
        problems = ([] if result.returncode == 130 else [f"exit {result.returncode}, expected [130]"]) + \
            (["traceback"] if "Traceback" in result.stderr else []) + ([] if len(lines) == 1 else [f"{len(lines)} lines"])
        probe.rows.append((name, not problems, problems))
        print(f"{'ok ' if not problems else 'BAD'} {name}: exit {result.returncode}; {'; '.join(problems) or lines[-1]}")

    train = ["train-cvae", data["clusters"] / "cluster_results.csv", "-o", w / "small_t" / "weights", "--epochs", "3",
             "--image-size", "32", "--latent-dim", "16", "--base-channels", "16", "--identity-weight", "0",
             "--align", "none", "-q"]
    run = ["run", photos, "--out", w / "small_r" / "run", "-q", "--set", "detect.min_neighbors=5", "--set",
           "embed.model=\"dlib-resnet128\"", "--set", "cluster.k=2", "--set", "generate.samples=0", "--set",
           "generate.evaluate=false", *(f"--set=train_cvae.{item}" for item in (
               "image_size=32", "latent_dim=16", "base_channels=16", "epochs=3", "identity_weight=0.0", "align=\"none\""))]
    for name, args, size in (("train-cvae", train, "4m"), ("run", run, "3m")):  # full while training
        small = w / f"small_{name[0]}"
        small.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(small)], capture_output=True).returncode:
            continue
        try:
            probe.case(f"{name} onto a full disk", {1}, *args,
                       check=lambda r: None if "no space left" in r.stderr else "no 'no space left'")
            subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
            probe.case(f"{name} rerun as it was, the space freed", {0}, *args)
        finally:
            subprocess.run(["umount", "--lazy", str(small)], check=True)
def limit_cases(probe: Probe, data: dict) -> None:
    """Issue 28, class 3: numbers out of range, worker counts, non-finite training, huge embeddings, same bytes."""
    import torch

    w, photos, features = probe.work / "limits", data["photos"], data["features"]
    w.mkdir()
    results, weights = data["clusters"] / "cluster_results.csv", data["weights"]
    out_of_range = {
        "detect": (["--size", "1000000"], ["--min-neighbors", "1000000000000"], ["--min-size", "1000000000000"],
                   ["--max-side", "1000000000"], ["--scale-factor", "1e9"], ["--cnn-max-side", "99999999"]),
        "cluster": (["--seed", "-1"], ["--seed", str(2**64)], ["--n-init", "1000000000"], ["--k", "100000"],
                    ["--k-range", "2:1000000000"], ["--min-group-size", "1000000000000"],
                    ["--samples-per-cluster", "1000000"]),
        "train-cvae": (["--seed", "-1"], ["--seed", str(2**64)], ["--learning-rate", "1e10"], ["--beta", "1e300"],
                       ["--mean-anchor", "1e300"], ["--identity-weight", "1e300"], ["--batch-size", "1000000000000"]),
        "generate": (["--samples", "10000000"], ["--seed", "-1"], ["--cluster", str(2**64)]),
        "embed": (["--batch-size", "100000000"],),
    }
    first = {"detect": [photos], "cluster": [features], "train-cvae": [results], "generate": [weights, "--all"],
             "embed": [data["crops"]]}
    for command, options in out_of_range.items():
        for option in options:
            probe.case(f"{command} {' '.join(option)}", {2}, command, *first[command], "-o", w / "x", *option)
    for option in (["--seed", "-1"], ["--cs", "0.1,1e300"], ["--folds", "1000000"]):
        probe.case(f"probe train {' '.join(option)}", {2}, "probe", "train", features, "--labels", features,
                   "--target", "bald", "-o", w / "p.json", *option)
    for value in ("cluster.seed=-1", "cluster.n_init=1000000000", "detect.size=1000000", "train_cvae.beta=1e300",
                  "generate.samples=10000000", "probe.folds=0"):
        probe.case(f"run --set {value}", {2}, "run", photos, "-o", w / "run", "--set", value,
                   check=lambda _: "the run folder was made" if (w / "run").exists() else None)
    probe.case("detect --workers 100000 (capped by the CPUs)", {0}, "detect", photos, "-o", w / "many",
               "--min-neighbors", "5", "--workers", "100000", "-q")

    def groups(folder: Path) -> list[str]:
        return [row.split(",")[1] for row in (folder / "cluster_results.csv").read_text().splitlines()[1:]]

    lines = features.read_text().splitlines()
    scaled = [lines[0]] + [",".join([row.split(",")[0], *(f"{float(v) * 1e30:.9g}" for v in row.split(",")[1:])])
                           for row in lines[1:]]
    (w / "scaled.csv").write_text("\n".join(scaled) + "\n")
    probe.case("cluster: embeddings scaled by 1e30", {0}, "cluster", w / "scaled.csv", "-o", w / "scaled", "--k", "2",
               "--crops-dir", data["crops"], "-q",
               check=lambda _: None if groups(w / "scaled") == groups(data["clusters"]) else "other groups than unscaled")

    poisoned = w / "poisoned"
    shutil.copytree(weights, poisoned)
    last = sorted(poisoned.glob("cvae_epoch_*.pt"))[-1]
    checkpoint = torch.load(last, weights_only=True)
    for key, tensor in checkpoint["model"].items():
        if tensor.is_floating_point() and key != "base_logits":
            tensor.fill_(float("nan"))
    torch.save(checkpoint, last)
    probe.case("train-cvae: a loss that goes nan", {1}, "train-cvae", results, "-o", poisoned, "--resume", "--epochs",
               "3", "--image-size", "32", "--identity-weight", "0", "-q",
               check=lambda _: "an epoch-3 checkpoint was written" if (poisoned / "cvae_epoch_3.pt").exists() else None)

    again = w / "again"
    training = subprocess.Popen([sys.executable, "-m", "facepipe", "train-cvae", results, "-o", again, "--epochs", "2",
                                 "--image-size", "32", "--identity-weight", "0", "-q"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    lock = again / ".facepipe.lock"
    while training.poll() is None and not (lock.is_file() and lock.stat().st_size):
        time.sleep(0.01)
    probe.case("train-cvae refused while another trains the folder", {1}, "train-cvae", results, "-o", again)
    training.wait()

    def same_weights(_):
        trained = [torch.load(folder / "cvae_epoch_2.pt", weights_only=True)["model"] for folder in (weights, again)]
        return None if all(torch.equal(trained[0][k], trained[1][k]) for k in trained[0]) else "other weights"

    probe.case("train-cvae beside a refused command: the same weights", {0}, "train-cvae", results, "-o", again,
               "--epochs", "2", "--image-size", "32", "--identity-weight", "0", "-q", check=same_weights)
def snapshot(*places: Path) -> dict[Path, bytes]:
    """Every file under ``places`` (the lock files aside) and its bytes."""
    files = [p for place in places for p in ([place] if place.is_file() else sorted(place.rglob("*")))]
    return {p: p.read_bytes() for p in files if p.is_file() and p.name != ".facepipe.lock"}


def restore(before: dict[Path, bytes], *places: Path) -> None:
    """Put ``places`` back as ``snapshot`` found them: files added since removed, changed ones rewritten."""
    for path in snapshot(*places).keys() - before.keys():
        path.unlink()
    for path, data in before.items():
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)


def damaged_files(probe: Probe, data: dict) -> None:
    """Hand-edited or damaged files that stages read (issue 28): each through every command that reads it; each
    must end in one line, exit 1, and leave every file of the collection as it was (restored after each case)."""
    w = probe.work
    crops, features, clusters, weights = (data[k] for k in ("crops", "features", "clusters", "weights"))
    results, centroids, groups = (clusters / n for n in ("cluster_results.csv", "centroids.csv", "groups.csv"))
    new = w / "new_photos"
    new.mkdir()
    shutil.copy(sorted((LFW / "Kofi_Annan").glob("*.jpg"))[5], new)
    watched = (crops, features, features.with_name(features.name + ".json"), clusters, weights)
    before = snapshot(*watched)
    readers = {"export": ["export", results, "-o", w / "x_export"],
               "train-cvae": ["train-cvae", results, "-o", w / "x_weights", "--epochs", "1", "--image-size", "32",
                              "--identity-weight", "0"],
               "generate": ["generate", weights, "--all", "--clusters", results, "-o", w / "x_generated"],
               "assign": ["assign", new, "--clusters", clusters, "--workers", "1"],
               "cluster": ["cluster", features, "-o", w / "x_clusters"],
               "cluster --people": ["cluster", features, "-o", clusters, "--people", w / "names.toml"],
               "detect": ["detect", data["photos"], "-o", crops, "--min-neighbors", "5"],
               "embed": ["embed", crops, "-o", features, "--model", "dlib-resnet128"]}

    def left_as(state: dict[Path, bytes]):
        """A check: every watched file is as in ``state`` (then the collection is restored)."""
        def check(_):
            now = snapshot(*watched)
            changed = sorted(str(p.relative_to(w)) for p in now.keys() ^ state.keys() | {
                p for p in now.keys() & state.keys() if now[p] != state[p]})
            restore(before, *watched)
            return f"changed {changed[:3]}" if changed else None
        return check

    def attack(label: str, path: Path, content: str | bytes, commands: list[str]) -> None:
        for command in commands:
            path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
            probe.case(f"{label}: {command}", {1}, *readers[command], "-q", check=left_as(snapshot(*watched)))

    lines = results.read_text().splitlines()
    name, _, distance = lines[1].split(",")
    for cell in ("2.5", "two", "", "99999999999999999999", "-7", "5", "inf"):
        edited = "\n".join([lines[0], f"{name},{cell},{distance}", *lines[2:]]) + "\n"
        attack(f"cluster_results.csv with cluster {cell or '(empty)'}", results, edited,
               ["export", "train-cvae", "generate", "assign"])
    for label, edited in (("a face twice", "\n".join([*lines, lines[1]]) + "\n"),
                          ("a negative distance", "\n".join([lines[0], f"{name},0,-1", *lines[2:]]) + "\n"),
                          ("no cluster column", "\n".join(line.rsplit(",", 2)[0] for line in lines) + "\n")):
        attack(f"cluster_results.csv with {label}", results, edited, ["export", "train-cvae", "assign"])
    rows = centroids.read_text().splitlines()
    for label, edited in (("text", rows[1].split(",", 1)[0] + ",x," + rows[1].split(",", 2)[2]),
                          ("1e39", rows[1].split(",", 1)[0] + ",1e39," + rows[1].split(",", 2)[2])):
        attack(f"centroids.csv with {label}", centroids, "\n".join([rows[0], edited, *rows[2:]]) + "\n",
               ["export", "train-cvae", "assign"])
    attack("groups.csv with a text group", groups, "cluster,person,faces\nzero,Ann,3\n", ["export", "assign"])
    for label, text in (("a JSON list", "[1]"), ("a JSON string", '"x"'), ("crops_dir a number", '{"crops_dir": 5}')):
        attack(f"cluster sidecar: {label}", results.with_name(results.name + ".json"), text,
               ["export", "train-cvae", "assign"])
    for label, text in (("a JSON list", "[1]"), ("a JSON string", '"x"'), ("model a list", '{"model": ["x"]}'),
                        ("nested 100,000 deep", "[" * 100_000)):
        attack(f"embeddings sidecar: {label}", features.with_name(features.name + ".json"), text,
               ["cluster", "assign"])
    for label, text in (("params a list", '{"params": [1]}'), ("size as text", '{"params": {"size": "224"}}')):
        attack(f"detect.json: {label}", crops / "detect.json", text, ["detect", "assign"])
    for label, names in (("scalar", np.asarray("a.jpg")), ("2-d", np.asarray([["a.jpg"], ["b.jpg"]]))):
        np.savez(w / "names.npz", names=names, vectors=np.eye(2, dtype=np.float32))
        probe.case(f"an embeddings .npz whose names are {label}: cluster", {1}, "cluster", w / "names.npz", "-o",
                   w / "x_npz", "-q")
    partial = features.with_name(features.name + ".partial.npz")
    attack("a garbage embed progress file", partial, b"PK\x03\x04" + bytes(200), ["embed"])
    (w / "deep.toml").write_text("merge = " + "[" * 10_000 + "]" * 10_000 + "\n")
    probe.case("a people file nested 10,000 deep: cluster", {1}, "cluster", features, "-o", clusters, "--people",
               w / "deep.toml", "-q", check=left_as(before))
    (w / "names.toml").write_text('[names]\n0 = "Ann"\n')
    attack("people_anchors.csv with text", clusters / "people_anchors.csv", "group,e0\n0,x\n", ["cluster --people"])
    if (weights / "alignment.csv").is_file():
        header = (weights / "alignment.csv").read_text().splitlines()[0]
        attack("alignment.csv with a half pixel", weights / "alignment.csv",
               header + "\n" + ",".join(["a.jpg", *["1.5"] * 10]) + "\n", ["generate"])
    crop = crops / (crops / "detections.csv").read_text().splitlines()[1].split(",")[0]
    whole = crop.read_bytes()
    crop.write_bytes(whole[: len(whole) // 2])
    probe.case("a crop truncated since detect wrote it: the rerun makes it again", {0}, *readers["detect"], "-q",
               check=lambda _: left_as(before)(_) if crop.read_bytes() == whole else "the truncated crop was kept")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--only-layouts-and-faults", action="store_true",
                        help="Only issue 28's faults, folder layouts, odd inputs and run-config exit codes.")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="facepipe_probe_"))
    os.chmod(work, 0o755)
    probe = Probe(work)
    data = setup(work)
    if not args.only_layouts_and_faults:
        run_cases(probe, data)
        limit_cases(probe, data)
        damaged_files(probe, data)
    layout_and_fault_cases(probe, data)
    bad = [row for row in probe.rows if not row[1]]
    tracebacks = sum("traceback" in row[2] for row in bad)
    wrong_codes = sum(any(p.startswith("exit") for p in row[2]) for row in bad)
    others = sum(not any(p == "traceback" or p.startswith("exit") for p in row[2]) for row in bad)
    print(f"{len(probe.rows)} cases: {len(probe.rows) - len(bad)} as expected; {tracebacks} with a traceback, "
          f"{wrong_codes} with a wrong exit code, {others} with other problems only")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
