"""The paper's evaluation (section 4) of a trained checkpoint, as one report.

  python -m marco_jax.evaluate --workdir DIR [--checkpoint best|latest|STEP] [--split test]
      [--out DIR] [--raw_weights] [--crystal_threshold X] [--data_dir DIR] [--mistakes_per_pair N]

The model and the dataset come from the workdir's config.json (written by training); the split is
read and preprocessed as in training's periodic evaluation, by `evaluator.Evaluator` on every
device of every host. Writes report.json, PNG plots and a self-contained report.html
(`evaluation.report`) into --out, by default DIR/report_<step>_<split>: accuracy and per-class
recall with 95 % Wilson intervals, the Table-4 confusion matrix, the Table-5 spread across data
sources when the split has two or more, Fig-3 ROC curves with the recall at fixed
false-positive rates, Table 6's crystals-vs-rest precision/recall/accuracy (argmax, or
"p_crystals >= X" with --crystal_threshold), the crystals precision-recall curve and threshold
table, and a gallery of the most confident mistakes of each confusion pair (--mistakes_per_pair
of each); and predictions.csv, one row per image (filename, source, label, predicted, the
probabilities). EMA weights unless --raw_weights, as training evaluates
(`config.eval_with_ema`, paper section 3).

Exit codes: 0 report written; 2 wrong input (no such workdir, checkpoint or split), named on
stderr.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
from absl import flags, logging

from marco_jax import cli, logs, parallel
from marco_jax.data import input_pipeline
from marco_jax.evaluation import evaluator, metrics, per_image, report
from marco_jax.labels import CLASS_NAMES
from marco_jax.runs import store


def write_evaluation(
    loaded: store.Loaded,
    source: Sequence[dict[str, Any]],
    *,
    split: str,
    out: str,
    run_info: dict[str, Any],
    crystal_threshold: float | None = None,
    mistakes_per_pair: int = per_image.DEFAULT_MISTAKES_PER_PAIR,
) -> dict[str, Path]:
    """Predicts `source`, computes the section-4 metrics and writes the report and
    predictions.csv into `out`.

    Only process 0 writes; the other processes of a multi-host job return {}.
    """
    predictions = evaluator.predict_model(
        loaded.config, loaded.model, source, text_fields=("source", "filename")
    )
    result = metrics.compute_all(
        predictions.labels,
        predictions.probs,
        sources=predictions.sources(),
        crystal_threshold=crystal_threshold,
    )
    logging.info(
        "accuracy %.4f on %d images of %s (step %d, %s weights)",
        result["accuracy"],
        result["num_examples"],
        split,
        loaded.step,
        "EMA" if loaded.use_ema else "raw",
    )
    if jax.process_index() != 0:
        return {}
    title = f"MARCO evaluation: step {loaded.step}, split {split}"
    gallery = (
        per_image.gallery(predictions, source, CLASS_NAMES, per_pair=mistakes_per_pair)
        if mistakes_per_pair
        else None
    )
    paths = report.write_report(out, result, title=title, run_info=run_info, gallery=gallery)
    paths["predictions"] = Path(out) / per_image.PREDICTIONS_CSV
    per_image.write_predictions_csv(paths["predictions"], predictions, CLASS_NAMES)
    return paths


def evaluate(
    workdir: str,
    *,
    checkpoint: str = "best",
    split: str = "test",
    out: str | None = None,
    use_ema: bool = True,
    crystal_threshold: float | None = None,
    data_dir: str | None = None,
    mistakes_per_pair: int = per_image.DEFAULT_MISTAKES_PER_PAIR,
) -> dict[str, Path]:
    """The whole command: returns the written paths by name (see `report.write_report`, and
    "predictions" for predictions.csv).

    Raises:
      cli.ArgumentError: no such workdir, checkpoint or split, or a threshold outside [0, 1];
        checked before the long part.
    """
    if crystal_threshold is not None and not 0.0 <= crystal_threshold <= 1.0:
        raise cli.ArgumentError(f"crystal_threshold must lie in [0, 1], got {crystal_threshold}.")
    if mistakes_per_pair < 0:
        raise cli.ArgumentError(f"mistakes_per_pair must be >= 0, got {mistakes_per_pair}.")
    loaded = store.load(workdir, checkpoint, use_ema, data_dir)
    try:
        source = input_pipeline.open_tfds_source(loaded.config, split)
    except ValueError as e:  # TFDS: "Unknown split 'x'. Should be one of ['train', 'test']."
        raise cli.ArgumentError(str(e)) from e
    run_info = {
        "workdir": str(workdir),
        "checkpoint": checkpoint,
        "step": loaded.step,
        "weights": "ema" if use_ema else "raw",
        "dataset": f"{loaded.config.dataset.name}/{loaded.config.dataset.config_name}",
        "split": split,
    }
    return write_evaluation(
        loaded,
        source,
        split=split,
        out=out or os.path.join(workdir, f"report_{loaded.step}_{split}"),
        run_info=run_info,
        crystal_threshold=crystal_threshold,
        mistakes_per_pair=mistakes_per_pair,
    )


EXAMPLE = "python -m marco_jax.evaluate --workdir /tmp/marco_synthetic"


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    cli.define_workdir_flag(fv)
    cli.define_checkpoint_flags(fv)
    flags.DEFINE_string("split", "test", "Dataset split to evaluate.", flag_values=fv)
    flags.DEFINE_string(
        "out", None, "Output folder (default: WORKDIR/report_<step>_<split>).", flag_values=fv
    )
    flags.DEFINE_float(
        "crystal_threshold",
        None,
        "Table 6 counts a crystal detection when p_crystals >= this (default: the argmax).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "data_dir", None, "TFDS data_dir replacing the one in config.json.", flag_values=fv
    )
    flags.DEFINE_integer(
        "mistakes_per_pair",
        per_image.DEFAULT_MISTAKES_PER_PAIR,
        "Most confident mistakes shown per confusion pair in report.html (0: none).",
        flag_values=fv,
    )
    flags.mark_flags_as_required(["workdir"], flag_values=fv)


def main(argv: Sequence[str], fv: flags.FlagValues = flags.FLAGS) -> None:
    cli.check_no_positional(argv)
    parallel.initialize_distributed()
    try:
        paths = evaluate(
            fv.workdir,
            checkpoint=fv.checkpoint,
            split=fv.split,
            out=fv.out,
            use_ema=not fv.raw_weights,
            crystal_threshold=fv.crystal_threshold,
            data_dir=fv.data_dir,
            mistakes_per_pair=fv.mistakes_per_pair,
        )
    except cli.ArgumentError as e:
        cli.fail(str(e))
    if paths:
        logs.result(str(paths["html"]))


def run() -> None:
    cli.run(main, define_flags, EXAMPLE)


if __name__ == "__main__":
    run()
