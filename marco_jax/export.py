"""Exports a trained MARCO network as a TensorFlow SavedModel, a TFLite file or an ONNX file.

  python -m marco_jax.export --workdir DIR --format saved_model|tflite|onnx [--out DIR]
      [--checkpoint best|latest|STEP] [--raw_weights]

The formats, what each records and why they exist: `marco_jax.serving.export`.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence

from marco_jax.serving import export


def export_from_workdir(
    workdir: str,
    fmt: str,
    out: str | None = None,
    checkpoint: str = "best",
    raw_weights: bool = False,
) -> pathlib.Path:
    """Exports a training run's checkpoint (its EMA weights unless raw_weights) to `out`
    (default WORKDIR/export). checkpoint: "best", "latest" or a step number."""
    from marco_jax import cli
    from marco_jax.training import checkpoints

    config, model, step = checkpoints.load_for_inference(
        workdir, checkpoint=cli.parse_checkpoint(checkpoint), use_ema=not raw_weights
    )
    provenance = {"workdir": str(workdir), "step": step, "weights": "raw" if raw_weights else "ema"}
    return export.export_model(
        model, config, out or os.path.join(workdir, "export"), fmt, provenance
    )


def run() -> None:
    """Entry point; the flags are defined here so that importing this module defines none."""
    from absl import flags, logging

    from marco_jax import cli

    workdir = flags.DEFINE_string("workdir", None, "Training workdir holding the checkpoints.")
    fmt = flags.DEFINE_enum("format", None, export.FORMATS, "Export format.")
    out = flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/export).")
    checkpoint = flags.DEFINE_string("checkpoint", "best", "best, latest or a step number.")
    raw_weights = flags.DEFINE_bool("raw_weights", False, "Export the raw weights, not the EMA.")
    flags.mark_flags_as_required(["workdir", "format"])

    def main(argv: Sequence[str]) -> None:
        del argv
        logging.set_verbosity(logging.WARNING)  # TF's SavedModel writer logs every step at INFO
        try:
            path = export_from_workdir(
                workdir.value, fmt.value, out.value, checkpoint.value, raw_weights.value
            )
        except (FileNotFoundError, ValueError) as e:  # no such workdir, checkpoint or step
            # (cli.ArgumentError is a ValueError)
            cli.fail(str(e))
        print(json.dumps({"format": fmt.value, "path": str(path)}))

    cli.run(main)


if __name__ == "__main__":
    run()
