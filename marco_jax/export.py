"""Exports a trained MARCO network as an OpenVINO IR (float or int8), an ONNX file, a TensorFlow
SavedModel or a TFLite file.

  python -m marco_jax.export --workdir DIR --format openvino|onnx|saved_model|tflite [--out DIR]
      [--checkpoint best|latest|STEP] [--raw_weights]
  python -m marco_jax.export --workdir DIR --format openvino --int8
      (--calibration PATH [--calibration PATH ...] | --calibration_split SPLIT [--data_dir D])
      [--calibration_size 300] [--force]

The formats, what each records and why they exist: `marco_jax.serving.export`.

--int8 writes marco_int8.xml, quantized by NNCF after calibrating on images like the ones the
lab scores: --calibration image files, folders or list files, or --calibration_split, a split
of the run's dataset (e.g. "train", "test"). Every 4th image is held out; the others calibrate
(at most --calibration_size). On the held-out images the export measures how far the int8 model
is from the float model (top-1 agreement, max and mean absolute probability difference), writes
the figures into its metadata and prints them. Under 99 % top-1 agreement it writes nothing and
exits 2, unless --force.

Exit codes: 0 written (its format, path and, for int8, the agreement printed as JSON); 2 wrong
input (no such workdir, checkpoint or step, a bad --checkpoint, unreadable calibration images,
an int8 model under the required agreement), named in one line on stderr.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

from absl import flags

from marco_jax import cli
from marco_jax.serving import export

DEFAULT_CALIBRATION_SIZE = 300  # NNCF's default subset size


def _load(workdir: str, checkpoint: str, raw_weights: bool, data_dir: str | None = None):
    from marco_jax.runs import store  # Orbax: not needed to read this module's flags

    loaded = store.load(workdir, checkpoint, use_ema=not raw_weights, data_dir=data_dir)
    provenance = {
        "workdir": str(workdir),
        "step": loaded.step,
        "weights": "raw" if raw_weights else "ema",
    }
    return loaded, provenance


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
    loaded, provenance = _load(workdir, checkpoint, raw_weights)
    return export.export_model(
        loaded.model, loaded.config, out or os.path.join(workdir, "export"), fmt, provenance
    )


def export_int8_from_workdir(
    workdir: str,
    out: str | None = None,
    checkpoint: str = "best",
    raw_weights: bool = False,
    *,
    calibration_paths: Sequence[str] = (),
    calibration_split: str | None = None,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    data_dir: str | None = None,
    force: bool = False,
) -> tuple[pathlib.Path, dict[str, Any]]:
    """The int8 OpenVINO export of a run's checkpoint, calibrated on image files or on a split
    of its dataset; returns the path and the agreement figures (`export.export_int8`).

    Raises:
      cli.ArgumentError: as `export_from_workdir`, no or unreadable calibration images, or an
        int8 model under `int8.MIN_TOP1_AGREEMENT` without `force` (nothing is written then).
    """
    from marco_jax.data import preprocess
    from marco_jax.serving.export import calibration, int8

    if bool(calibration_paths) == (calibration_split is not None):
        raise cli.ArgumentError(
            "--int8 needs calibration images: pass --calibration PATH (files or folders like "
            "the ones you score) or --calibration_split SPLIT, not both."
        )
    if calibration_size < 1:
        raise cli.ArgumentError(f"--calibration_size must be >= 1, got {calibration_size}.")
    loaded, provenance = _load(workdir, checkpoint, raw_weights, data_dir)
    preprocessing = preprocess.Preprocessing.from_config(loaded.config)
    if calibration_paths:
        images = calibration.from_paths(calibration_paths, preprocessing, calibration_size)
    else:
        images = calibration.from_split(
            loaded.config, calibration_split, preprocessing, calibration_size
        )
    try:
        return export.export_int8(
            loaded.model,
            loaded.config,
            out or os.path.join(workdir, "export"),
            images,
            provenance,
            force=force,
        )
    except int8.LowAgreementError as e:
        raise cli.ArgumentError(str(e)) from e


EXAMPLE = "python -m marco_jax.export --workdir /tmp/marco_synthetic --format onnx"


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    cli.define_workdir_flag(fv, "Training workdir holding the checkpoints.")
    cli.define_checkpoint_flags(fv)
    flags.DEFINE_enum("format", None, export.FORMATS, "Export format.", flag_values=fv)
    flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/export).", flag_values=fv)
    flags.DEFINE_bool(
        "int8", False, "With --format openvino: NNCF int8 quantization.", flag_values=fv
    )
    flags.DEFINE_multi_string(
        "calibration", [], "With --int8: image files, folders or lists to calibrate on.",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_string(
        "calibration_split", None, "With --int8: calibrate on this split of the run's dataset.",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "calibration_size", DEFAULT_CALIBRATION_SIZE,
        "With --int8: at most this many calibration images (a third as many more held out).",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_string(
        "data_dir", None, "TFDS data_dir replacing the one in config.json.", flag_values=fv
    )
    flags.DEFINE_bool(
        "force", False, "With --int8: write it even under 99 % top-1 agreement.", flag_values=fv
    )
    flags.mark_flags_as_required(["workdir", "format"], flag_values=fv)


def _check_flags(fv: flags.FlagValues) -> None:
    int8_only = ("calibration", "calibration_split", "calibration_size", "force")
    if not fv.int8:
        given = [f"--{name}" for name in int8_only if fv[name].present]
        if given:
            raise cli.ArgumentError(f"{', '.join(given)} only apply with --int8.")
    elif fv.format != "openvino":
        raise cli.ArgumentError(
            f"--int8 writes an OpenVINO IR: pass --format openvino, not {fv.format}."
        )


def main(argv: Sequence[str], fv: flags.FlagValues = flags.FLAGS) -> None:
    cli.check_no_positional(argv)
    try:
        _check_flags(fv)
        if fv.int8:
            path, figures = export_int8_from_workdir(
                fv.workdir,
                fv.out,
                fv.checkpoint,
                fv.raw_weights,
                calibration_paths=fv.calibration,
                calibration_split=fv.calibration_split,
                calibration_size=fv.calibration_size,
                data_dir=fv.data_dir,
                force=fv.force,
            )
            print(json.dumps({"format": "openvino", "int8": figures, "path": str(path)}))
            return
        path = export_from_workdir(fv.workdir, fv.format, fv.out, fv.checkpoint, fv.raw_weights)
    except cli.ArgumentError as e:
        cli.fail(str(e))
    print(json.dumps({"format": fv.format, "path": str(path)}))


def run() -> None:
    cli.run(main, define_flags, EXAMPLE)


if __name__ == "__main__":
    run()
