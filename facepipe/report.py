"""``report.html``: one self-contained page (images inlined) that shows what a run found."""

from __future__ import annotations

import base64
import html
import math
import mimetypes
from pathlib import Path

import numpy as np
import pandas as pd

from facepipe.common import write_text_atomic
from facepipe.config import config_to_toml
from facepipe.formats import (
    CENTROIDS_CSV,
    CLUSTER_METRICS_JSON,
    CLUSTER_RESULTS_CSV,
    CVAE_LOG_CSV,
    DETECTIONS_CSV,
    ELBOW_PNG,
    EMBEDDINGS_CSV,
    ERRORS_CSV,
    FIDELITY_JSON,
    GENERATED_SHEET_PNG,
    GROUPS_CSV,
    K_SELECTION_CSV,
    MAX_EPOCH,
    RUN_CONFIG_TOML,
    RUN_CROPS_DIR,
    RUN_INFERENCE_DIR,
    RUN_LOG,
    RUN_PROBE_DIR,
    RUN_REPORT_HTML,
    RUN_SAMPLES_DIR,
    RUN_SUMMARY_JSON,
    RUN_WEIGHTS_DIR,
    SAMPLES_OVERVIEW_JPG,
    SILHOUETTE_PNG,
    SOURCES_CSV,
    UNKNOWN_CLUSTER,
    UNKNOWN_GRID_JPG,
    checked_numbers,
    checked_whole_numbers,
    generated_face_names,
    group_names,
    read_cluster_results,
    read_csv,
    read_fidelity,
    sample_grid,
)
from facepipe.labels import crop_sources

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{margin-bottom:0}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;
vertical-align:top}th{background:#f4f4f4}.muted{color:#777}.plots img{max-width:48%;margin-right:1%}
.cluster{display:flex;gap:1em;align-items:flex-start;border:1px solid #e3e3e3;border-radius:6px;padding:.6em;
margin:.6em 0}.cluster .grid{max-width:460px;width:100%}.faces{display:flex;gap:.6em}.faces figure{margin:0;
text-align:center}.faces img{width:128px;height:128px;image-rendering:auto;border:1px solid #ccc}
.faces img.draws{width:auto;max-width:520px}.thumbs img.thumb{width:72px;height:72px;margin:0 .2em;
border:1px solid #ccc}.thumbs span,.members{font-size:.85em;color:#555}
figcaption{font-size:.85em;color:#555}nav a{margin-right:1em}code{background:#f4f4f4;padding:0 .2em}
"""


def _inline(path: Path, alt: str, css_class: str = "") -> str:
    """An <img> with the file inlined as a data URI, or a note when the file is missing."""
    if not path.is_file():
        return f'<p class="muted">({html.escape(alt)}: not produced)</p>'
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    class_attr = f' class="{css_class}"' if css_class else ""
    return f'<img{class_attr} alt="{html.escape(alt)}" src="data:{mime};base64,{data}">'


def _link(out_dir: Path, relative: str, text: str | None = None) -> str:
    """A relative link to a file of the run, only when that file exists."""
    if not (out_dir / relative).exists():
        return ""
    return f'<a href="{html.escape(relative)}">{html.escape(text or relative)}</a>'


def _table(rows: list[tuple], header: tuple) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _number(value) -> str:
    """A cell: floats to 3 decimals (3 significant digits below 0.01), None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if 0 < abs(value) < 0.01 else f"{value:.3f}"
    return html.escape(str(value))


def _metrics_table(metrics: dict) -> str:
    rows = [(html.escape(k), _number(v)) for k, v in metrics.items() if not isinstance(v, (dict, list))]
    return _table(rows, ("metric", "value"))


def _group_card(anchor: str, title: str, text: str, faces: str, grid: Path, details: str = "") -> str:
    """One group of the cluster section: title, a line of text, its faces (HTML), its sample grid and more
    details (HTML)."""
    return (
        f'<div class="cluster" id="{anchor}"><div><h3>{html.escape(title)}</h3><p>{html.escape(text)}</p>'
        f'<div class="faces">{faces}</div>{details}</div>'
        f"<div>{_inline(grid, f'{title} sample grid', 'grid')}</div></div>"
    )


def _sharpness_text(fidelity: dict | None, cluster: int) -> str:
    """``; sharpness CVAE a, pixel mean b, crops c; the draws differ d as much as the crops`` from fidelity.json's
    row of ``cluster``, or nothing."""
    rows = [row for row in (fidelity or {}).get("per_cluster", []) if row["cluster"] == cluster]
    if not rows or "cvae_sharpness" not in rows[0]:
        return ""
    row = rows[0]
    text = (
        f"; sharpness CVAE {row['cvae_sharpness']:.0f}, pixel mean {row['pixel_mean_sharpness']:.0f}, "
        f"crops {row['crops_sharpness'] or math.nan:.0f}"
    )
    draws, crops = row.get("draws_standardised_difference"), row.get("crops_standardised_difference")
    if draws is not None and crops:
        text += f"; the draws differ {draws / crops:.2f} as much as its crops (brightness and contrast aside)"
    return text


FARTHEST_SHOWN = 4  # faces farthest from their group's centroid, shown per group: where mistakes show
MEMBERS_LISTED = 12


def _photo_list(photos: list[str]) -> str:
    names = sorted({Path(p).name for p in photos})
    more = f" and {len(names) - MEMBERS_LISTED} more" if len(names) > MEMBERS_LISTED else ""
    return html.escape(", ".join(names[:MEMBERS_LISTED]) + more)


def _thumbnails(out_dir: Path, crops: list[str], caption: str, side: int = 96) -> str:
    """Crops as small JPEG thumbnails, inlined like every image of the page."""
    import io

    from PIL import Image

    images = []
    for crop in crops:
        path = out_dir / RUN_CROPS_DIR / crop
        if path.is_file():
            with Image.open(path) as image:
                buffer = io.BytesIO()
                image.convert("RGB").resize((side, side)).save(buffer, "JPEG", quality=85)
            data = base64.b64encode(buffer.getvalue()).decode("ascii")
            images.append(
                f'<img class="thumb" alt="{html.escape(crop)}" title="{html.escape(crop)}" '
                f'src="data:image/jpeg;base64,{data}">'
            )
    return f'<div class="thumbs"><span>{html.escape(caption)}</span>{"".join(images)}</div>' if images else ""


def _fidelity_text(fidelity: dict | None, cluster: int) -> str:
    """``; its CVAE face is (not) nearest its own centroid (cosine c)`` from fidelity.json, or nothing."""
    rows = [row for row in (fidelity or {}).get("per_cluster", []) if row["cluster"] == cluster]
    if not rows or "cvae_nearest" not in rows[0]:
        return ""
    row = rows[0]
    verdict = (
        "nearest its own centroid"
        if row["cvae_nearest"] == cluster
        else f"NOT nearest its own centroid (nearest: cluster {row['cvae_nearest']})"
    )
    return f"; CVAE face {verdict} (cosine {row['cvae_cosine_to_own']:.2f})"


def _faces_with_photos(out_dir: Path) -> "pd.DataFrame | None":
    """cluster_results.csv joined with each crop's source photo (from the crops' detections.csv)."""
    results_file = out_dir / CLUSTER_RESULTS_CSV
    if not results_file.is_file():
        return None
    results = read_cluster_results(results_file)
    names = results["name"]
    sources = crop_sources(names.tolist(), out_dir / RUN_CROPS_DIR)
    return results.assign(source=[sources.get(name, name) for name in names])


def _cluster_section(out_dir: Path, fidelity: dict | None) -> str:
    """A card per cluster (its name, size, photos, CVAE face, pixel mean, random draws, sample grid and the
    faces farthest from its centroid), then the unknown group when there is one."""
    faces = _faces_with_photos(out_dir)
    if faces is None:
        return '<p class="muted">No clusters yet.</p>'
    names = group_names(out_dir)
    unknown = faces["cluster"] == UNKNOWN_CLUSTER
    parts = []
    for cluster, members in faces[~unknown].groupby("cluster", sort=True):
        files = generated_face_names(int(cluster))
        shown = [("face", "CVAE face (z = 0)", ""), ("mean", "pixel mean", "")]
        if (out_dir / RUN_INFERENCE_DIR / files["samples"]).is_file():
            shown.append(("samples", "random draws", "draws"))
        pictures = "".join(
            f"<figure>{_inline(out_dir / RUN_INFERENCE_DIR / files[key], f'cluster {cluster} {caption}', css)}"
            f"<figcaption>{caption}</figcaption></figure>"
            for key, caption, css in shown
        )
        farthest = members.sort_values("distance", ascending=False)["name"].astype(str).tolist()[:FARTHEST_SHOWN]
        title = f"Cluster {cluster}" + (f": {names[int(cluster)]}" if names.get(int(cluster)) else "")
        text = (
            f"{len(members)} face(s) in {members['source'].nunique()} photo(s){_sharpness_text(fidelity, int(cluster))}"
            f"{_fidelity_text(fidelity, int(cluster))}"
        )
        parts.append(
            _group_card(
                f"cluster-{cluster}",
                title,
                text,
                pictures,
                out_dir / RUN_SAMPLES_DIR / sample_grid(int(cluster)),
                f'<p class="members">Photos: {_photo_list(members["source"].tolist())}</p>'
                + _thumbnails(out_dir, farthest, "farthest from the centroid:"),
            )
        )
    if unknown.any():
        parts.append(
            _group_card(
                "cluster-unknown",
                "Unknown",
                f"{int(unknown.sum())} face(s) that match no group (so no aggregated face)",
                "",
                out_dir / RUN_SAMPLES_DIR / UNKNOWN_GRID_JPG,
                f'<p class="members">Photos: {_photo_list(faces.loc[unknown, "source"].tolist())}</p>',
            )
        )
    return "".join(parts)


def _photos_without_faces_section(out_dir: Path) -> str:
    """The photos where no face was found, and those that could not be read."""
    sources_file = out_dir / RUN_CROPS_DIR / SOURCES_CSV
    if not sources_file.is_file():
        return ""
    sources = read_csv(sources_file, ["source", "status", "faces", "reason"], "sources CSV")
    empty = sources[(sources["status"] == "ok") & (sources["faces"] == 0)]["source"].astype(str).tolist()
    failed = sources[sources["status"] == "error"]
    text = (
        f"<p>{len(empty)} photo(s) where no face was found" + (f": {_photo_list(empty)}" if empty else "") + ".</p>"
    )
    if len(failed):
        rows = [(html.escape(Path(str(r.source)).name), html.escape(str(r.reason))) for r in failed.itertuples()]
        text += f"<p>{len(failed)} photo(s) could not be read:</p>" + _table(rows, ("photo", "reason"))
    return '<h2 id="no-face">Photos without a face</h2>' + text


def _loss_curve(out_dir: Path) -> str:
    """The CVAE's training and validation loss per epoch, as an inline SVG line chart."""
    log_file = out_dir / RUN_WEIGHTS_DIR / CVAE_LOG_CSV
    if not log_file.is_file():
        return ""
    log = read_csv(log_file, ["epoch", "train_loss", "val_loss"], "training log")
    if log.empty:
        return ""
    width, height, pad = 520, 200, 30
    checked_whole_numbers(log, "epoch", log_file, 0, MAX_EPOCH)
    values = checked_numbers(log, ["train_loss", "val_loss"], log_file, missing_ok=True)
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    span, epochs = (high - low) or 1.0, max(int(log["epoch"].max()) - int(log["epoch"].min()), 1)

    def points(column: str) -> str:
        return " ".join(
            f"{pad + (e - log['epoch'].min()) / epochs * (width - 2 * pad):.1f},"
            f"{height - pad - (v - low) / span * (height - 2 * pad):.1f}"
            for e, v in zip(log["epoch"], log[column])
            if np.isfinite(v)
        )

    lines = "".join(
        f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points(column)}"/>'
        f'<text x="{width - pad}" y="{14 + 14 * i}" fill="{colour}" text-anchor="end" font-size="12">'
        f"{label}</text>"
        for i, (column, colour, label) in enumerate(
            (("train_loss", "#1f77b4", "training loss"), ("val_loss", "#d62728", "validation loss"))
        )
    )
    return (
        f'<h3>Training loss</h3><svg role="img" aria-label="training and validation loss per epoch" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="none" '
        f'stroke="#ccc"/>{lines}<text x="{pad}" y="{height - 8}" font-size="12">epoch {int(log["epoch"].min())}'
        f'</text><text x="{width - pad}" y="{height - 8}" font-size="12" text-anchor="end">epoch '
        f'{int(log["epoch"].max())}</text><text x="{pad}" y="{pad - 6}" font-size="12">{high:.0f}</text>'
        f'<text x="{pad}" y="{height - pad + 14}" font-size="12">{low:.0f}</text></svg>'
    )


def _fidelity_table(fidelity: dict, kinds: list[tuple[str, str]]) -> str:
    """fidelity.json as a table: per kind of face, identity, sharpness (and relative to the crops'), then how much
    the draws differ beside the crops and the kernel distance to the crops."""
    sharpness = fidelity.get("sharpness") or {}
    diversity = fidelity.get("draw_diversity") or {}
    realism = fidelity.get("realism") or {}
    sharp_key = {"random_draws": "draws"}
    text = (
        "<p>Share of faces that, embedded with the clustering model, are nearest (cosine) their own cluster's "
        "centroid, and their mean cosine to it; sharpness is the variance of the Laplacian (a blurred or ghosted "
        "face scores lower), also relative to the median of the cluster's crops at the same size.</p>"
        + _table(
            [
                (
                    caption,
                    f"{fidelity[kind]['correct']} / {fidelity[kind].get('of', fidelity['clusters_evaluated'])}",
                    _number(fidelity[kind]["fraction"]),
                    _number(fidelity[kind].get("mean_cosine_to_own", "")),
                    _number(sharpness.get(sharp_key.get(kind, kind), "")),
                    _number(sharpness.get(f"{sharp_key.get(kind, kind)}_relative", "")),
                )
                for kind, caption in kinds
            ],
            ("faces", "nearest own centroid", "fidelity", "mean cosine", "sharpness", "sharpness / crops'"),
        )
    )
    if "crops" in sharpness and sharpness["crops"] is not None:
        text += f"<p>Sharpness of the crops (median per cluster, mean): {sharpness['crops']:.0f}.</p>"
    if fidelity.get("random_draws") and diversity:
        text += (
            "<p>How much the random draws of a cluster differ from each other, as a share of how much its "
            "crops do: in pixels " + _number(diversity.get("pixel_difference_relative")) + ", brightness and "
            "contrast aside " + _number(diversity.get("standardised_difference_relative")) + ", in the "
            "embedding " + _number(diversity.get("embedding_distance_relative")) + ".</p>"
        )
    if realism:
        text += (
            f"<p>Kernel distance (KID) to the {realism.get('crops_count')} crops in the embedding: CVAE faces "
            f"and draws ({realism.get('cvae_and_draws_count')}) {_number(realism.get('cvae_and_draws'))}, pixel "
            f"means ({realism.get('pixel_mean_count')}) {_number(realism.get('pixel_mean'))}; a figure, noisy on "
            "few images.</p>"
        )
    return text


def _probe_section(out_dir: Path, stages: dict, config: dict) -> str:
    """The report's probe section: each target's held-out metrics, or why no probe ran."""
    parts = ['<h2 id="probe">Probe</h2>']
    probe_targets = (stages.get("probe") or {}).get("targets")
    if probe_targets:
        for target, metrics in probe_targets.items():
            link = _link(out_dir, f"{RUN_PROBE_DIR}/{target}.json", f"{target}.json")
            parts.append(
                f"<h3>{html.escape(target)} (held-out identities) {link}</h3>"
                + (_metrics_table(metrics) if metrics else '<p class="muted">no held-out metrics</p>')
            )
    elif config["run"].get("labels") and not config["probe"].get("targets"):
        parts.append(
            '<p class="muted">Labels were given but no probe targets ([probe] targets is empty), so no probe ran.</p>'
        )
    elif config["run"].get("labels"):
        failed = (stages.get("probe") or {}).get("failed") or {}
        parts.append(
            '<p class="muted">The probe did not run'
            + "".join(f"; {html.escape(t)}: {html.escape(str(e))}" for t, e in failed.items())
            + ".</p>"
        )
    else:
        parts.append('<p class="muted">No labels were given, so no probe ran.</p>')
    return "".join(parts)


def _files_section(out_dir: Path, summary: dict, config: dict) -> str:
    """The report's links to the run's files, the config used and the versions."""
    parts = []
    file_links = [
        _link(out_dir, relative)
        for relative in (
            RUN_CONFIG_TOML,
            RUN_SUMMARY_JSON,
            RUN_LOG,
            EMBEDDINGS_CSV,
            CLUSTER_RESULTS_CSV,
            K_SELECTION_CSV,
            CENTROIDS_CSV,
            GROUPS_CSV,
            CLUSTER_METRICS_JSON,
            f"{RUN_INFERENCE_DIR}/{GENERATED_SHEET_PNG}",
            f"{RUN_INFERENCE_DIR}/{FIDELITY_JSON}",
            f"{RUN_CROPS_DIR}/{DETECTIONS_CSV}",
            f"{RUN_CROPS_DIR}/{ERRORS_CSV}",
        )
    ]
    parts.append(
        '<h2 id="files">Files</h2><ul>'
        + "".join(f"<li>{link}</li>" for link in file_links if link)
        + "</ul><details><summary>Config used</summary><pre>"
        + html.escape(config_to_toml(config))
        + "</pre></details>"
    )
    parts.append(
        '<h2 id="versions">Versions</h2>'
        + _table(
            [(html.escape(k), html.escape(str(v))) for k, v in summary.get("versions", {}).items()],
            ("package", "version"),
        )
    )
    return "".join(parts)


def write_report(out_dir: Path, summary: dict, config: dict) -> Path:
    """Write ``report.html`` into the run folder from its outputs and the run summary."""
    stages = summary["stages"]
    stage_rows = [
        (html.escape(name), html.escape(s["status"]), f"{s['seconds']:.1f}", html.escape(s["summary"]))
        for name, s in stages.items()
    ]
    cluster_details = stages.get("cluster", {})
    fidelity_file = out_dir / RUN_INFERENCE_DIR / FIDELITY_JSON
    fidelity = read_fidelity(fidelity_file) if fidelity_file.is_file() else None
    clustering_metrics = cluster_details.get("metrics")

    sections = [
        f'<h1>facepipe run</h1><p class="muted">{html.escape(str(out_dir))} &middot; facepipe '
        f"{html.escape(summary['facepipe_version'])} &middot; {summary['seconds']:.1f} s in all</p>",
        '<nav><a href="#stages">Stages</a><a href="#k">Grouping</a><a href="#clusters">Clusters</a>'
        '<a href="#no-face">No face</a><a href="#fidelity">Fidelity</a><a href="#probe">Probe</a><a href="#files">Files</a>'
        '<a href="#versions">Versions</a></nav>',
        '<h2 id="stages">Stages</h2>' + _table(stage_rows, ("stage", "status", "seconds", "summary")),
        f'<h2 id="k">Grouping</h2><p>{html.escape(str(cluster_details.get("k_rule", "")))}</p>',
    ]
    if (out_dir / ELBOW_PNG).is_file():  # k-means with k chosen by elbow and silhouette
        sections.append(
            f'<div class="plots">{_inline(out_dir / ELBOW_PNG, "elbow plot")}'
            f"{_inline(out_dir / SILHOUETTE_PNG, 'silhouette plot')}</div>"
        )
    if clustering_metrics:
        sections.append("<h3>Clusters against the known identities</h3>" + _metrics_table(clustering_metrics))
    sections.append(
        '<h2 id="clusters">Clusters</h2><p>Each cluster: its aggregated face from the CVAE beside the '
        "pixel mean of its crops (both aligned on the eyes and mouth), random draws of the CVAE for "
        "that cluster, and the crops nearest its centroid.</p>"
        + _inline(out_dir / RUN_SAMPLES_DIR / SAMPLES_OVERVIEW_JPG, "overview: the crop nearest each centroid")
        + _cluster_section(out_dir, fidelity)
        + _loss_curve(out_dir)
    )
    sections.append(_photos_without_faces_section(out_dir))
    sections.append('<h2 id="fidelity">Fidelity</h2>')
    if fidelity:
        kinds = [
            (kind, caption)
            for kind, caption in (
                ("cvae", "CVAE face (z = 0)"),
                ("pixel_mean", "pixel mean"),
                ("random_draws", "random draws"),
            )
            if fidelity.get(kind)
        ]
        sections.append(_fidelity_table(fidelity, kinds))
    else:
        sections.append('<p class="muted">Not evaluated.</p>')
    sections.append(_probe_section(out_dir, stages, config))
    sections.append(_files_section(out_dir, summary, config))

    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>facepipe report</title>'
        f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>\n"
    )
    path = out_dir / RUN_REPORT_HTML
    write_text_atomic(path, page)
    return path
