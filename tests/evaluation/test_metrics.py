"""marco_jax.evaluation.metrics (and its intervals and one-vs-rest helpers) against numbers worked
out by hand, and ROC and precision-recall curves against scikit-learn."""

import json
import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from marco_jax.evaluation import intervals, metrics, one_vs_rest

# Eight examples, four classes. The argmax of each row is noted beside it.
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 3])
PROBS = np.array(
    [
        [0.7, 0.1, 0.1, 0.1],  # label 0, argmax 0
        [0.3, 0.5, 0.1, 0.1],  # label 0, argmax 1
        [0.6, 0.2, 0.1, 0.1],  # label 0, argmax 0
        [0.1, 0.8, 0.05, 0.05],  # label 1, argmax 1
        [0.2, 0.4, 0.3, 0.1],  # label 1, argmax 1
        [0.1, 0.1, 0.7, 0.1],  # label 2, argmax 2
        [0.5, 0.1, 0.4, 0.0],  # label 2, argmax 0
        [0.25, 0.45, 0.1, 0.2],  # label 3, argmax 1
    ]
)


def test_predictions_accuracy_and_confusion_by_hand():
    preds = metrics.predictions(PROBS)
    np.testing.assert_array_equal(preds, [0, 1, 0, 1, 1, 2, 0, 1])
    # Correct: examples 0, 2, 3, 4, 5 -> 5 of 8.
    assert metrics.accuracy(LABELS, preds) == 5 / 8
    counts = metrics.confusion_matrix(LABELS, preds, 4)
    expected = [
        [2, 1, 0, 0],  # label 0 predicted 0, 1, 0
        [0, 2, 0, 0],  # label 1 predicted 1, 1
        [1, 0, 1, 0],  # label 2 predicted 2, 0
        [0, 1, 0, 0],  # label 3 predicted 1
    ]
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_allclose(
        metrics.row_normalize(counts),
        [[2 / 3, 1 / 3, 0, 0], [0, 1, 0, 0], [0.5, 0, 0.5, 0], [0, 1, 0, 0]],
    )
    np.testing.assert_allclose(metrics.per_class_accuracy(counts), [2 / 3, 1, 0.5, 0])


def test_argmax_ties_go_to_the_lowest_class_index():
    assert metrics.predictions(np.array([[0.4, 0.4, 0.1, 0.1]]))[0] == 0


def test_a_class_without_examples_has_a_nan_row_and_nan_recall():
    # Drop the only "other" example: row 3 has no examples.
    preds = metrics.predictions(PROBS[:7])
    counts = metrics.confusion_matrix(LABELS[:7], preds, 4)
    normalized = metrics.row_normalize(counts)
    assert np.all(np.isnan(normalized[3]))
    assert np.all(np.isfinite(normalized[:3]))
    recall = metrics.per_class_accuracy(counts)
    assert math.isnan(recall[3])
    np.testing.assert_allclose(recall[:3], [2 / 3, 1, 0.5])


def test_roc_curve_with_ties_by_hand():
    # Sorted by score: 0.9(+) | 0.8(-) 0.8(+) | 0.6(+) 0.6(-) | 0.1(-); P = N = 3.
    y = np.array([1, 0, 1, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.8, 0.6, 0.6, 0.1])
    fpr, tpr, thresholds = metrics.roc_curve(y, scores)
    # One point per distinct score, tied examples cross together, plus the (0, 0) start.
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.8, 0.6, 0.1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 2 / 3, 1])
    # Trapezoids: 1/3 * (1/3 + 2/3) / 2 + 1/3 * (2/3 + 1) / 2 + 1/3 * 1 = 3/18 + 5/18 + 6/18.
    # Cross-check by pairs: 0.9 beats 3 negatives, 0.8 ties one and beats 2 (2.5),
    # 0.6 ties one and beats one (1.5): (3 + 2.5 + 1.5) / 9 = 7/9.
    assert metrics.auc(fpr, tpr) == pytest.approx(7 / 9)


def test_recall_at_fpr_and_fpr_at_recall_by_hand():
    y = np.array([1, 0, 1, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.8, 0.6, 0.6, 0.1])
    curve = metrics.roc_curve(y, scores)
    # FPR <= 0: points (0, 0) and (0, 1/3); the best is threshold 0.9.
    assert metrics.recall_at_fpr(*curve, 0.0) == pytest.approx((0.0, 1 / 3, 0.9))
    # FPR <= 0.5 adds (1/3, 2/3) at threshold 0.8.
    assert metrics.recall_at_fpr(*curve, 0.5) == pytest.approx((1 / 3, 2 / 3, 0.8))
    # FPR <= 0.7 adds (2/3, 1); (1, 1) at 0.1 also reaches recall 1 but costs more FPR.
    assert metrics.recall_at_fpr(*curve, 0.7) == pytest.approx((2 / 3, 1.0, 0.6))
    assert metrics.recall_at_fpr(*curve, 1.0) == pytest.approx((2 / 3, 1.0, 0.6))
    # Recall >= 0.6 first reached at (1/3, 2/3); recall >= 0.9 at (2/3, 1).
    assert metrics.fpr_at_recall(*curve, 0.6) == pytest.approx((1 / 3, 2 / 3, 0.8))
    assert metrics.fpr_at_recall(*curve, 0.9) == pytest.approx((2 / 3, 1.0, 0.6))
    with pytest.raises(ValueError, match="max_fpr"):
        metrics.recall_at_fpr(*curve, 1.5)
    with pytest.raises(ValueError, match="min_recall"):
        metrics.fpr_at_recall(*curve, -0.1)


def test_recall_at_fpr_uses_points_that_the_plotted_curve_drops():
    # (1/3, 2/3) lies on the line from (0, 1/3) to (2/3, 1): the compact curve drops it, but it
    # is a real threshold (0.8) and the best one with FPR <= 0.5.
    labels = np.array([0, 1, 0, 0, 1, 1])
    crystal = np.array([0.9, 0.8, 0.8, 0.6, 0.6, 0.1])
    probs = np.stack([crystal, 1 - crystal, np.zeros(6), np.zeros(6)], axis=1)
    result = metrics.compute_all(labels, probs, fpr_points=[0.5], recall_points=[0.6])
    roc = result["roc"]["crystals"]
    assert 0.8 not in roc["curve"]["thresholds"]
    assert roc["recall_at_fpr"] == [
        {"max_fpr": 0.5, "fpr": pytest.approx(1 / 3), "tpr": pytest.approx(2 / 3), "threshold": 0.8}
    ]
    assert roc["fpr_at_recall"][0]["threshold"] == 0.8


@pytest.mark.parametrize("drop_intermediate", [False, True])
def test_roc_curve_and_auc_match_scikit_learn_with_many_ties(drop_intermediate):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    # Scores on a coarse grid so that most of them are tied, shifted up for positives.
    scores = np.round(rng.random(500) * 0.6 + 0.3 * y, 1)
    ours = metrics.roc_curve(y, scores, drop_intermediate=drop_intermediate)
    theirs = skm.roc_curve(y, scores, drop_intermediate=drop_intermediate)
    assert len(ours[0]) < 20  # the grid really produced ties
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)
    assert metrics.auc(ours[0], ours[1]) == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-12)


def test_compute_all_roc_matches_scikit_learn_per_class():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + 1.5 * np.eye(4)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probs = np.round(probs, 2)  # ties
    probs /= probs.sum(axis=1, keepdims=True)
    result = metrics.compute_all(labels, probs)
    for cls, name in enumerate(result["class_names"]):
        roc = result["roc"][name]
        fpr, tpr, thresholds = skm.roc_curve(labels == cls, probs[:, cls])
        assert roc["auc"] == pytest.approx(skm.roc_auc_score(labels == cls, probs[:, cls]))
        np.testing.assert_array_equal(roc["curve"]["fpr"], fpr)
        np.testing.assert_array_equal(roc["curve"]["tpr"], tpr)
        assert roc["curve"]["thresholds"][0] is None  # +inf is not valid JSON
        np.testing.assert_array_equal(roc["curve"]["thresholds"][1:], thresholds[1:])
        assert roc["num_positives"] == int(np.sum(labels == cls))


def test_roc_of_a_class_without_examples_is_undefined_like_scikit_learn():
    y = np.zeros(5, dtype=int)
    scores = np.array([0.1, 0.4, 0.4, 0.3, 0.9])
    fpr, tpr, thresholds = metrics.roc_curve(y, scores)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's UndefinedMetricWarning
        sk_fpr, sk_tpr, sk_thresholds = skm.roc_curve(y, scores, drop_intermediate=False)
    np.testing.assert_array_equal(fpr, sk_fpr)
    np.testing.assert_array_equal(tpr, sk_tpr)  # all NaN
    np.testing.assert_array_equal(thresholds, sk_thresholds)
    assert math.isnan(metrics.auc(fpr, tpr))
    assert all(math.isnan(v) for v in metrics.recall_at_fpr(fpr, tpr, thresholds, 0.1))
    # In compute_all: "other" has no examples in the first seven rows -> None, not NaN.
    result = metrics.compute_all(LABELS[:7], PROBS[:7])
    other = result["roc"]["other"]
    assert other["auc"] is None and other["num_positives"] == 0
    assert other["recall_at_fpr"][0]["tpr"] is None
    assert result["per_class_accuracy"][3] is None
    assert result["confusion_matrix_normalized"][3] == [None, None, None, None]


def test_crystals_vs_rest_by_argmax_and_by_threshold():
    # Argmax calls crystals on examples 0, 2, 6; true crystals are 0, 1, 2.
    # TP = {0, 2}, FP = {6}, FN = {1}, TN = {3, 4, 5, 7}.
    scores = metrics.one_vs_rest_scores(LABELS, PROBS, 0)
    assert scores == {
        "tp": 2,
        "fp": 1,
        "fn": 1,
        "tn": 4,
        "precision": 2 / 3,
        "recall": 2 / 3,
        "accuracy": 6 / 8,
    }
    # P(crystals) >= 0.25 on examples 0 (0.7), 1 (0.3), 2 (0.6), 6 (0.5), 7 (0.25).
    # TP = {0, 1, 2}, FP = {6, 7}, FN = {}, TN = {3, 4, 5}.
    scores = metrics.one_vs_rest_scores(LABELS, PROBS, 0, threshold=0.25)
    assert (scores["tp"], scores["fp"], scores["fn"], scores["tn"]) == (3, 2, 0, 3)
    assert scores["precision"] == 3 / 5
    assert scores["recall"] == 1.0
    assert scores["accuracy"] == 6 / 8
    # Nothing called positive: precision undefined.
    assert math.isnan(metrics.one_vs_rest_scores(LABELS, PROBS, 0, threshold=1.0)["precision"])
    with pytest.raises(ValueError, match="threshold"):
        metrics.one_vs_rest_scores(LABELS, PROBS, 0, threshold=2.0)


def test_compute_all_on_the_hand_example():
    result = metrics.compute_all(LABELS, PROBS, crystal_threshold=0.25)
    assert result["num_examples"] == 8
    assert result["class_counts"] == [3, 2, 2, 1]
    assert result["accuracy"] == 5 / 8
    assert result["confusion_matrix"][2] == [1, 0, 1, 0]
    assert result["per_class_accuracy"] == pytest.approx([2 / 3, 1, 0.5, 0])
    assert result["positive_vs_rest"]["threshold"] == 0.25
    assert result["positive_vs_rest"]["precision"] == 3 / 5
    # Crystals: P(crystals) of the 3 positives 0.7, 0.3, 0.6 and the 5 negatives 0.1, 0.2, 0.1,
    # 0.5, 0.25. 0.7 and 0.6 beat all 5 negatives, 0.3 beats 4 (not 0.5): AUC = 14/15.
    crystals = result["roc"]["crystals"]
    assert crystals["auc"] == pytest.approx(14 / 15)
    # The curve: (0,0) (0,1/3)@0.7 (0,2/3)@0.6 (1/5,2/3)@0.5 (1/5,1)@0.3 ...
    at = {p["max_fpr"]: (p["fpr"], p["tpr"], p["threshold"]) for p in crystals["recall_at_fpr"]}
    assert at[0.1] == pytest.approx((0.0, 2 / 3, 0.6))
    assert at[0.25] == pytest.approx((0.2, 1.0, 0.3))
    assert result["sources"] is None
    json.dumps(result, allow_nan=False)  # strict JSON: no NaN, no inf, no numpy types


# Table 5 by hand. Source A: labels 0 0 1 1 predicted 0 0 1 0 -> row 0 [1, 0], row 1 [.5, .5].
# Source B: labels 0 0 0 0 1 1 2 predicted 0 0 0 1 1 1 2 -> row 0 [.75, .25], row 1 [0, 1],
# row 2 [0, 0, 1]. Source C: labels 1 1 predicted 1 1 -> row 1 [0, 1]; no class 0 or 2.
SPREAD_LABELS = np.array([0, 0, 1, 1] + [0, 0, 0, 0, 1, 1, 2] + [1, 1])
SPREAD_PREDS = np.array([0, 0, 1, 0] + [0, 0, 0, 1, 1, 1, 2] + [1, 1])
SPREAD_SOURCES = np.array(["A"] * 4 + ["B"] * 7 + ["C"] * 2)


def test_source_spread_by_hand():
    names, counts = metrics.source_confusion_matrices(
        SPREAD_LABELS, SPREAD_PREDS, SPREAD_SOURCES, 4
    )
    assert names == ["A", "B", "C"]
    np.testing.assert_array_equal(counts[2, 1], [0, 2, 0, 0])
    spread, num_sources = metrics.source_spread(metrics.row_normalize(counts))
    np.testing.assert_array_equal(num_sources, [2, 3, 1, 0])
    # Row 0 (C has no class 0, skipped): population std of two values is |a - b| / 2:
    # |1 - .75| / 2 = .125 and |0 - .25| / 2 = .125.
    np.testing.assert_allclose(spread[0], [0.125, 0.125, 0, 0])
    # Row 1 over A, B, C: column 0 is (.5, 0, 0), mean 1/6, variance (1/9 + 1/36 + 1/36) / 3
    # = 1/18; column 1 is (.5, 1, 1), the same spread.
    np.testing.assert_allclose(spread[1], [math.sqrt(1 / 18), math.sqrt(1 / 18), 0, 0])
    # Row 2 seen only in B, row 3 in none: no spread to report.
    assert np.all(np.isnan(spread[2:]))
    # Sample std (ddof=1) of two values is |a - b| / sqrt(2).
    sample, _ = metrics.source_spread(metrics.row_normalize(counts), ddof=1)
    np.testing.assert_allclose(sample[0], [0.25 / math.sqrt(2), 0.25 / math.sqrt(2), 0, 0])


def test_compute_all_reports_sources():
    # Probabilities whose argmax is SPREAD_PREDS.
    probs = np.full((SPREAD_LABELS.size, 4), 0.1)
    probs[np.arange(SPREAD_LABELS.size), SPREAD_PREDS] = 0.7
    result = metrics.compute_all(SPREAD_LABELS, probs, sources=SPREAD_SOURCES)
    sources = result["sources"]
    assert sources["names"] == ["A", "B", "C"]
    assert sources["num_examples"] == [4, 7, 2]
    assert sources["accuracy"] == pytest.approx([3 / 4, 6 / 7, 1.0])
    assert sources["class_counts"][0] == [2, 2, 0, 0]
    assert sources["spread"][0] == pytest.approx([0.125, 0.125, 0, 0])
    assert sources["spread"][2] == [None] * 4
    assert sources["spread_num_sources"] == [2, 3, 1, 0]
    assert sources["spread_ddof"] == 0
    assert sources["confusion_matrix_normalized"][0][0] == [1.0, 0.0, 0.0, 0.0]
    # Integer source ids work and are reported as strings.
    by_int = metrics.compute_all(SPREAD_LABELS, probs, sources=np.repeat([7, 3, 5], [4, 7, 2]))
    assert by_int["sources"]["names"] == ["3", "5", "7"]


@pytest.mark.parametrize(
    ("labels", "probs", "match"),
    [
        (LABELS[:7], PROBS, "7 examples but probs has 8 rows"),
        (LABELS, PROBS[:, :3], r"shape \(N, 4\)"),
        (LABELS, PROBS[:, 0], r"shape \(N, 4\)"),
        (LABELS.reshape(2, 4), PROBS, "1-D"),
        (LABELS[:0], PROBS[:0], "empty"),
        (LABELS.astype(float), PROBS, "integer"),
        (np.r_[LABELS[:7], 4], PROBS, r"\[0, 4\); example 7 has label 4"),
        (np.r_[-1, LABELS[1:]], PROBS, "example 0 has label -1"),
        (LABELS, np.log(PROBS + 0.01), "not logits"),
        (LABELS, PROBS * 2, "row 0 sums to 2"),
        (LABELS, np.r_[[[-0.5, 1.0, 0.5, 0.0]], PROBS[1:]], "row 0 sums to 1 with minimum -0.5"),
        (
            LABELS,
            np.where(np.eye(8, 4, dtype=bool), np.nan, PROBS),
            "NaN or infinite value in row 0",
        ),
        (LABELS, (PROBS * 100).astype(int), "floating point"),
    ],
)
def test_bad_inputs_are_rejected_with_a_clear_message(labels, probs, match):
    with pytest.raises(ValueError, match=match):
        metrics.compute_all(labels, probs)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="one data source per example"):
        metrics.compute_all(LABELS, PROBS, sources=["A"] * 7)
    with pytest.raises(ValueError, match="positive_class 'crystal' is not one of"):
        metrics.compute_all(LABELS, PROBS, positive_class="crystal")
    with pytest.raises(ValueError, match="must lie in"):
        metrics.compute_all(LABELS, PROBS, fpr_points=[1.6])
    with pytest.raises(ValueError, match="threshold must lie in"):
        metrics.compute_all(LABELS, PROBS, crystal_threshold=-0.1)


def test_float32_probabilities_that_sum_to_one_approximately_are_accepted():
    probs = (PROBS + 1e-4).astype(np.float32)  # rows sum to 1.0004
    assert metrics.compute_all(LABELS, probs)["accuracy"] == 5 / 8


# The Wilson score interval written out: z = 1.959963984540054 (the normal 97.5 % quantile),
# centre = (k + z^2/2) / (n + z^2), half width = z / (n + z^2) * sqrt(k (n - k) / n + z^2 / 4).
Z = 1.959963984540054


def _wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    centre = (k + Z * Z / 2) / (n + Z * Z)
    half = Z / (n + Z * Z) * math.sqrt(k * (n - k) / n + Z * Z / 4)
    return centre - half, centre + half


def test_wilson_intervals_by_hand():
    # 5 of 8: z^2 = 3.841459; centre = 6.920729 / 11.841459 = 0.584449; half width =
    # 1.959964 / 11.841459 * sqrt(1.875 + 0.960365) = 0.165517 * 1.683855 = 0.278707.
    assert intervals.wilson_interval(5, 8) == pytest.approx((0.305742, 0.863156), abs=1e-6)
    for k, n in [(1, 7), (2, 3), (80, 100), (672, 800)]:
        assert intervals.wilson_interval(k, n) == pytest.approx(_wilson_by_hand(k, n), abs=1e-12)
    # The figure: 800 images at 84 % accuracy give about +-2.6 points.
    low, high = intervals.wilson_interval(672, 800)
    assert (high - low) / 2 == pytest.approx(0.0254, abs=5e-4)
    # At 0 % and 100 % the interval keeps a width (Wald's would be [0, 0] and [1, 1]):
    # 0 of 10: [0, z^2 / (10 + z^2)] = [0, 0.277533].
    assert intervals.wilson_interval(0, 10) == pytest.approx((0.0, 0.277533), abs=1e-6)
    assert intervals.wilson_interval(3, 3) == pytest.approx((1 - 3.841459 / 6.841459, 1.0))
    assert all(math.isnan(x) for x in intervals.wilson_interval(0, 0))
    with pytest.raises(ValueError, match="successes must lie in"):
        intervals.wilson_interval(9, 8)


def test_compute_all_intervals_on_the_hand_example():
    result = metrics.compute_all(LABELS, PROBS, crystal_threshold=0.25)
    assert result["interval"] == {"method": "wilson", "confidence": 0.95}
    assert result["accuracy_interval"] == pytest.approx([0.305742, 0.863156], abs=1e-6)  # 5 of 8
    # Recalls 2 of 3, 2 of 2, 1 of 2, 0 of 1.
    expected = [_wilson_by_hand(k, n) for k, n in [(2, 3), (2, 2), (1, 2), (0, 1)]]
    for ours, theirs in zip(result["per_class_accuracy_interval"], expected, strict=True):
        assert ours == pytest.approx(list(theirs), abs=1e-12)
    # Crystals at p >= 0.25: TP 3, FP 2, FN 0 (test_crystals_vs_rest_by_argmax_and_by_threshold).
    positive = result["positive_vs_rest"]
    assert positive["precision_interval"] == pytest.approx(list(_wilson_by_hand(3, 5)))
    assert positive["recall_interval"] == pytest.approx(list(_wilson_by_hand(3, 3)))
    # A class without examples has no interval.
    assert metrics.compute_all(LABELS[:7], PROBS[:7])["per_class_accuracy_interval"][3] == [
        None,
        None,
    ]


def test_crystals_threshold_table_by_hand():
    # P(crystals): positives 0.7, 0.3, 0.6; negatives 0.1, 0.2, 0.1, 0.5, 0.25.
    pr = metrics.compute_all(LABELS, PROBS, pr_thresholds=(0.25, 0.6, 0.8))["precision_recall"]
    assert pr["positive_class"] == "crystals" and pr["num_positives"] == 3
    at = {row["threshold"]: row for row in pr["thresholds"]}
    # >= 0.25 calls 0.7, 0.3, 0.6 (all positives) and 0.5, 0.25: precision 3/5, recall 1.
    assert (at[0.25]["tp"], at[0.25]["fp"], at[0.25]["fn"]) == (3, 2, 0)
    assert (at[0.25]["precision"], at[0.25]["recall"], at[0.25]["fpr"]) == (0.6, 1.0, 0.4)
    assert at[0.25]["precision_interval"] == pytest.approx(list(_wilson_by_hand(3, 5)))
    # >= 0.6 calls 0.7 and 0.6: precision 1, recall 2/3, no false positive.
    assert (at[0.6]["precision"], at[0.6]["recall"], at[0.6]["fpr"]) == (1.0, 2 / 3, 0.0)
    # >= 0.8 calls nothing: precision undefined, recall 0.
    assert at[0.8]["precision"] is None and at[0.8]["precision_interval"] == [None, None]
    assert at[0.8]["recall"] == 0.0
    # Average precision: ranked 0.7(+) 0.6(+) 0.5(-) 0.3(+): (1 + 1 + 3/4) / 3 = 11/12.
    assert pr["average_precision"] == pytest.approx(11 / 12)
    with pytest.raises(ValueError, match="thresholds must lie in"):
        metrics.compute_all(LABELS, PROBS, pr_thresholds=(1.5,))


@pytest.mark.parametrize("drop_intermediate", [False, True])
def test_precision_recall_curve_matches_scikit_learn_with_ties(drop_intermediate):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    scores = np.round(rng.random(400) * 0.6 + 0.3 * y, 1)  # a coarse grid: many ties
    ours = one_vs_rest.precision_recall_curve(y, scores, drop_intermediate=drop_intermediate)
    theirs = skm.precision_recall_curve(y, scores, drop_intermediate=drop_intermediate)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-15)
    full = one_vs_rest.precision_recall_curve(y, scores)
    assert one_vs_rest.average_precision(*full[:2]) == pytest.approx(
        skm.average_precision_score(y, scores), abs=1e-12
    )
    # The stored (dropped) curve has the same area.
    assert one_vs_rest.average_precision(*ours[:2]) == pytest.approx(
        skm.average_precision_score(y, scores), abs=1e-12
    )
