"""One class against the rest: the counts behind ROC and precision-recall curves, the
precision-recall curve itself and a threshold table, with 95 % intervals (`intervals`).

Conventions are scikit-learn's (`precision_recall_curve`, `average_precision_score`), which the
tests hold this module to: "called positive" means score >= threshold; every distinct score is a
threshold, tied examples cross it together. Plain numpy, so that the report needs no scikit-learn
(a test tool here, not a runtime requirement).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from marco_jax.evaluation import intervals

# The crystals threshold sweep of the report: the argmax of four classes needs p >= 0.25 at
# least, so the low end shows what a recall-first screen (call crystals on a weak signal) costs.
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def cumulative_counts(
    y_true: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positives, true positives, threshold) at each distinct score, highest first.

    Entry i counts the examples whose score is >= thresholds[i] (scikit-learn's
    `_binary_clf_curve`); counts are float64 so that rates divide without casting.
    """
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    scores, y_true = scores[order], y_true[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), y_true.size - 1]
    tps = np.cumsum(y_true)[last_of_tie].astype(np.float64)
    fps = 1.0 + last_of_tie - tps
    return fps, tps, scores[last_of_tie]


def called_counts(called: np.ndarray, actual: np.ndarray) -> dict[str, float | int]:
    """tp, fp, fn, tn and precision, recall, accuracy of the calls `called` against `actual`
    (booleans per example). Precision is NaN when nothing is called, recall when nothing is
    actual."""
    tp = int(np.sum(called & actual))
    fp = int(np.sum(called & ~actual))
    fn = int(np.sum(~called & actual))
    tn = int(np.sum(~called & ~actual))
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": tp / (tp + fp) if tp + fp else math.nan,
        "recall": tp / (tp + fn) if tp + fn else math.nan,
        "accuracy": (tp + tn) / actual.size,
    }


def with_intervals(counts: dict[str, float | int]) -> dict[str, Any]:
    """`counts` (from `called_counts`) plus the 95 % intervals of its precision and recall."""
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    return {
        **counts,
        "precision_interval": intervals.wilson_interval(tp, tp + fp),
        "recall_interval": intervals.wilson_interval(tp, tp + fn),
    }


def precision_recall_curve(
    y_true: npt.ArrayLike, scores: npt.ArrayLike, *, drop_intermediate: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and thresholds as scikit-learn's `precision_recall_curve` computes
    them: thresholds increasing, recall decreasing, a last point (precision 1, recall 0) without
    a threshold. Recall is NaN without positives (scikit-learn: 1 with a warning).

    `drop_intermediate` keeps only the first and last point of each run of equal recall, which
    changes neither the plotted curve nor the average precision.
    """
    fps, tps, thresholds = cumulative_counts(y_true, scores)
    if drop_intermediate and fps.size > 2:
        corner = np.r_[True, np.logical_or(np.diff(tps[:-1]), np.diff(tps[1:])), True]
        fps, tps, thresholds = fps[corner], tps[corner], thresholds[corner]
    precision = tps / (tps + fps)  # every threshold calls at least one example
    recall = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """The area under the step-wise PR curve, sum over thresholds of (R_n - R_n-1) P_n
    (scikit-learn's `average_precision_score`, no interpolation); NaN without positives."""
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def threshold_table(
    actual: np.ndarray, scores: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> list[dict[str, Any]]:
    """One row per threshold t: the counts, precision and recall (with their intervals) and the
    false-positive rate of calling the class when its score is >= t."""
    rows = []
    for threshold in thresholds:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"thresholds must lie in [0, 1], got {threshold}")
        counts = with_intervals(called_counts(scores >= threshold, actual))
        negatives = counts["fp"] + counts["tn"]
        rows.append(
            {
                "threshold": threshold,
                **counts,
                "fpr": counts["fp"] / negatives if negatives else math.nan,
            }
        )
    return rows


def precision_recall_summary(
    actual: np.ndarray, scores: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, Any]:
    """The report's PR section for one class: average precision, the curve (intermediate points
    dropped to keep the JSON small) and the threshold table."""
    precision, recall, curve_thresholds = precision_recall_curve(actual, scores)
    plot_precision, plot_recall, plot_thresholds = precision_recall_curve(
        actual, scores, drop_intermediate=True
    )
    return {
        "num_positives": int(actual.sum()),
        "average_precision": average_precision(precision, recall),
        "curve": {
            "precision": plot_precision,
            "recall": plot_recall,
            "thresholds": plot_thresholds,
        },
        "thresholds": threshold_table(actual, scores, thresholds),
    }
