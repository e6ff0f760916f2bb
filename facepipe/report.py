"""``report.html``: one self-contained page (images inlined) that shows what a run found."""

from __future__ import annotations

import base64
import html
import mimetypes
from pathlib import Path

from facepipe.common import write_text_atomic
from facepipe.config import config_to_toml
from facepipe.formats import (
    CENTROIDS_CSV,
    CLUSTER_METRICS_JSON,
    CLUSTER_RESULTS_CSV,
    DETECTIONS_CSV,
    ELBOW_PNG,
    EMBEDDINGS_CSV,
    ERRORS_CSV,
    FIDELITY_JSON,
    GENERATED_SHEET_PNG,
    RUN_CONFIG_TOML,
    RUN_CROPS_DIR,
    RUN_INFERENCE_DIR,
    RUN_LOG,
    RUN_PROBE_DIR,
    RUN_REPORT_HTML,
    RUN_SAMPLES_DIR,
    RUN_SUMMARY_JSON,
    K_SELECTION_CSV,
    SAMPLES_OVERVIEW_JPG,
    SILHOUETTE_PNG,
    UNKNOWN_CLUSTER,
    UNKNOWN_GRID_JPG,
    generated_face_names,
    read_csv,
    read_json,
    sample_grid,
)

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{margin-bottom:0}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;
vertical-align:top}th{background:#f4f4f4}.muted{color:#777}.plots img{max-width:48%;margin-right:1%}
.cluster{display:flex;gap:1em;align-items:flex-start;border:1px solid #e3e3e3;border-radius:6px;padding:.6em;
margin:.6em 0}.cluster .grid{max-width:460px;width:100%}.faces{display:flex;gap:.6em}.faces figure{margin:0;
text-align:center}.faces img{width:128px;height:128px;image-rendering:auto;border:1px solid #ccc}
.faces img.draws{width:auto;max-width:520px}
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
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _metrics_table(metrics: dict) -> str:
    rows = [(html.escape(k), _number(v)) for k, v in metrics.items() if not isinstance(v, (dict, list))]
    return _table(rows, ("metric", "value"))


def _group_card(anchor: str, title: str, text: str, faces: str, grid: Path) -> str:
    """One group of the cluster section: title, a line of text, its faces (HTML) and its sample grid."""
    return (f'<div class="cluster" id="{anchor}"><div><h3>{html.escape(title)}</h3><p>{html.escape(text)}</p>'
            f'<div class="faces">{faces}</div></div>'
            f"<div>{_inline(grid, f'{title} sample grid', 'grid')}</div></div>")


def _sharpness_text(fidelity: dict | None, cluster: int) -> str:
    """``; sharpness CVAE a, pixel mean b, crops c`` from fidelity.json's row of ``cluster``, or nothing."""
    rows = [row for row in (fidelity or {}).get("per_cluster", []) if row["cluster"] == cluster]
    if not rows or "cvae_sharpness" not in rows[0]:
        return ""
    row = rows[0]
    return (f"; sharpness CVAE {row['cvae_sharpness']:.0f}, pixel mean {row['pixel_mean_sharpness']:.0f}, "
            f"crops {row['crops_sharpness']:.0f}")


def _cluster_section(out_dir: Path, fidelity: dict | None) -> str:
    """A card per cluster (its CVAE face, pixel mean, random draws and sample grid), then the unknown group
    when there is one."""
    results_file = out_dir / CLUSTER_RESULTS_CSV
    if not results_file.is_file():
        return '<p class="muted">No clusters yet.</p>'
    results = read_csv(results_file, ["name", "cluster"], "cluster results")
    unknown = results["cluster"] == UNKNOWN_CLUSTER
    sizes = results.loc[~unknown, "cluster"].value_counts().sort_index()
    parts = []
    for cluster, size in sizes.items():
        files = generated_face_names(int(cluster))
        shown = [("face", "CVAE face (z = 0)", ""), ("mean", "pixel mean", "")]
        if (out_dir / RUN_INFERENCE_DIR / files["samples"]).is_file():
            shown.append(("samples", "random draws", "draws"))
        faces = "".join(
            f"<figure>{_inline(out_dir / RUN_INFERENCE_DIR / files[key], f'cluster {cluster} {caption}', css)}"
            f"<figcaption>{caption}</figcaption></figure>"
            for key, caption, css in shown)
        parts.append(_group_card(f"cluster-{cluster}", f"Cluster {cluster}",
                                 f"{size} face(s){_sharpness_text(fidelity, int(cluster))}", faces,
                                 out_dir / RUN_SAMPLES_DIR / sample_grid(int(cluster))))
    if unknown.any():
        parts.append(_group_card("cluster-unknown", "Unknown",
                                 f"{int(unknown.sum())} face(s) that match no group (so no aggregated face)", "",
                                 out_dir / RUN_SAMPLES_DIR / UNKNOWN_GRID_JPG))
    return "".join(parts)


def write_report(out_dir: Path, summary: dict, config: dict) -> Path:
    """Write ``report.html`` into the run folder from its outputs and the run summary."""
    stages = summary["stages"]
    stage_rows = [(html.escape(name), html.escape(s["status"]), f"{s['seconds']:.1f}", html.escape(s["summary"]))
                  for name, s in stages.items()]
    cluster_details = stages.get("cluster", {})
    fidelity_file = out_dir / RUN_INFERENCE_DIR / FIDELITY_JSON
    fidelity = read_json(fidelity_file) if fidelity_file.is_file() else None
    clustering_metrics = cluster_details.get("metrics")

    sections = [
        f"<h1>facepipe run</h1><p class=\"muted\">{html.escape(str(out_dir))} &middot; facepipe "
        f"{html.escape(summary['facepipe_version'])} &middot; {summary['seconds']:.1f} s in all</p>",
        '<nav><a href="#stages">Stages</a><a href="#k">Grouping</a><a href="#clusters">Clusters</a>'
        '<a href="#fidelity">Fidelity</a><a href="#probe">Probe</a><a href="#files">Files</a>'
        '<a href="#versions">Versions</a></nav>',
        '<h2 id="stages">Stages</h2>' + _table(stage_rows, ("stage", "status", "seconds", "summary")),
        '<h2 id="k">Grouping</h2>'
        f"<p>{html.escape(str(cluster_details.get('k_rule', '')))}</p>",
    ]
    if (out_dir / ELBOW_PNG).is_file():  # k-means with k chosen by elbow and silhouette
        sections.append(f'<div class="plots">{_inline(out_dir / ELBOW_PNG, "elbow plot")}'
                        f'{_inline(out_dir / SILHOUETTE_PNG, "silhouette plot")}</div>')
    if clustering_metrics:
        sections.append("<h3>Clusters against the known identities</h3>" + _metrics_table(clustering_metrics))
    sections.append('<h2 id="clusters">Clusters</h2><p>Each cluster: its aggregated face from the CVAE beside the '
                    "pixel mean of its crops (both aligned on the eyes and mouth), random draws of the CVAE for "
                    "that cluster, and the crops nearest its centroid.</p>"
                    + _inline(out_dir / RUN_SAMPLES_DIR / SAMPLES_OVERVIEW_JPG, "overview: the crop nearest each centroid")
                    + _cluster_section(out_dir, fidelity))
    sections.append('<h2 id="fidelity">Fidelity</h2>')
    if fidelity:
        kinds = [(kind, caption) for kind, caption in (("cvae", "CVAE face (z = 0)"), ("pixel_mean", "pixel mean"),
                                                        ("random_draws", "random draws")) if fidelity.get(kind)]
        sharpness = fidelity.get("sharpness") or {}
        sections.append("<p>Share of faces that, embedded with the clustering model, are nearest (cosine) their own "
                        "cluster's centroid, and their mean cosine to it; sharpness is the mean squared grey-level "
                        "gradient (a blurred or ghosted face scores lower; the crops for comparison).</p>"
                        + _table([(caption, f"{fidelity[kind]['correct']} / "
                                   f"{fidelity[kind].get('of', fidelity['clusters_evaluated'])}",
                                   _number(fidelity[kind]["fraction"]),
                                   _number(fidelity[kind].get("mean_cosine_to_own", "")),
                                   _number(sharpness.get({"random_draws": "draws"}.get(kind, kind), "")))
                                  for kind, caption in kinds],
                                 ("faces", "nearest own centroid", "fidelity", "mean cosine", "sharpness"))
                        + (f"<p>Sharpness of the crops: {sharpness['crops']:.0f}.</p>" if "crops" in sharpness else ""))
    else:
        sections.append('<p class="muted">Not evaluated.</p>')
    sections.append('<h2 id="probe">Probe</h2>')
    probe_targets = (stages.get("probe") or {}).get("targets")
    if probe_targets:
        for target, metrics in probe_targets.items():
            link = _link(out_dir, f"{RUN_PROBE_DIR}/{target}.json", f"{target}.json")
            sections.append(f"<h3>{html.escape(target)} (held-out identities) {link}</h3>"
                            + (_metrics_table(metrics) if metrics else '<p class="muted">no held-out metrics</p>'))
    else:
        sections.append('<p class="muted">No labels were given, so no probe ran.</p>')
    file_links = [_link(out_dir, relative) for relative in (
        RUN_CONFIG_TOML, RUN_SUMMARY_JSON, RUN_LOG, EMBEDDINGS_CSV, CLUSTER_RESULTS_CSV, K_SELECTION_CSV,
        CENTROIDS_CSV, CLUSTER_METRICS_JSON,
        f"{RUN_INFERENCE_DIR}/{GENERATED_SHEET_PNG}", f"{RUN_INFERENCE_DIR}/{FIDELITY_JSON}", f"{RUN_CROPS_DIR}/{DETECTIONS_CSV}", f"{RUN_CROPS_DIR}/{ERRORS_CSV}")]
    sections.append('<h2 id="files">Files</h2><ul>' + "".join(f"<li>{link}</li>" for link in file_links if link)
                    + "</ul><details><summary>Config used</summary><pre>"
                    + html.escape(config_to_toml(config)) + "</pre></details>")
    sections.append('<h2 id="versions">Versions</h2>' + _table(
        [(html.escape(k), html.escape(str(v))) for k, v in summary.get("versions", {}).items()], ("package", "version")))

    page = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>facepipe report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>\n")
    path = out_dir / RUN_REPORT_HTML
    write_text_atomic(path, page)
    return path
