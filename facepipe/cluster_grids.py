"""What the cluster stage draws: the elbow and silhouette plots of choosing k, and the sample grids of the
groups (the crops nearest each centroid, an overview, the unknown faces)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from facepipe.common import atomic_path, progress
from facepipe.formats import ELBOW_PNG, SAMPLES_OVERVIEW_JPG, SILHOUETTE_PNG, UNKNOWN_GRID_JPG, sample_grid
from facepipe.kmeans import KSelection
from facepipe.settings import ClusterSettings


def plot_against_k(
    table: pd.DataFrame, column: str, marks: dict[str, int | None], ylabel: str, title: str, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    axes.plot(table["k"], table[column], marker="o", markersize=3)
    for (label, k), colour in zip(marks.items(), ("tab:red", "tab:green")):
        if k is not None:
            axes.axvline(k, color=colour, linestyle="--", label=f"{label}: k = {k}")
    axes.set_xlabel("k (number of clusters)")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)


def _tile(crops_dir: Path | None, name: str, size: int) -> np.ndarray:
    from PIL import Image

    from facepipe.images import ImageReadError, load_image_rgb

    try:
        rgb = load_image_rgb(crops_dir / name) if crops_dir is not None else None
    except ImageReadError:
        rgb = None
    if rgb is None:
        return np.full((size, size, 3), 200, dtype=np.uint8)
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))


def _captioned_grid(
    tiles: list[np.ndarray], columns: int, caption: str, labels: list[str] | None = None, tile: int = 112
) -> np.ndarray:
    """Tiles in a grid with a caption bar on top and an optional label under each tile."""
    from PIL import Image, ImageDraw

    rows = max(1, math.ceil(len(tiles) / columns))
    label_height = 14 if labels else 0
    width, top = columns * tile, 22
    canvas = Image.new("RGB", (width, top + rows * (tile + label_height)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 5), caption, fill="black")
    for i, image in enumerate(tiles):
        x, y = (i % columns) * tile, top + (i // columns) * (tile + label_height)
        canvas.paste(Image.fromarray(image), (x, y))
        if labels:
            draw.text((x + 3, y + tile + 1), labels[i], fill="black")
    return np.asarray(canvas)


def write_sample_grids(
    results: pd.DataFrame,
    crops_dir: Path | None,
    samples_dir: Path,
    per_cluster: int = ClusterSettings.samples_per_cluster,
    show_progress: bool = True,
) -> list[Path]:
    """Per cluster, the ``per_cluster`` crops nearest its centroid in a grid (``cluster_N.jpg``), plus
    ``overview.jpg`` with each cluster's nearest crop, and the unknown faces (-1) nearest a group in
    ``unknown.jpg``; returns the files written (the grids of an earlier run are removed by ``cluster``, which
    recorded them)."""
    from facepipe.images import save_image_atomic

    samples_dir.mkdir(parents=True, exist_ok=True)
    written, overview, overview_labels = [], [], []
    groups = results.sort_values(["cluster", "distance", "name"]).groupby("cluster", sort=True)
    for cluster_id, members in progress(
        groups, desc="cluster: sample grids", total=groups.ngroups, unit="grid", enabled=show_progress
    ):
        nearest = members["name"].tolist()[:per_cluster]
        tiles = [_tile(crops_dir, name, 112) for name in nearest]
        if cluster_id < 0:
            caption = f"unknown: {len(members)} faces matching no group ({len(nearest)} nearest a group)"
            path = samples_dir / UNKNOWN_GRID_JPG
        else:
            caption = f"cluster {cluster_id}: {len(members)} faces ({len(nearest)} nearest the centroid)"
            path = samples_dir / sample_grid(int(cluster_id))
            overview.append(tiles[0])
            overview_labels.append(f"{cluster_id} ({len(members)})")
        save_image_atomic(path, _captioned_grid(tiles, min(4, len(tiles)), caption))
        written.append(path)
    columns = max(4, math.ceil(math.sqrt(len(overview))))
    caption = f"{len(overview)} clusters: the crop nearest each centroid, cluster id (size)"
    path = samples_dir / SAMPLES_OVERVIEW_JPG
    save_image_atomic(path, _captioned_grid(overview, columns, caption, overview_labels))
    written.append(path)
    return written


def write_k_plots(out_dir: Path, selection: KSelection | None) -> list[Path]:
    """The elbow and silhouette plots of an auto-k run (returned); none otherwise."""
    plots = [out_dir / ELBOW_PNG, out_dir / SILHOUETTE_PNG]
    if selection is None:
        return []
    plot_against_k(
        selection.table,
        "inertia",
        {"elbow (kneedle)": selection.elbow_k, "chosen": selection.k},
        "inertia (sum of squared distances)",
        "Elbow: k-means inertia against k",
        plots[0],
    )
    plot_against_k(
        selection.table,
        "silhouette",
        {"best silhouette": selection.silhouette_k, "chosen": selection.k},
        "mean silhouette (cosine)",
        "Silhouette against k",
        plots[1],
    )
    return plots
