"""The paper's evaluation metrics (section 4 "Results": Tables 4, 5, 6 and Fig 3) in plain numpy.

Pure numpy on purpose: evaluation runs on lab workstations and in tests without an accelerator,
and the numbers must not depend on the framework that produced the probabilities.

Conventions (shared with `evaluation.report`):
- `labels` are integer class indices in the order of `marco_jax.labels.CLASS_NAMES`;
  `probs` are (N, C) softmax probabilities; the prediction is the argmax (lowest index on ties).
- ROC curves are one-vs-rest: positives are the examples of the class, the score is that class's
  probability; thresholds, FPR and TPR follow scikit-learn's `roc_curve` exactly (one point per
  distinct score, tied scores move together, a first point at threshold +inf).
- `compute_all` returns plain JSON types; undefined values (a class with no examples, an AUC
  without positives or negatives) are NaN in the array functions and None in that dict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from marco_jax.evaluation import intervals, one_vs_rest
from marco_jax.labels import CLASS_NAMES

# Fig 3 quotes recall at these false-positive rates: crystals 94 % at < 1.6 % and 98.7 % at < 19 %,
# precipitate 94 % at < 3.4 % and 99.6 % at < 25 %; 1 %, 5 % and 10 % are common reference points.
DEFAULT_FPR_POINTS: tuple[float, ...] = (0.01, 0.016, 0.034, 0.05, 0.1, 0.19, 0.25)
# The recalls Fig 3 quotes, read the other way: which FPR does each one cost?
DEFAULT_RECALL_POINTS: tuple[float, ...] = (0.9, 0.94, 0.987, 0.996)
# Softmax outputs in float32 (or bfloat16 from an accelerator) sum to 1 only approximately.
DEFAULT_PROB_ATOL: float = 1e-3
# Sources present for a class needed before its Table-5 spread is reported (one value has none).
MIN_SOURCES_FOR_SPREAD: int = 2


class OperatingPoint(NamedTuple):
    """One ROC point: predicting "positive" when score >= threshold gives this FPR and TPR."""

    fpr: float
    tpr: float
    threshold: float


def validate_inputs(
    labels: npt.ArrayLike,
    probs: npt.ArrayLike,
    num_classes: int,
    *,
    prob_atol: float = DEFAULT_PROB_ATOL,
) -> tuple[np.ndarray, np.ndarray]:
    """Checks labels/probs once so every metric below can assume clean int64/float64 arrays."""
    labels = np.asarray(labels)
    probs = np.asarray(probs)
    if labels.ndim != 1:
        raise ValueError(
            f"labels must be 1-D (one class index per example), got shape {labels.shape}"
        )
    if labels.size == 0:
        raise ValueError("labels is empty: there is nothing to evaluate")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise ValueError(
            f"probs must have shape (N, {num_classes}) (one column per class), got {probs.shape}"
        )
    if probs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"labels has {labels.shape[0]} examples but probs has {probs.shape[0]} rows; "
            "they must describe the same examples in the same order"
        )
    if not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(f"probs must be floating point probabilities, got dtype {probs.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise ValueError(
            f"labels must lie in [0, {num_classes}); example {bad[0]} has label {labels[bad[0]]} "
            f"({bad.size} out of range in all)"
        )
    probs = probs.astype(np.float64)
    if not np.all(np.isfinite(probs)):
        row = int(np.flatnonzero(~np.all(np.isfinite(probs), axis=1))[0])
        raise ValueError(f"probs has a NaN or infinite value in row {row}")
    sums = probs.sum(axis=1)
    bad = np.flatnonzero((np.abs(sums - 1.0) > prob_atol) | np.any(probs < -prob_atol, axis=1))
    if bad.size:
        raise ValueError(
            f"every row of probs must be probabilities summing to 1 (within {prob_atol}); row "
            f"{bad[0]} sums to {sums[bad[0]]:.6g} with minimum {probs[bad[0]].min():.6g}. "
            "Pass softmax probabilities, not logits."
        )
    return labels.astype(np.int64), probs


def predictions(probs: np.ndarray) -> np.ndarray:
    """The predicted class: the paper assigns each image to its most probable class (Table 4)."""
    return np.argmax(probs, axis=1)


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Fraction of examples whose prediction equals the label."""
    return float(np.mean(labels == preds))


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts: entry [true, predicted], int64 of shape (num_classes, num_classes)."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (labels, preds), 1)
    return counts


def row_normalize(counts: np.ndarray) -> np.ndarray:
    """Each true-label row as fractions (Table 4); a class without examples gets a NaN row."""
    totals = counts.sum(axis=-1, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / np.where(totals > 0, totals, 1.0), np.nan)


def per_class_accuracy(counts: np.ndarray) -> np.ndarray:
    """Recall of each class (the diagonal of Table 4); NaN for a class without examples."""
    return np.diagonal(row_normalize(counts)).copy()


def source_confusion_matrices(
    labels: np.ndarray, preds: np.ndarray, sources: npt.ArrayLike, num_classes: int
) -> tuple[list[str], np.ndarray]:
    """Per-source confusion counts, shape (S, C, C), with the sorted source names as strings."""
    sources = np.asarray(sources)
    if sources.shape != labels.shape:
        raise ValueError(
            f"sources must give one data source per example: shape {sources.shape} does not "
            f"match labels {labels.shape}"
        )
    names, index = np.unique(sources, return_inverse=True)
    counts = np.zeros((names.size, num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (index.reshape(-1), labels, preds), 1)
    return [str(name) for name in names], counts


def source_spread(
    per_source_normalized: np.ndarray,
    *,
    ddof: int = 0,
    min_sources: int = MIN_SOURCES_FOR_SPREAD,
) -> tuple[np.ndarray, np.ndarray]:
    """Table 5: std over sources of each row-normalised confusion cell, unweighted by source size.

    A source without examples of a class has a NaN row there and is left out of that row's std
    (it says nothing about how that class is predicted), so each row may use a different number of
    sources: that count is returned per class. Rows seen in fewer than `min_sources` sources are
    NaN. `ddof=0` (population std) treats the sources in the test set as the whole population of
    interest; the paper does not say which it used. Pass `ddof=1` for the sample std.
    """
    present = ~np.isnan(per_source_normalized[:, :, 0])  # (S, C): rows are all-NaN or all-finite
    num_sources = present.sum(axis=0)
    spread = np.full(per_source_normalized.shape[1:], np.nan)
    for cls in np.flatnonzero(num_sources >= max(min_sources, ddof + 1)):
        spread[cls] = np.std(per_source_normalized[present[:, cls], cls], axis=0, ddof=ddof)
    return spread, num_sources


def roc_curve(
    y_true: npt.ArrayLike, scores: npt.ArrayLike, *, drop_intermediate: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FPR, TPR and thresholds as scikit-learn's `roc_curve` computes them.

    Scores are sorted in decreasing order (stably); each distinct score is one point, so tied
    examples cross the threshold together; the curve starts at (0, 0) with threshold +inf. FPR
    (TPR) is all NaN when there are no negatives (positives), as in scikit-learn.
    `drop_intermediate` removes points collinear with their neighbours, which changes neither the
    plotted curve nor the AUC, but does change "recall at FPR <= x": keep it False for that.
    """
    fps, tps, thresholds = one_vs_rest.cumulative_counts(y_true, scores)
    if drop_intermediate and fps.size > 2:
        corner = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps, thresholds = fps[corner], tps[corner], thresholds[corner]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    thresholds = np.r_[np.inf, thresholds]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thresholds


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under the ROC curve by the trapezoid rule (scikit-learn's `auc`); NaN if undefined."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def recall_at_fpr(
    fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray, max_fpr: float
) -> OperatingPoint:
    """The highest recall of any threshold whose FPR is <= max_fpr (Fig 3's "at less than x %").

    Among thresholds reaching that recall, the one with the lowest FPR (highest threshold) is
    returned, so the threshold can be used as the operating point. Needs the full curve
    (`drop_intermediate=False`).
    """
    if not 0.0 <= max_fpr <= 1.0:
        raise ValueError(f"max_fpr must lie in [0, 1], got {max_fpr}")
    if np.isnan(fpr[0]) or np.isnan(tpr[0]):
        return OperatingPoint(math.nan, math.nan, math.nan)
    allowed = np.flatnonzero(fpr <= max_fpr)  # a prefix: FPR never decreases along the curve
    best = allowed[np.argmax(tpr[allowed])]  # the first of any ties: lowest FPR
    return OperatingPoint(float(fpr[best]), float(tpr[best]), float(thresholds[best]))


def fpr_at_recall(
    fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray, min_recall: float
) -> OperatingPoint:
    """The lowest FPR of any threshold whose recall is >= min_recall (Fig 3 read the other way)."""
    if not 0.0 <= min_recall <= 1.0:
        raise ValueError(f"min_recall must lie in [0, 1], got {min_recall}")
    if np.isnan(fpr[0]) or np.isnan(tpr[0]):
        return OperatingPoint(math.nan, math.nan, math.nan)
    best = int(np.flatnonzero(tpr >= min_recall)[0])  # the curve ends at TPR 1, so one exists
    return OperatingPoint(float(fpr[best]), float(tpr[best]), float(thresholds[best]))


def one_vs_rest_scores(
    labels: np.ndarray,
    probs: np.ndarray,
    positive: int,
    *,
    threshold: float | None = None,
) -> dict[str, float | int]:
    """Table 6: precision, recall and accuracy of "class `positive` vs the rest".

    An example is called positive when its argmax is `positive`, or, with `threshold`, when its
    probability of `positive` is >= threshold (the operating points of Fig 3). Precision is NaN
    when nothing is called positive, recall when there are no positives.
    """
    if threshold is None:
        called = predictions(probs) == positive
    elif 0.0 <= threshold <= 1.0:
        called = probs[:, positive] >= threshold
    else:
        raise ValueError(f"the probability threshold must lie in [0, 1], got {threshold}")
    return one_vs_rest.called_counts(called, labels == positive)


def to_json(value: Any) -> Any:
    """Numpy values to plain JSON types, with NaN and +-inf as None (strict JSON has neither)."""
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _roc_summary(
    y_true: np.ndarray,
    scores: np.ndarray,
    fpr_points: Sequence[float],
    recall_points: Sequence[float],
) -> dict[str, Any]:
    """One class's Fig-3 numbers; the stored curve drops collinear points to keep the JSON small."""
    fpr, tpr, thresholds = roc_curve(y_true, scores)
    plot_fpr, plot_tpr, plot_thresholds = roc_curve(y_true, scores, drop_intermediate=True)
    return {
        "num_positives": int(y_true.sum()),
        "num_negatives": int((~y_true).sum()),
        "auc": auc(fpr, tpr),
        "recall_at_fpr": [
            {"max_fpr": x, **recall_at_fpr(fpr, tpr, thresholds, x)._asdict()} for x in fpr_points
        ],
        "fpr_at_recall": [
            {"min_recall": r, **fpr_at_recall(fpr, tpr, thresholds, r)._asdict()}
            for r in recall_points
        ],
        "curve": {"fpr": plot_fpr, "tpr": plot_tpr, "thresholds": plot_thresholds},
    }


def _source_summary(
    labels: np.ndarray,
    preds: np.ndarray,
    sources: npt.ArrayLike,
    num_classes: int,
    ddof: int,
) -> dict[str, Any]:
    names, counts = source_confusion_matrices(labels, preds, sources, num_classes)
    normalized = row_normalize(counts)
    spread, num_sources = source_spread(normalized, ddof=ddof)
    totals = counts.sum(axis=(1, 2))
    return {
        "names": names,
        "num_examples": totals,
        "accuracy": np.trace(counts, axis1=1, axis2=2) / totals,
        "class_counts": counts.sum(axis=2),
        "confusion_matrix": counts,
        "confusion_matrix_normalized": normalized,
        "spread": spread,
        "spread_num_sources": num_sources,
        "spread_ddof": ddof,
    }


def compute_all(
    labels: npt.ArrayLike,
    probs: npt.ArrayLike,
    sources: npt.ArrayLike | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
    fpr_points: Sequence[float] = DEFAULT_FPR_POINTS,
    recall_points: Sequence[float] = DEFAULT_RECALL_POINTS,
    crystal_threshold: float | None = None,
    *,
    positive_class: str = "crystals",
    pr_thresholds: Sequence[float] = one_vs_rest.DEFAULT_THRESHOLDS,
    ddof: int = 0,
    prob_atol: float = DEFAULT_PROB_ATOL,
) -> dict[str, Any]:
    """Every section-4 number for one evaluation run, as a JSON-ready dict (see module doc).

    `sources` (one data-source id per example, any sortable type) enables the Table-5 spread;
    `crystal_threshold` switches Table 6 from argmax to "P(positive_class) >= threshold".
    Proportions come with 95 % Wilson intervals ([low, high], `intervals` says why Wilson).

    Keys: class_names, num_examples, class_counts, accuracy, accuracy_interval,
    per_class_accuracy, per_class_accuracy_interval, interval {method, confidence},
    confusion_matrix (counts), confusion_matrix_normalized (Table 4); roc[class] with num_positives,
    num_negatives, auc, recall_at_fpr / fpr_at_recall (lists of {max_fpr | min_recall, fpr, tpr,
    threshold}) and curve {fpr, tpr, thresholds} (collinear points dropped, first threshold None
    for +inf) (Fig 3); positive_vs_rest {positive_class, threshold, tp, fp, fn, tn, precision,
    recall, accuracy, precision_interval, recall_interval} (Table 6); precision_recall
    {positive_class, num_positives, average_precision, curve {precision, recall, thresholds},
    thresholds (a row per `pr_thresholds` entry: threshold, tp, fp, fn, tn, precision, recall,
    accuracy, their intervals, fpr)}; sources (None without sources) {names, num_examples, accuracy,
    class_counts, confusion_matrix, confusion_matrix_normalized, spread, spread_num_sources,
    spread_ddof} (Table 5).
    """
    class_names = [str(name) for name in class_names]
    if positive_class not in class_names:
        raise ValueError(f"positive_class {positive_class!r} is not one of {class_names}")
    for x in (*fpr_points, *recall_points):
        if not 0.0 <= x <= 1.0:
            raise ValueError(f"fpr_points and recall_points must lie in [0, 1], got {x}")
    labels, probs = validate_inputs(labels, probs, len(class_names), prob_atol=prob_atol)
    preds = predictions(probs)
    counts = confusion_matrix(labels, preds, len(class_names))
    positive = class_names.index(positive_class)
    result = {
        "class_names": class_names,
        "num_examples": labels.size,
        "class_counts": counts.sum(axis=1),
        "accuracy": accuracy(labels, preds),
        "accuracy_interval": intervals.wilson_interval(int(np.trace(counts)), labels.size),
        "per_class_accuracy": per_class_accuracy(counts),
        "per_class_accuracy_interval": [
            intervals.wilson_interval(int(counts[c, c]), int(counts[c].sum()))
            for c in range(len(class_names))
        ],
        "interval": {"method": intervals.METHOD, "confidence": intervals.CONFIDENCE},
        "confusion_matrix": counts,
        "confusion_matrix_normalized": row_normalize(counts),
        "roc": {
            name: _roc_summary(labels == cls, probs[:, cls], fpr_points, recall_points)
            for cls, name in enumerate(class_names)
        },
        "positive_vs_rest": {
            "positive_class": positive_class,
            "threshold": crystal_threshold,
            **one_vs_rest.with_intervals(
                one_vs_rest_scores(labels, probs, positive, threshold=crystal_threshold)
            ),
        },
        "precision_recall": {
            "positive_class": positive_class,
            **one_vs_rest.precision_recall_summary(
                labels == positive, probs[:, positive], pr_thresholds
            ),
        },
        "sources": None
        if sources is None
        else _source_summary(labels, preds, sources, len(class_names), ddof),
    }
    return to_json(result)
