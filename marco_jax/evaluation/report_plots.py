"""The evaluation report's figures as PNG bytes (matplotlib's Agg canvas, no display needed):
Table 4 and Table 5 as heat maps, Fig 3's ROC curves, and the crystals precision-recall curve
with its threshold sweep. Each is a pure function of `metrics.compute_all`'s dict."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from marco_jax.evaluation.paper_results import (
    PAPER_C3,
    PAPER_C3_LABEL,
    PAPER_LABEL,
    PAPER_RECALL_AT_FPR,
)

FIGURE_DPI = 100
# Low-FPR panel of the ROC plot; widened to the largest requested FPR point when that is larger.
ROC_ZOOM_FPR = 0.25


def format_percent(value: float | None, digits: int = 1) -> str:
    """A fraction as "12.3 %", or "n/a" where it is undefined (None in the metrics' JSON)."""
    return "n/a" if value is None else f"{100.0 * value:.{digits}f} %"


def float_array(nested: Any) -> np.ndarray:
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
            f"{format_percent(fraction)}\n({count})"
            for fraction, count in zip(fractions, row_counts, strict=True)
        ]
        for fractions, row_counts in zip(normalized, counts, strict=True)
    ]
    return _heatmap(
        float_array(normalized),
        cells,
        metrics["class_names"],
        "Confusion matrix (row-normalised, counts)",
        "% of the true class",
    )


def plot_source_spread(metrics: Mapping[str, Any]) -> bytes:
    """Table 5 as a heatmap: the std across sources of each confusion cell, in percent."""
    sources = metrics["sources"]
    return _heatmap(
        float_array(sources["spread"]),
        [[format_percent(value) for value in row] for row in sources["spread"]],
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
        fpr = float_array(entry["curve"]["fpr"])
        tpr = float_array(entry["curve"]["tpr"])
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


def plot_precision_recall(metrics: Mapping[str, Any]) -> bytes:
    """The positive class (crystals) against the rest: its precision-recall curve with the
    argmax's operating point (and Table 6's, measured by the paper on another test set), and
    precision and recall against the probability threshold with their 95 % intervals."""
    pr = metrics["precision_recall"]
    name = pr["positive_class"]
    fig = Figure(figsize=(12.0, 5.0), dpi=FIGURE_DPI)
    curve_ax, sweep_ax = fig.subplots(1, 2)
    if pr["average_precision"] is not None:
        recall = float_array(pr["curve"]["recall"])
        precision = float_array(pr["curve"]["precision"])
        curve_ax.step(
            recall,
            precision,
            where="post",
            color="C0",
            label=f"this run (average precision {pr['average_precision']:.3f})",
        )
    ours = metrics["positive_vs_rest"]
    if ours["precision"] is not None and ours["recall"] is not None:
        rule = "argmax" if ours["threshold"] is None else f"p >= {ours['threshold']:g}"
        curve_ax.plot(
            ours["recall"],
            ours["precision"],
            "o",
            color="C0",
            markeredgecolor="black",
            label=f"this run, {rule}",
        )
    curve_ax.plot(
        PAPER_C3["recall"],
        PAPER_C3["precision"],
        "X",
        color="0.6",
        markeredgecolor="black",
        label=PAPER_C3_LABEL,
    )
    curve_ax.set_xlim(0, 1.01)
    curve_ax.set_ylim(0, 1.01)
    curve_ax.set_xlabel(f"recall (share of the {name} images found)")
    curve_ax.set_ylabel(f"precision (share of the {name} calls that are right)")
    curve_ax.set_title(f"{name} vs rest: precision-recall")
    curve_ax.legend(loc="lower left", fontsize="small")
    rows = pr["thresholds"]
    thresholds = np.array([row["threshold"] for row in rows])
    for key, color in (("precision", "C1"), ("recall", "C2")):
        values = float_array([row[key] for row in rows])
        bounds = float_array([row[f"{key}_interval"] for row in rows])
        sweep_ax.plot(thresholds, values, "o-", color=color, label=key)
        sweep_ax.fill_between(
            thresholds,
            bounds[:, 0],
            bounds[:, 1],
            color=color,
            alpha=0.2,
            label=f"{key}, 95 % interval",
        )
    sweep_ax.set_xlim(0, 1)
    sweep_ax.set_ylim(0, 1.01)
    sweep_ax.set_xlabel(f"threshold: call {name} when its probability >= this")
    sweep_ax.set_title("threshold sweep")
    sweep_ax.legend(loc="best", fontsize="small")
    for ax in (curve_ax, sweep_ax):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _png_bytes(fig)
