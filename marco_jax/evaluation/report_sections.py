"""The sections of report.html, each an HTML string made from `metrics.compute_all`'s dict (and,
for the gallery, `per_image.GalleryImage`s). Every text that comes from data is escaped here.

Layout choices, for a reader comparing a run with the paper at a glance:
- class x class matrices (Tables 4 and 5) keep the paper's shape, one cell per pair, with this
  run's value large and the paper's small beneath it, rather than alternating columns;
- every proportion is followed by its 95 % interval (`intervals`), so a difference from the
  paper can be told from noise;
- images are data URIs: the page is one file that opens offline.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from marco_jax.evaluation import intervals
from marco_jax.evaluation.paper_results import (
    PAPER_ACCURACY,
    PAPER_AUC,
    PAPER_C3,
    PAPER_C3_LABEL,
    PAPER_CONFUSION,
    PAPER_LABEL,
    PAPER_RECALL_AT_FPR,
    PAPER_SPREAD,
)
from marco_jax.evaluation.report_plots import format_percent as _pct

if TYPE_CHECKING:  # the type only: rendering a report loads neither JAX nor PIL
    from marco_jax.evaluation.per_image import GalleryImage


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _paper(value: float | None, digits: int = 1, percent: bool = True) -> str:
    """A paper number, or a dash where the paper quotes none (unlike "n/a": undefined here)."""
    if value is None:
        return "—"
    return _pct(value, digits) if percent else _num(value, digits)


def _interval(bounds: Sequence[float | None] | None) -> str:
    """A 95 % interval as "81.2–86.3 %", "n/a" where undefined."""
    if bounds is None or bounds[0] is None or bounds[1] is None:
        return "n/a"
    return f"{100 * bounds[0]:.1f}–{100 * bounds[1]:.1f} %"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; every cell is escaped here, so callers may pass user strings as they are."""
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image_tag(
    data: bytes,
    alt: str,
    mime: str = "image/png",
    css_class: str = "",
    *,
    focusable: bool = False,
) -> str:
    """An <img> with its data inline. `focusable` (tabindex) lets a click focus it, which the
    page's CSS turns into "enlarge" without any script."""
    encoded = base64.b64encode(data).decode("ascii")
    attributes = (f' class="{css_class}"' if css_class else "") + (
        ' tabindex="0"' if focusable else ""
    )
    return f'<img{attributes} alt="{html.escape(alt)}" src="data:{mime};base64,{encoded}">'


def _matrix_table(
    names: Sequence[str],
    matrix: Sequence[Sequence[float | None]],
    paper: Mapping[str, Mapping[str, float]],
    paper_digits: int,
) -> str:
    """A class x class table in the paper's layout: this run's value, the paper's beneath it."""
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = []
    for r, true_name in enumerate(names):
        cells = []
        for c, predicted_name in enumerate(names):
            quoted = _paper(paper.get(true_name, {}).get(predicted_name), paper_digits)
            cells.append(
                f'<td class="{"diag" if r == c else "off"}"><span class="run">'
                f"{_pct(matrix[r][c])}</span><br><small>paper {html.escape(quoted)}</small></td>"
            )
        rows.append(f"<tr><th>{html.escape(true_name)}</th>{''.join(cells)}</tr>")
    return (
        '<table class="matrix"><thead><tr><th>true label ↓ / predicted →</th>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def summary_section(metrics: Mapping[str, Any]) -> str:
    names = metrics["class_names"]
    summary = table(
        ["", "this run", "95 % interval", PAPER_LABEL],
        [
            ["examples", metrics["num_examples"], "", "—"],
            [
                "accuracy",
                _pct(metrics["accuracy"]),
                _interval(metrics["accuracy_interval"]),
                _paper(PAPER_ACCURACY),
            ],
        ],
    )
    per_class = table(
        ["class", "examples", "recall", "95 % interval", "paper", "AUC", "paper AUC"],
        [
            [
                name,
                metrics["class_counts"][i],
                _pct(metrics["per_class_accuracy"][i]),
                _interval(metrics["per_class_accuracy_interval"][i]),
                _paper(PAPER_CONFUSION.get(name, {}).get(name)),
                _num(metrics["roc"][name]["auc"]),
                _paper(PAPER_AUC.get(name), 3, percent=False),
            ]
            for i, name in enumerate(names)
        ],
    )
    return (
        f"<h2>Summary</h2>{summary}<h3>Per class</h3>{per_class}"
        f'<p class="note">Intervals: {html.escape(intervals.DESCRIPTION)}.</p>'
    )


def confusion_section(metrics: Mapping[str, Any], png: bytes) -> str:
    names = metrics["class_names"]
    counts = table(
        ["true label"] + list(names),
        [[n] + list(row) for n, row in zip(names, metrics["confusion_matrix"], strict=True)],
    )
    return (
        "<h2>Confusion matrix (Table 4)</h2>"
        "<p>Share of each true class (row) assigned to each predicted class (column) by the "
        f"argmax; beneath each cell the paper's value ({html.escape(PAPER_LABEL)}).</p>"
        f"{_matrix_table(names, metrics['confusion_matrix_normalized'], PAPER_CONFUSION, 1)}"
        f"<h3>Counts</h3>{counts}{image_tag(png, 'confusion matrix')}"
    )


def roc_section(metrics: Mapping[str, Any], png: bytes) -> str:
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
        f"{image_tag(png, 'ROC curves')}"
        "<h3>Recall at false-positive rate &le; x</h3>"
        "<p>The highest recall of any threshold t (call the class when its probability &ge; t) "
        f"whose FPR is at most x; paper values are those Fig 3 quotes, {html.escape(PAPER_LABEL)}."
        "</p>"
        + table(["class"] + [f"FPR <= {_pct(x)}" for x in fpr_points], recall_rows)
        + "<h3>False-positive rate needed for a recall</h3>"
        + table(["class"] + [f"recall >= {_pct(r)}" for r in recall_points], fpr_rows)
    )


def positive_section(metrics: Mapping[str, Any]) -> str:
    ours = metrics["positive_vs_rest"]
    rule = "argmax" if ours["threshold"] is None else f"probability >= {ours['threshold']:g}"
    scores = table(
        ["", "precision", "95 % interval", "recall", "95 % interval", "accuracy"],
        [
            [
                "this run",
                _num(ours["precision"], 4),
                _interval(ours["precision_interval"]),
                _num(ours["recall"], 4),
                _interval(ours["recall_interval"]),
                _num(ours["accuracy"], 4),
            ],
            [
                PAPER_C3_LABEL,
                _paper(PAPER_C3["precision"], 4, percent=False),
                "",
                _paper(PAPER_C3["recall"], 4, percent=False),
                "",
                _paper(PAPER_C3["accuracy"], 4, percent=False),
            ],
        ],
    )
    counts = table(
        ["true positives", "false positives", "false negatives", "true negatives"],
        [[ours["tp"], ours["fp"], ours["fn"], ours["tn"]]],
    )
    return (
        f"<h2>{html.escape(ours['positive_class'])} vs rest (Table 6)</h2>"
        f"<p>Called {html.escape(ours['positive_class'])} by {html.escape(rule)}.</p>"
        f"{scores}{counts}"
    )


def precision_recall_section(metrics: Mapping[str, Any], png: bytes) -> str:
    pr = metrics["precision_recall"]
    name = pr["positive_class"]
    rows = [
        [
            f"{row['threshold']:g}",
            row["tp"] + row["fp"],
            _pct(row["precision"]),
            _interval(row["precision_interval"]),
            _pct(row["recall"]),
            _interval(row["recall_interval"]),
            row["fn"],
            _pct(row["fpr"]),
        ]
        for row in pr["thresholds"]
    ]
    header = [
        f"threshold (p_{name} >=)",
        f"called {name}",
        "precision",
        "95 % interval",
        "recall",
        "95 % interval",
        f"{name} missed",
        "false-positive rate",
    ]
    return (
        f"<h2>{html.escape(name)} vs rest: precision-recall and thresholds</h2>"
        f"<p>Average precision {html.escape(_num(pr['average_precision']))} over "
        f"{pr['num_positives']} {html.escape(name)} images. Calling {html.escape(name)} when "
        f"p_{html.escape(name)} &ge; a threshold: a low threshold finds more {html.escape(name)} "
        "(recall) at the cost of more false calls (precision).</p>"
        f"{image_tag(png, 'precision-recall curve and threshold sweep')}"
        f"{table(header, rows)}"
    )


def sources_section(metrics: Mapping[str, Any], png: bytes | None) -> str:
    """Table 5 when the split has two or more data sources; otherwise one line saying why not."""
    names = metrics["class_names"]
    sources = metrics["sources"]
    if png is None:
        if sources is None:
            why = "the dataset records no data source"
        else:
            why = f"every image of this split comes from one source ({sources['names'][0]})"
        return (
            "<h2>Spread across data sources (Table 5)</h2><p>Not shown: Table 5 is the spread "
            f"of the confusion matrix across data sources, and {html.escape(why)}.</p>"
        )
    used = table(
        ["class", "sources with examples"],
        list(zip(names, sources["spread_num_sources"], strict=True)),
    )
    per_source = table(
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
        f"{_matrix_table(names, sources['spread'], PAPER_SPREAD, 0)}{used}"
        f"{image_tag(png, 'spread across sources')}<h3>Per source</h3>{per_source}"
    )


def gallery_section(metrics: Mapping[str, Any], gallery: Sequence[GalleryImage]) -> str:
    """The most confident mistakes of each confusion pair; a thumbnail enlarges on click."""
    names = metrics["class_names"]
    counts = metrics["confusion_matrix"]
    groups: dict[tuple[str, str], list[GalleryImage]] = {}
    for image in gallery:
        groups.setdefault((image.label, image.predicted), []).append(image)
    parts = [
        "<h2>Most confident mistakes</h2><p>Per confusion pair, the misclassified images the "
        "model was surest about (highest probability of its wrong prediction): label errors or "
        "blind spots. Click an image to enlarge it.</p>"
    ]
    if not groups:
        parts.append("<p>No mistakes.</p>")
    for (label, predicted), images in groups.items():
        total = counts[names.index(label)][names.index(predicted)]
        figures = "".join(
            "<figure>"
            + image_tag(image.jpeg, image.filename, "image/jpeg", "thumb", focusable=True)
            + f"<figcaption><b>p_{html.escape(predicted)} {image.p_predicted:.3f}</b>, "
            f"p_{html.escape(label)} {image.p_label:.3f}<br>"
            f'<span class="name">{html.escape(image.filename)}</span><br>'
            f"source {html.escape(image.source)}</figcaption></figure>"
            for image in images
        )
        parts.append(
            f"<h3>label {html.escape(label)} → predicted {html.escape(predicted)} "
            f'({len(images)} of {total})</h3><div class="gallery">{figures}</div>'
        )
    return "".join(parts)
