"""Writes the section-4 evaluation as report.json, PNG plots and one self-contained report.html.

The report is a pure function of `marco_jax.evaluation.metrics.compute_all`'s dict (plus, for
the gallery of mistakes, thumbnails chosen by `per_image`), so a saved report.json can be
re-rendered without the model. The HTML embeds its images as data URIs and references nothing
outside itself, so it can be mailed or attached to a lab notebook as one file. Every number is
shown beside the paper's (Tables 4, 5, 6 and Fig 3) and every proportion with its 95 % interval
(`intervals`), so a user sees at once how a run compares. Figures: `report_plots`; sections:
`report_sections`.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marco_jax.evaluation import report_plots, report_sections
from marco_jax.evaluation.metrics import MIN_SOURCES_FOR_SPREAD

if TYPE_CHECKING:  # the type only: rendering a report loads neither JAX nor PIL
    from marco_jax.evaluation.per_image import GalleryImage

_STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:80em;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1em}"
    "td,th{border:1px solid #bbb;padding:0.2em 0.6em;text-align:right}"
    "td:first-child,th:first-child{text-align:left}th{background:#eee}"
    "table.matrix td{text-align:center;min-width:7em;padding:0.3em 0.8em}"
    "table.matrix td.diag{background:#e3efd9}"
    "table.matrix .run{font-size:1.25em;font-weight:bold}"
    "small,.note{color:#666}"
    "img{max-width:100%;display:block;margin:0.5em 0}"
    ".gallery{display:flex;flex-wrap:wrap;gap:10px}"
    ".gallery figure{margin:0;width:160px;font-size:12px}"
    ".gallery figure:focus-within{width:auto}"
    ".gallery img.thumb{width:160px;max-width:none;cursor:zoom-in;margin:0}"
    ".gallery img.thumb:focus{width:320px;outline:2px solid #4a7ebb}"
    ".name{font-family:monospace;word-break:break-all}"
)


def _plots(metrics: Mapping[str, Any]) -> dict[str, bytes]:
    """The PNGs by name; Table 5's heat map only where there is a spread to show."""
    images = {
        "confusion_matrix": report_plots.plot_confusion(metrics),
        "roc": report_plots.plot_roc(metrics),
        "precision_recall": report_plots.plot_precision_recall(metrics),
    }
    sources = metrics["sources"]
    # Table 5 is a spread across sources: with one source there is none to show.
    if sources is not None and len(sources["names"]) >= MIN_SOURCES_FOR_SPREAD:
        images["source_spread"] = report_plots.plot_source_spread(metrics)
    return images


def render_html(
    metrics: Mapping[str, Any],
    images: Mapping[str, bytes],
    *,
    title: str,
    run_info: Mapping[str, Any] | None = None,
    gallery: Sequence[GalleryImage] | None = None,
) -> str:
    """The whole report as one HTML string; `images` are the PNGs named as `write_report` does."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if run_info:
        parts.append(report_sections.table(["run", ""], [[k, v] for k, v in run_info.items()]))
    parts += [
        report_sections.summary_section(metrics),
        report_sections.confusion_section(metrics, images["confusion_matrix"]),
        report_sections.roc_section(metrics, images["roc"]),
        report_sections.positive_section(metrics),
        report_sections.precision_recall_section(metrics, images["precision_recall"]),
        report_sections.sources_section(metrics, images.get("source_spread")),
    ]
    if gallery is not None:
        parts.append(report_sections.gallery_section(metrics, gallery))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )


def write_report(
    out_dir: str | os.PathLike[str],
    metrics: Mapping[str, Any],
    *,
    title: str = "MARCO evaluation",
    run_info: Mapping[str, Any] | None = None,
    gallery: Sequence[GalleryImage] | None = None,
) -> dict[str, Path]:
    """Writes report.json, the PNGs and report.html into out_dir; returns their paths by name.

    report.json is `metrics` as given, plus a "run_info" entry when `run_info` (e.g. checkpoint,
    step, split) is passed. Names: "json", "html", "confusion_matrix", "roc",
    "precision_recall" and, when the metrics have two or more sources, "source_spread".
    `gallery` (the most confident mistakes, `per_image.gallery`) adds its section to the page.
    """
    document = dict(metrics) if run_info is None else {**metrics, "run_info": dict(run_info)}
    # Serialised first so that metrics strict JSON cannot hold (NaN, numpy) fail before any write.
    text = json.dumps(document, indent=1, allow_nan=False) + "\n"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = _plots(metrics)
    paths = {"json": out / "report.json", "html": out / "report.html"}
    paths["json"].write_text(text)
    for name, png in images.items():
        paths[name] = out / f"{name}.png"
        paths[name].write_bytes(png)
    page = render_html(metrics, images, title=title, run_info=run_info, gallery=gallery)
    paths["html"].write_text(page, encoding="utf-8")
    return paths
