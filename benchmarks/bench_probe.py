"""Bald and male probes on celeba_attr for several dlib-resnet128 chips, over many identity-disjoint splits.

One held-out quarter of the identities holds about 40 bald faces, so the F1 of a single split moves by
several points from one seed to the next: this script embeds the 2,012 celeba_attr faces once per chip
(``facepipe embed``), then trains and evaluates ``probe train --holdout 0.25`` for seeds 0..N-1 and
prints, per chip and target, each split's held-out F1 and balanced accuracy and their mean and spread.

Usage: python benchmarks/bench_probe.py [--splits 10] [--chips 0.25 0.4 0.5 0.6 0.75 whole]
       [--data ../shared/data/celeba_attr] [--work benchmarks/out/probe]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from facepipe.embed import embed
from facepipe.probe import train

REPO = Path(__file__).resolve().parents[1]


def embed_chip(chip: str, data: Path, work: Path) -> Path:
    """celeba_attr embedded with dlib-resnet128 and ``chip`` (a padding, or "whole"); reused when present."""
    output = work / f"chip_{chip}" / "image_features.csv"
    options = {"dlib_crop": "whole"} if chip == "whole" else {"dlib_padding": float(chip)}
    embed(data / "images", output, model="dlib-resnet128", workers=2, show_progress=False, **options)
    return output


def held_out_metrics(embeddings: Path, manifest: Path, target: str, splits: int) -> list[dict]:
    """The held-out metrics of ``probe train --holdout 0.25`` at seeds 0..splits-1."""
    runs = []
    for seed in range(splits):
        out = embeddings.parent / f"{target}_seed{seed}.json"
        summary = train(embeddings, manifest, target, out, holdout=0.25, seed=seed, show_progress=False)
        runs.append(summary.probe.training["holdout"]["metrics"])
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--chips", nargs="+", default=["0.25", "0.4", "0.5", "0.6", "0.75", "whole"])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "celeba_attr")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "probe")
    args = parser.parse_args()

    print(f"celeba_attr, dlib-resnet128, probe train --holdout 0.25, seeds 0..{args.splits - 1}")
    print()
    print(
        "| chip | bald F1 per split | bald F1 mean (sd, min) | bald PR-AUC mean | male balanced accuracy mean (min) "
        "| seconds |"
    )
    print("|---|---|---|---|---|---|")
    for chip in args.chips:
        started = time.perf_counter()
        embeddings = embed_chip(chip, args.data, args.work)
        bald = held_out_metrics(embeddings, args.data / "manifest.csv", "bald", args.splits)
        male = held_out_metrics(embeddings, args.data / "manifest.csv", "male", args.splits)
        f1 = np.array([m["f1"] for m in bald])
        pr_auc = np.array([m["pr_auc"] for m in bald])
        male_ba = np.array([m["balanced_accuracy"] for m in male])
        label = "whole crop, squared" if chip == "whole" else f"aligned chip, padding {chip}"
        print(
            f"| {label} | {' '.join(f'{v:.3f}' for v in f1)} | {f1.mean():.3f} ({f1.std():.3f}, {f1.min():.3f}) "
            f"| {pr_auc.mean():.3f} | {male_ba.mean():.3f} ({male_ba.min():.3f}) "
            f"| {time.perf_counter() - started:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
