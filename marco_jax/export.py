"""Exports a trained MARCO network as a TensorFlow SavedModel, a TFLite file or an ONNX file.

  python -m marco_jax.export --workdir DIR --format saved_model|tflite|onnx [--out DIR]
      [--checkpoint best|latest|STEP] [--raw_weights]

The formats, what each records and why they exist: `marco_jax.serving.export`.

Exit codes: 0 written (its format and path printed as JSON); 2 wrong input (no such workdir,
checkpoint or step, a bad --checkpoint), named on stderr.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence

from absl import flags

from marco_jax import cli
from marco_jax.serving import export


def export_from_workdir(
    workdir: str,
    fmt: str,
    out: str | None = None,
    checkpoint: str = "best",
    raw_weights: bool = False,
) -> pathlib.Path:
    """Exports a training run's checkpoint (its EMA weights unless raw_weights) to `out`
    (default WORKDIR/export). checkpoint: "best", "latest" or a step number.

    Raises:
      cli.ArgumentError: no such workdir or checkpoint, or a bad selector (`store.load`).
    """
    from marco_jax.runs import store  # Orbax: not needed to read this module's flags

    loaded = store.load(workdir, checkpoint, use_ema=not raw_weights)
    provenance = {
        "workdir": str(workdir),
        "step": loaded.step,
        "weights": "raw" if raw_weights else "ema",
    }
    return export.export_model(
        loaded.model, loaded.config, out or os.path.join(workdir, "export"), fmt, provenance
    )


EXAMPLE = "python -m marco_jax.export --workdir /tmp/marco_synthetic --format onnx"


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    cli.define_workdir_flag(fv, "Training workdir holding the checkpoints.")
    cli.define_checkpoint_flags(fv)
    flags.DEFINE_enum("format", None, export.FORMATS, "Export format.", flag_values=fv)
    flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/export).", flag_values=fv)
    flags.mark_flags_as_required(["workdir", "format"], flag_values=fv)


def main(argv: Sequence[str], fv: flags.FlagValues = flags.FLAGS) -> None:
    cli.check_no_positional(argv)
    try:
        path = export_from_workdir(fv.workdir, fv.format, fv.out, fv.checkpoint, fv.raw_weights)
    except cli.ArgumentError as e:
        cli.fail(str(e))
    print(json.dumps({"format": fv.format, "path": str(path)}))


def run() -> None:
    cli.run(main, define_flags, EXAMPLE)


if __name__ == "__main__":
    run()
