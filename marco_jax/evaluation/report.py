"""Writes the section-4 evaluation as report.json, PNG plots and one self-contained report.html.

The report is a pure function of `marco_jax.evaluation.metrics.compute_all`'s dict, so a saved
report.json can be re-rendered without the model. The HTML embeds its images as data URIs and
references nothing outside itself, so it can be mailed or attached to a lab notebook as one file.
Every number is shown beside the paper's (Tables 4, 5, 6 and Fig 3) so a user sees at once how a run
compares.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PAPER_LABEL = "paper (real MARCO test set)"
# Section 4 "Classification": 94.5 % after relabeling.
PAPER_ACCURACY = 0.945
# Table 4, row-normalised confusion matrix (true label -> predicted label), as fractions.
PAPER_CONFUSION = {
    "crystals": {"crystals": 0.910, "precipitate": 0.058, "clear": 0.017, "other": 0.015},
    "precipitate": {"crystals": 0.008, "precipitate": 0.961, "clear": 0.023, "other": 0.007},
    "clear": {"crystals": 0.002, "precipitate": 0.018, "clear": 0.979, "other": 0.002},
    "other": {"crystals": 0.048, "precipitate": 0.197, "clear": 0.059, "other": 0.696},
}
# Table 5, std of each cell across data sources, as fractions.
PAPER_SPREAD = {
    "crystals": {"crystals": 0.05, "precipitate": 0.04, "clear": 0.01, "other": 0.01},
    "precipitate": {"crystals": 0.02, "precipitate": 0.04, "clear": 0.01, "other": 0.02},
    "clear": {"crystals": 0.01, "precipitate": 0.03, "clear": 0.05, "other": 0.01},
    "other": {"crystals": 0.07, "precipitate": 0.15, "clear": 0.06, "other": 0.21},
}
# Fig 3: one-vs-rest AUCs and the recalls it quotes at "less than" a false-positive rate.
PAPER_AUC = {"crystals": 0.988, "precipitate": 0.989}
PAPER_RECALL_AT_FPR = {
    "crystals": {0.016: 0.94, 0.19: 0.987},
    "precipitate": {0.034: 0.94, 0.25: 0.996},
}
# Table 6 is MARCO on CSIRO C3's independent 2018 images, not on the MARCO test set.
PAPER_C3_LABEL = "paper (CSIRO C3 independent set, Table 6)"
PAPER_C3 = {"precision": 0.7777, "recall": 0.8663, "accuracy": 0.9018}

FIGURE_DPI = 100
# Low-FPR panel of the ROC plot; widened to the largest requested FPR point when that is larger.
ROC_ZOOM_FPR = 0.25


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100.0 * value:.{digits}f} %"


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _paper(value: float | None, digits: int = 1, percent: bool = True) -> str:
    """A paper number, or a dash where the paper quotes none (unlike "n/a": undefined here)."""
    if value is None:
        return "—"
    return _pct(value, digits) if percent else _num(value, digits)


def _as_float_array(nested: Any) -> np.ndarray:
    """JSON lists with None (undefined) back to a float array with NaN."""
    return np.array(nested, dtype=object).astype(np.float64)


def _png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()


def _heatmap(
    matrix: np.ndarray,
    cell_text: Sequence[Sequence[str]],
    class_names: Sequence[str],
    title: str,
    colorbar_label: str,
) -> bytes:
    """A true-label x prediction heatmap in percent; NaN cells (no data) stay blank."""
    size = 1.3 * len(class_names) + 2.0
    fig = Figure(figsize=(size + 1.0, size), dpi=FIGURE_DPI)
    ax = fig.add_subplot()
    percent = 100.0 * matrix
    vmax = max(float(np.nanmax(percent)), 1e-9) if np.isfinite(percent).any() else 1.0
    image = ax.imshow(np.ma.masked_invalid(percent), cmap="Blues", vmin=0.0, vmax=vmax)
    for (row, col), text in np.ndenumerate(np.array(cell_text, dtype=object)):
        dark = np.isfinite(percent[row, col]) and percent[row, col] > 0.6 * vmax
        ax.text(col, row, text, ha="center", va="center", color="white" if dark else "black")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=class_names, rotation=30, ha="right")
    ax.set_yticks(ticks, labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true label")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    fig.tight_layout()
    return _png_bytes(fig)


def plot_confusion(metrics: Mapping[str, Any]) -> bytes:
    """Table 4 as a heatmap: row-normalised percentages, with counts."""
    normalized = metrics["confusion_matrix_normalized"]
    counts = metrics["confusion_matrix"]
    cells = [
        [
            f"{_pct(fraction)}\n({count})"
            for fraction, count in zip(fractions, row_counts, strict=True)
        ]
        for fractions, row_counts in zip(normalized, counts, strict=True)
    ]
    return _heatmap(
        _as_float_array(normalized),
        cells,
        metrics["class_names"],
        "Confusion matrix (row-normalised, counts)",
        "% of the true class",
    )


def plot_source_spread(metrics: Mapping[str, Any]) -> bytes:
    """Table 5 as a heatmap: the std across sources of each confusion cell, in percent."""
    sources = metrics["sources"]
    return _heatmap(
        _as_float_array(sources["spread"]),
        [[_pct(value) for value in row] for row in sources["spread"]],
        metrics["class_names"],
        f"Std across {len(sources['names'])} data sources",
        "std of the row-normalised cell (%)",
    )


def plot_roc(metrics: Mapping[str, Any]) -> bytes:
    """Fig 3: one-vs-rest ROC of each class, full and at low FPR, with the paper's quoted points."""
    roc = metrics["roc"]
    zoom = max([ROC_ZOOM_FPR] + [p["max_fpr"] for r in roc.values() for p in r["recall_at_fpr"]])
    fig = Figure(figsize=(12.0, 5.5), dpi=FIGURE_DPI)
    full, low = fig.subplots(1, 2)
    for index, (name, entry) in enumerate(roc.items()):
        if entry["auc"] is None:  # no positives or no negatives: no curve
            continue
        color = f"C{index}"
        fpr = _as_float_array(entry["curve"]["fpr"])
        tpr = _as_float_array(entry["curve"]["tpr"])
        for ax in (full, low):
            ax.plot(fpr, tpr, color=color, label=f"{name} (AUC {entry['auc']:.3f})")
            for max_fpr, recall in PAPER_RECALL_AT_FPR.get(name, {}).items():
                ax.plot(max_fpr, recall, "X", color=color, markeredgecolor="black")
    # One legend entry for the paper's points, whose colour is their class's.
    full.plot([], [], "X", color="0.6", markeredgecolor="black", label=f"{PAPER_LABEL}, Fig 3")
    for ax, title in ((full, "ROC, one class vs rest"), (low, f"low FPR (<= {zoom:g})")):
        ax.plot([0, 1], [0, 1], color="0.8", linestyle="--", linewidth=1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate (recall)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    full.set_xlim(0, 1)
    full.set_ylim(0, 1.01)
    low.set_xlim(0, zoom)
    # Zoom in y too: from a little below the lowest recall at the smallest requested FPR.
    floors = [r["recall_at_fpr"][0]["tpr"] for r in roc.values() if r["auc"] is not None]
    low.set_ylim(max(0.0, min(floors, default=0.0) - 0.05), 1.01)
    full.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return _png_bytes(fig)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; every cell is escaped here, so callers may pass user strings as they are."""
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _matrix_rows(
    names: Sequence[str],
    matrix: Sequence[Sequence[float | None]],
    paper: Mapping[str, Any],
    paper_digits: int,
) -> list[list[str]]:
    """Rows of "ours | paper" cells of a class x class matrix ("—" where the paper has none)."""
    rows = []
    for r, true_name in enumerate(names):
        cells = [true_name]
        for c, pred_name in enumerate(names):
            quoted = paper.get(true_name, {}).get(pred_name)
            cells += [_pct(matrix[r][c]), _paper(quoted, paper_digits)]
        rows.append(cells)
    return rows


def _matrix_header(names: Sequence[str]) -> list[str]:
    return ["true label"] + [f"{n} {who}" for n in names for who in ("(this run)", "(paper)")]


def _summary_section(metrics: Mapping[str, Any]) -> str:
    names = metrics["class_names"]
    summary = _table(
        ["", "this run", PAPER_LABEL],
        [
            ["examples", metrics["num_examples"], "—"],
            ["accuracy", _pct(metrics["accuracy"]), _paper(PAPER_ACCURACY)],
        ],
    )
    per_class = _table(
        ["class", "examples", "accuracy (recall)", "paper", "AUC", "paper AUC"],
        [
            [
                name,
                metrics["class_counts"][i],
                _pct(metrics["per_class_accuracy"][i]),
                _paper(PAPER_CONFUSION.get(name, {}).get(name)),
                _num(metrics["roc"][name]["auc"]),
                _paper(PAPER_AUC.get(name), 3, percent=False),
            ]
            for i, name in enumerate(names)
        ],
    )
    return f"<h2>Summary</h2>{summary}<h3>Per class</h3>{per_class}"


def _confusion_section(metrics: Mapping[str, Any], png: bytes) -> str:
    names = metrics["class_names"]
    normalized = _table(
        _matrix_header(names),
        _matrix_rows(names, metrics["confusion_matrix_normalized"], PAPER_CONFUSION, 1),
    )
    counts = _table(
        ["true label"] + list(names),
        [[n] + list(row) for n, row in zip(names, metrics["confusion_matrix"], strict=True)],
    )
    return (
        "<h2>Confusion matrix (Table 4)</h2>"
        "<p>Fraction of each true class assigned to each predicted class (argmax).</p>"
        f"{normalized}<h3>Counts</h3>{counts}{_image(png, 'confusion matrix')}"
    )


def _roc_section(metrics: Mapping[str, Any], png: bytes) -> str:
    roc = metrics["roc"]
    first = next(iter(roc.values()))
    fpr_points = [p["max_fpr"] for p in first["recall_at_fpr"]]
    recall_points = [p["min_recall"] for p in first["fpr_at_recall"]]
    recall_rows = []
    for name, entry in roc.items():
        paper = PAPER_RECALL_AT_FPR.get(name, {})
        cells = [name]
        for point in entry["recall_at_fpr"]:
            text = f"{_pct(point['tpr'])} (t={_num(point['threshold'])})"
            if point["max_fpr"] in paper:
                text += f"; paper {_pct(paper[point['max_fpr']])}"
            cells.append(text)
        recall_rows.append(cells)
    fpr_rows = [
        [name] + [f"{_pct(p['fpr'])} (t={_num(p['threshold'])})" for p in entry["fpr_at_recall"]]
        for name, entry in roc.items()
    ]
    return (
        "<h2>ROC one class vs rest (Fig 3)</h2>"
        f"{_image(png, 'ROC curves')}"
        "<h3>Recall at false-positive rate &le; x</h3>"
        "<p>The highest recall of any threshold t (call the class when its probability &ge; t) "
        f"whose FPR is at most x; paper values are those Fig 3 quotes, {html.escape(PAPER_LABEL)}."
        "</p>"
        + _table(["class"] + [f"FPR <= {_pct(x)}" for x in fpr_points], recall_rows)
        + "<h3>False-positive rate needed for a recall</h3>"
        + _table(["class"] + [f"recall >= {_pct(r)}" for r in recall_points], fpr_rows)
    )


def _positive_section(metrics: Mapping[str, Any]) -> str:
    ours = metrics["positive_vs_rest"]
    rule = "argmax" if ours["threshold"] is None else f"probability >= {ours['threshold']:g}"
    scores = _table(
        ["", "precision", "recall", "accuracy"],
        [
            [
                "this run",
                _num(ours["precision"], 4),
                _num(ours["recall"], 4),
                _num(ours["accuracy"], 4),
            ],
            [PAPER_C3_LABEL]
            + [_paper(PAPER_C3[k], 4, percent=False) for k in ("precision", "recall", "accuracy")],
        ],
    )
    counts = _table(
        ["true positives", "false positives", "false negatives", "true negatives"],
        [[ours["tp"], ours["fp"], ours["fn"], ours["tn"]]],
    )
    return (
        f"<h2>{html.escape(ours['positive_class'])} vs rest (Table 6)</h2>"
        f"<p>Called {html.escape(ours['positive_class'])} by {html.escape(rule)}.</p>"
        f"{scores}{counts}"
    )


def _sources_section(metrics: Mapping[str, Any], png: bytes) -> str:
    names = metrics["class_names"]
    sources = metrics["sources"]
    spread = _table(_matrix_header(names), _matrix_rows(names, sources["spread"], PAPER_SPREAD, 0))
    used = _table(
        ["class", "sources with examples"],
        list(zip(names, sources["spread_num_sources"], strict=True)),
    )
    per_source = _table(
        ["source", "examples", "accuracy"] + [f"{n} examples" for n in names],
        [
            [name, n, _pct(acc)] + list(class_counts)
            for name, n, acc, class_counts in zip(
                sources["names"],
                sources["num_examples"],
                sources["accuracy"],
                sources["class_counts"],
                strict=True,
            )
        ],
    )
    kind = "population" if sources["spread_ddof"] == 0 else f"ddof={sources['spread_ddof']}"
    return (
        "<h2>Spread across data sources (Table 5)</h2>"
        f"<p>Standard deviation ({html.escape(kind)}) over sources of each source's row-normalised "
        "confusion matrix, every source weighted equally. A source without examples of a class "
        "is left out of that row; rows seen in fewer than two sources are n/a.</p>"
        f"{spread}{used}{_image(png, 'spread across sources')}<h3>Per source</h3>{per_source}"
    )


_STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:80em}"
    "table{border-collapse:collapse;margin:0.5em 0 1em}"
    "td,th{border:1px solid #bbb;padding:0.2em 0.6em;text-align:right}"
    "td:first-child,th:first-child{text-align:left}th{background:#eee}"
    "img{max-width:100%;display:block;margin:0.5em 0}"
)


def render_html(
    metrics: Mapping[str, Any],
    images: Mapping[str, bytes],
    *,
    title: str,
    run_info: Mapping[str, Any] | None = None,
) -> str:
    """The whole report as one HTML string; `images` are the PNGs named as `write_report` does."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if run_info:
        parts.append(_table(["run", ""], [[k, v] for k, v in run_info.items()]))
    parts += [
        _summary_section(metrics),
        _confusion_section(metrics, images["confusion_matrix"]),
        _roc_section(metrics, images["roc"]),
        _positive_section(metrics),
    ]
    if metrics["sources"] is not None:
        parts.append(_sources_section(metrics, images["source_spread"]))
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
) -> dict[str, Path]:
    """Writes report.json, the PNGs and report.html into out_dir; returns their paths by name.

    report.json is `metrics` as given, plus a "run_info" entry when `run_info` (e.g. checkpoint,
    step, split) is passed. Names: "json", "html", "confusion_matrix", "roc" and, when the metrics
    have sources, "source_spread".
    """
    document = dict(metrics) if run_info is None else {**metrics, "run_info": dict(run_info)}
    # Serialised first so that metrics strict JSON cannot hold (NaN, numpy) fail before any write.
    text = json.dumps(document, indent=1, allow_nan=False) + "\n"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = {"confusion_matrix": plot_confusion(metrics), "roc": plot_roc(metrics)}
    if metrics["sources"] is not None:
        images["source_spread"] = plot_source_spread(metrics)
    paths = {"json": out / "report.json", "html": out / "report.html"}
    paths["json"].write_text(text)
    for name, png in images.items():
        paths[name] = out / f"{name}.png"
        paths[name].write_bytes(png)
    paths["html"].write_text(
        render_html(metrics, images, title=title, run_info=run_info), encoding="utf-8"
    )
    return paths
