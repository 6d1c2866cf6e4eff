"""`python -m marco_jax.evaluate`: the report of a trained workdir agrees with the model's own
predictions on the split, and wrong arguments end with a clear message."""

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO
from sklearn.metrics import roc_auc_score

from marco_jax import cli, evaluate
from marco_jax.data import input_pipeline, preprocess
from marco_jax.labels import CLASS_NAMES, NUM_CLASSES
from marco_jax.model import predict
from marco_jax.runs import store


def _direct_probabilities(workdir, checkpoint: str, split: str):
    """The split's labels and probabilities without the evaluation pipeline (grain, batching,
    padding, sharding): every record decoded, center-cropped and run through the network."""
    loaded = store.load(str(workdir), checkpoint)
    config, model, step = loaded.config, loaded.model, loaded.step
    source = input_pipeline.open_tfds_source(config, split)
    size, fraction = config.model.image_size, config.input.central_fraction
    crops = [
        preprocess.center_crop_and_resize(preprocess.decode_image(r["image"]), size, fraction)
        for r in source
    ]
    labels = np.array([int(r["label"]) for r in source])
    filenames = [r["filename"].decode() for r in source]
    return step, labels, filenames, predict.predict_fn(model)(np.stack(crops))


def test_report_agrees_with_direct_predictions(trained_workdir):
    step, labels, filenames, probs = _direct_probabilities(trained_workdir, "latest", "test")
    crystals = CLASS_NAMES.index("crystals")
    ordered = np.sort(probs[:, crystals])
    threshold = float(ordered[3] + ordered[4]) / 2  # flags the 4 most crystal-like of 8
    paths = evaluate.evaluate(
        str(trained_workdir), checkpoint="latest", split="test", crystal_threshold=threshold
    )

    out = trained_workdir / f"report_{step}_test"  # the default --out
    assert paths["json"] == out / "report.json"
    for name in (
        "report.json",
        "report.html",
        "confusion_matrix.png",
        "roc.png",
        "predictions.csv",
    ):
        assert (out / name).stat().st_size > 0, name
    report = json.loads(paths["json"].read_text())
    assert report["run_info"] == {
        "workdir": str(trained_workdir),
        "checkpoint": "latest",
        "step": step,
        "weights": "ema",
        "dataset": "marco/synthetic_tiny",
        "split": "test",
    }

    predictions = probs.argmax(axis=1)
    assert report["num_examples"] == len(labels) == 8
    assert report["accuracy"] == pytest.approx(np.mean(predictions == labels), abs=1e-12)
    counts = np.zeros((NUM_CLASSES, NUM_CLASSES), int)
    np.add.at(counts, (labels, predictions), 1)
    assert report["confusion_matrix"] == counts.tolist()
    # Table 6 counts "p_crystals >= threshold" as a crystal detection.
    flagged = probs[:, crystals] >= threshold
    positive_vs_rest = report["positive_vs_rest"]
    assert positive_vs_rest["threshold"] == threshold
    assert positive_vs_rest["tp"] == int(np.sum(flagged & (labels == crystals)))
    assert positive_vs_rest["fp"] == int(np.sum(flagged & (labels != crystals)))
    assert positive_vs_rest["tp"] + positive_vs_rest["fp"] == 4
    # The AUCs depend on every probability, not just the argmax.
    for index, name in enumerate(CLASS_NAMES):
        positives = labels == index
        if 0 < positives.sum() < len(labels):
            expected = roc_auc_score(positives, probs[:, index])
            assert report["roc"][name]["auc"] == pytest.approx(expected, abs=1e-6), name
        else:  # undefined without positives or negatives
            assert report["roc"][name]["auc"] is None, name
    # The synthetic dataset records its one source: per-source numbers, but no Table 5.
    assert report["sources"]["names"] == ["synthetic"]
    assert "source_spread" not in paths

    # predictions.csv: one row per image in the split's order, with the model's probabilities.
    with open(paths["predictions"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["filename"] for r in rows] == filenames
    assert [r["label"] for r in rows] == [CLASS_NAMES[i] for i in labels]
    assert [r["predicted"] for r in rows] == [CLASS_NAMES[i] for i in predictions]
    read_back = [[float(r[f"p_{name}"]) for name in CLASS_NAMES] for r in rows]
    np.testing.assert_allclose(read_back, probs, atol=2e-6)
    # The gallery: up to 4 thumbnails per confusion pair, every mistake's pair.
    page = paths["html"].read_text(encoding="utf-8")
    off_diagonal = counts[~np.eye(NUM_CLASSES, dtype=bool)]
    thumbnails = re.findall(r'<img class="thumb" tabindex="0" alt="([^"]*)"', page)
    assert len(thumbnails) == np.minimum(off_diagonal, 4).sum() > 0
    wrong = {filenames[i] for i in np.flatnonzero(predictions != labels)}
    assert set(thumbnails) <= wrong


def test_bad_checkpoint_values_are_named(trained_workdir, tmp_path):
    with pytest.raises(cli.ArgumentError, match="'newest' is neither 'best', 'latest' nor a step"):
        evaluate.evaluate(str(trained_workdir), checkpoint="newest")
    with pytest.raises(cli.ArgumentError, match=r"No checkpoint for step 999 .*saved: \[3, 6\]"):
        evaluate.evaluate(str(trained_workdir), checkpoint="999")
    with pytest.raises(cli.ArgumentError, match="not a marco_jax training workdir"):
        evaluate.evaluate(str(tmp_path / "nowhere"))
    with pytest.raises(cli.ArgumentError, match=r"Unknown split 'validation'.*'train', 'test'"):
        evaluate.evaluate(str(trained_workdir), split="validation")
    with pytest.raises(cli.ArgumentError, match=r"crystal_threshold must lie in \[0, 1\]"):
        evaluate.evaluate(str(trained_workdir), crystal_threshold=2.0)


def test_command_line_reports_a_bad_checkpoint_without_traceback(trained_workdir):
    command = [sys.executable, "-m", "marco_jax.evaluate", f"--workdir={trained_workdir}"]
    result = subprocess.run(
        [*command, "--checkpoint=newest"], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == cli.EXIT_USAGE == 2
    assert result.stderr.splitlines()[-1] == (
        "error: checkpoint 'newest' is neither 'best', 'latest' nor a step number."
    )
    assert "Traceback" not in result.stderr
