"""vggface2-resnet50 (PyTorch, fp32 and bf16) against keras-vggface on TensorFlow: crops/s and peak memory.

Same machine, same crops (the 24 fixture crops of ../shared/fixtures/vggface_resnet50 repeated to
``--crops``), same batch size, in one run. Every configuration runs in a fresh child process (so
its peak RSS is its own) after one warm-up batch; the configurations alternate over ``--rounds``
rounds and the best round of each is reported (the least disturbed by other load on the machine).
Each child also returns its embeddings of the 24 crops, checked against keras-vggface's reference.

keras-vggface 0.6 needs Keras 2: it runs from a separate virtual environment that is never a
dependency of facepipe, made with
    python -m venv ../bench-tf-venv
    ../bench-tf-venv/bin/pip install tensorflow-cpu tf-keras keras-vggface keras-applications pillow
and is started with TF_USE_LEGACY_KERAS=1.

The script also prints the compute ceiling: the network's multiply-adds per crop (counted with
hooks) against this machine's fp32 and bf16 matrix-multiply rate (a 2048x2048 torch matmul, all
threads), which bounds any implementation of the same arithmetic.

Then the whole process, as a user runs it (``--whole`` crops, 512, as PNG files in a folder): a fresh
keras-vggface process that reads, embeds and saves them, against `facepipe embed` at fp32 and at
``--precision auto`` (bf16 where the CPU computes it natively), each timed from its start to its end.

Usage: python benchmarks/bench_vggface2.py [--tf-python ../bench-tf-venv/bin/python] [--crops 256]
       [--batch-size 32] [--rounds 2] [--whole 512] [--fixture ../shared/fixtures/vggface_resnet50]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = "vggface_resnet50_notop_random.h5"

# Shared by both children: the fixture crops in name order, repeated to the asked number.
LOAD_CROPS = """
import json, resource, sys, time
from pathlib import Path
import numpy as np
from PIL import Image
fixture, n_crops, batch_size, out = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
base = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((fixture / "crops").glob("*.png"))]
crops = [base[i % len(base)] for i in range(n_crops)]
def report(seconds, first):
    np.save(out, np.asarray(first, dtype=np.float32))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "crops": n_crops, "peak_rss_mib": peak}))
"""

TORCH_CHILD = (
    LOAD_CROPS
    + """
from facepipe.models.vggface2 import VGGFace2ResNet50Embedder
from facepipe.models.weights import ensure_vggface2_weights
weights = ensure_vggface2_weights(weights=fixture / "vggface_resnet50_notop_random.h5", download=False)
embedder = VGGFace2ResNet50Embedder(weights, device="cpu", precision=sys.argv[5], batch_size=batch_size)
embedder.embed(crops[:batch_size])
start = time.perf_counter()
embeddings = embedder.embed(crops)
report(time.perf_counter() - start, embeddings[:len(base)])
"""
)

# keras-vggface 0.6 imports Keras 2 module paths (keras.engine.topology, keras.utils.data_utils, ...):
# point them at tf_keras's equivalents. Benchmark-only shims.
TF_CHILD = (
    """
import os, sys, types
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tf_keras
from tf_keras import backend, layers, models, utils

def shim(name, attributes):
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module

layer_utils = shim("keras.utils.layer_utils", {})
data_utils = shim("keras.utils.data_utils", {"get_file": utils.get_file})
shim("keras.utils", {**vars(utils), "layer_utils": layer_utils, "data_utils": data_utils})
shim("keras.engine", {})
shim("keras.engine.topology", {"get_source_inputs": utils.get_source_inputs})
shim("keras.layers", vars(layers))
shim("keras.models", vars(models))
shim("keras.backend", vars(backend))
shim("keras", vars(tf_keras))
"""
    + LOAD_CROPS
    + """
from keras_vggface.models import RESNET50
from keras_vggface.utils import preprocess_input
model = RESNET50(include_top=False, pooling="avg", input_shape=(224, 224, 3),
                 weights=str(fixture / "vggface_resnet50_notop_random.h5"))
pixels = np.stack(crops).astype(np.float32)
model.predict(preprocess_input(pixels[:batch_size], version=2), batch_size=batch_size, verbose=0)
start = time.perf_counter()
embeddings = model.predict(preprocess_input(pixels, version=2), batch_size=batch_size, verbose=0)
report(time.perf_counter() - start, embeddings[:len(base)])
"""
)

# The whole process, as a user runs it: keras-vggface reading, embedding and saving the crops of a folder.
TF_WHOLE_CHILD = (
    TF_CHILD.split(LOAD_CROPS)[0]
    + """
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from keras_vggface.models import RESNET50
from keras_vggface.utils import preprocess_input
folder, fixture, out = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
pixels = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p in sorted(folder.glob("*.png"))])
model = RESNET50(include_top=False, pooling="avg", input_shape=(224, 224, 3),
                 weights=str(fixture / "vggface_resnet50_notop_random.h5"))
np.save(out, model.predict(preprocess_input(pixels, version=2), batch_size=32, verbose=0))
"""
)

CONFIGS = {
    "keras-vggface 0.6 (TensorFlow, tf-keras), fp32": "tf",
    "facepipe vggface2-resnet50 (PyTorch), fp32": "fp32",
    "facepipe vggface2-resnet50 (PyTorch), bf16": "bf16",
}


def run_child(kind: str, args, out: Path) -> dict:
    common = [str(args.fixture), str(args.crops), str(args.batch_size), str(out)]
    if kind == "tf":
        command = [args.tf_python, "-c", TF_CHILD, *common]
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    else:
        command = [sys.executable, "-c", TORCH_CHILD, *common, kind]
        env = dict(os.environ)
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{result.stderr[-3000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    measured["embeddings"] = np.load(out)
    return measured


def whole_processes(args, scratch: Path) -> None:
    """``--whole`` crops in a folder, embedded by a fresh process each, timed from its start to its end:
    keras-vggface, and `facepipe embed` (CSV and sidecar written) at --precision fp32 and auto."""
    import time

    from PIL import Image

    folder = scratch / "crops"
    folder.mkdir()
    base = sorted((args.fixture / "crops").glob("*.png"))
    for index in range(args.whole):
        Image.open(base[index % len(base)]).save(folder / f"crop_{index:04d}.png")
    weights = args.fixture / WEIGHTS
    commands = {
        "keras-vggface 0.6 (TensorFlow), fp32": [
            args.tf_python,
            "-c",
            TF_WHOLE_CHILD,
            str(folder),
            str(args.fixture),
            str(scratch / "tf.npy"),
        ]
    }
    for precision in ("fp32", "auto"):
        commands[f"facepipe embed --precision {precision}"] = [
            sys.executable,
            "-m",
            "facepipe",
            "embed",
            str(folder),
            "-o",
            str(scratch / f"{precision}.csv"),
            "--weights",
            str(weights),
            "--precision",
            precision,
            "--device",
            "cpu",
            "--force",
            "-q",
        ]
    seconds: dict[str, float] = {}
    for _ in range(args.rounds):
        for label, command in commands.items():
            started = time.perf_counter()
            subprocess.run(
                command,
                check=True,
                capture_output=True,
                cwd=REPO,
                env={**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"},
            )
            seconds[label] = min(seconds.get(label, float("inf")), time.perf_counter() - started)
    vectors = {
        p: pd.read_csv(scratch / f"{p}.csv").drop(columns="name").to_numpy(np.float32) for p in ("fp32", "auto")
    }
    precision = json.loads((scratch / "auto.csv.json").read_text())["precision"]
    tf_seconds = seconds["keras-vggface 0.6 (TensorFlow), fp32"]
    print()
    print(f"whole process, {args.whole} crops (PNG files), best of {args.rounds}; auto chose {precision}")
    print("| process | seconds | crops/s | vs keras-vggface | cosine to fp32 (min / mean) |")
    print("|---|---|---|---|---|")
    for label, taken in seconds.items():
        cosine = cosines(vectors["auto"], vectors["fp32"]) if label.endswith("auto") else np.ones(1)
        print(
            f"| {label} | {taken:.1f} | {args.whole / taken:.1f} | {tf_seconds / taken:.2f}x "
            f"| {cosine.min():.6f} / {cosine.mean():.6f} |"
        )


def multiply_adds_per_crop() -> int:
    """Multiply-adds of one 224x224 crop through the network's convolutions (they are all but a trace of it)."""
    import torch

    from facepipe.models.vggface2 import INPUT_SIZE, VGGFace2ResNet50

    model, total = VGGFace2ResNet50().eval(), [0]

    def count(module, inputs, output):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        total[0] += output[0].numel() * module.in_channels // module.groups * kernel

    for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
        conv.register_forward_hook(count)
    with torch.inference_mode():
        model(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE))
    return total[0]


def matmul_gflops(dtype_name: str, size: int = 2048, repeats: int = 20) -> float:
    """This machine's matrix-multiply rate in GFLOP/s (2 per multiply-add), best of 3 timings."""
    import time

    import torch

    a = torch.randn(size, size).to(getattr(torch, dtype_name))
    b = torch.randn(size, size).to(getattr(torch, dtype_name))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * repeats / best / 1e9


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tf-python",
        default="../bench-tf-venv/bin/python",
        help="python of the virtual environment with tensorflow-cpu, tf-keras and keras-vggface",
    )
    parser.add_argument("--fixture", type=Path, default=REPO.parent / "shared" / "fixtures" / "vggface_resnet50")
    parser.add_argument("--crops", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--whole", type=int, default=512, help="crops of the whole-process comparison (0: none)")
    args = parser.parse_args()

    reference = pd.read_csv(args.fixture / "reference_embeddings.csv").sort_values("name")
    reference = reference.drop(columns="name").to_numpy(np.float32)
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", file=sys.stderr)
    runs: dict[str, list[dict]] = {label: [] for label in CONFIGS}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            for label, kind in CONFIGS.items():
                measured = run_child(kind, args, Path(scratch) / f"{kind}.npy")
                runs[label].append(measured)
                print(
                    f"round {round_index + 1}: {label}: {measured['crops'] / measured['seconds']:.2f} crops/s, "
                    f"peak RSS {measured['peak_rss_mib']:.0f} MiB",
                    file=sys.stderr,
                )
    print(f"load average after: {os.getloadavg()[0]:.1f}", file=sys.stderr)

    best = {label: max(r, key=lambda m: m["crops"] / m["seconds"]) for label, r in runs.items()}
    tf_speed = next(m["crops"] / m["seconds"] for label, m in best.items() if CONFIGS[label] == "tf")
    fp32 = next(m["embeddings"] for label, m in best.items() if CONFIGS[label] == "fp32")
    print(
        f"{args.crops} crops (the 24 fixture crops repeated), batch {args.batch_size}, CPU, "
        f"best of {args.rounds} rounds"
    )
    print()
    print(
        "| implementation | crops/s | vs keras-vggface | peak RSS (MiB) | max rel. error vs keras-vggface reference "
        "| cosine to PyTorch fp32 (min / mean) |"
    )
    print("|---|---|---|---|---|---|")
    for label, measured in best.items():
        speed = measured["crops"] / measured["seconds"]
        embeddings = measured["embeddings"]
        error = (np.abs(embeddings - reference).max(axis=1) / np.abs(reference).max(axis=1)).max()
        cosine = cosines(embeddings, fp32)
        print(
            f"| {label} | {speed:.2f} | {speed / tf_speed:.2f}x | {measured['peak_rss_mib']:.0f} | {error:.2g} "
            f"| {cosine.min():.6f} / {cosine.mean():.6f} |"
        )

    flops = 2 * multiply_adds_per_crop()
    print()
    print(f"compute ceiling: {flops / 2e9:.2f} G multiply-adds per crop")
    print("| arithmetic | matmul GFLOP/s on this machine | crops/s at that rate | 2x keras-vggface needs |")
    print("|---|---|---|---|")
    for dtype_name in ("float32", "bfloat16"):
        rate = matmul_gflops(dtype_name)
        print(f"| {dtype_name} | {rate:.0f} | {rate * 1e9 / flops:.1f} | {2 * tf_speed * flops / 1e9:.0f} GFLOP/s |")
    for label, measured in best.items():
        print(f"{label}: {measured['crops'] / measured['seconds'] * flops / 1e9:.0f} GFLOP/s sustained")
    if args.whole:
        with tempfile.TemporaryDirectory() as scratch:
            whole_processes(args, Path(scratch))


if __name__ == "__main__":
    main()
