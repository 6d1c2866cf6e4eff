"""Exports a trained MARCO network as a TensorFlow SavedModel, a TFLite file, an ONNX file or an
OpenVINO IR, float or int8 (`export_model`, `export_int8`), and opens such exports for scoring
(`load_exported`); the command is `python -m marco_jax.export`.

Why exports exist: on a CPU, XLA's convolutions run several times slower than oneDNN's (TF),
XNNPACK's (TFLite), MLAS's (ONNX Runtime) or OpenVINO's, and lab workstations have no GPU;
`bench/inference.py` measures the gap, `bench/score_folder.py` whole scoring runs against the
release under TensorFlow. `classify --model` runs any of them through `load_exported`.

How: the network is rebuilt in each target from the layer tables that define it, with every
BatchNorm folded into its convolution (`fold`). `jax2tf` was the alternative and is not used: in
this JAX version it only does native serialization, i.e. one `XlaCallModule` op that TensorFlow
hands back to XLA (no oneDNN kernels, so no speed-up) and that the TFLite converter and ONNX cannot
convert at all. The rebuilt graphs match the JAX model's probabilities to float32 round-off (the
tests hold them to 1e-4 max abs); the things that make that true are spelled out where they are
built: TF-style SAME padding (extra padding at the end), average pools that exclude padding (TF's
`avg_pool`, ONNX's `count_include_pad=0`), max pools that pad with -inf, uint8 -> float as
x / 255 * 2 - 1 like `predict.to_model_input`. Exports always compute in float32, whatever
`config.model.compute_dtype` the JAX model used.

Formats (all take RGB images [batch, S, S, 3] already at the model's size S, as
`preprocess.Preprocessing.eval_transform` makes them: float32 in [0, 1] for the release's
"tf1_bilinear" preprocessing, uint8 for "pil_antialias"; batch size free; they return the
probabilities of `labels.CLASS_NAMES` as "scores"):
- SavedModel (a directory, `saved_model`): signature `images` as above (with `classes`, our class
  names), and `serving_default`, a drop-in for the release's: `image_bytes` (a batch of encoded
  JPEG/PNG/BMP/GIF strings) in, the preprocessing in the graph (`tf_graph`), and `classes` and
  `scores` [N, 4] sorted best first with the release's class names
  (`release.RELEASE_CLASS_NAMES`), as the release's graph returns them (TopKV2 over the softmax).
  A client written for the release runs it unchanged.
- TFLite (one file, float32 weights, `tflite`), from the concrete function of the `images`
  signature.
- ONNX (one file, `onnx_graph`), built node by node with `onnx.helper`.
- OpenVINO IR (`marco.xml` + `marco.bin`, `openvino_ir`), converted from the ONNX graph; with
  `export_int8`, `marco_int8.xml`, quantized by NNCF on calibration images and measured against
  the float model (`int8`, `calibration`).
Each export records its preprocessing and class names (`metadata`), so that `classify --model`
preprocesses exactly as the model was trained.

Importing this package imports neither JAX nor the model code, nor any runtime (TensorFlow,
ONNX, ONNX Runtime, OpenVINO): writing a format imports what it needs, and `runtime` (the
loaders) imports a runtime only when a model is opened, so that scoring an export needs only the
light install (requirements-lab.txt).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from marco_jax.serving.export.runtime import ExportedModel, format_of, load_exported

if TYPE_CHECKING:
    import ml_collections

    from marco_jax.model import inception
    from marco_jax.serving.export.int8 import Calibration

__all__ = ["FORMATS", "ExportedModel", "export_int8", "export_model", "format_of", "load_exported"]

FORMATS = ("saved_model", "tflite", "onnx", "openvino")
_OUTPUT_NAMES = {
    "saved_model": "saved_model",
    "tflite": "marco.tflite",
    "onnx": "marco.onnx",
    "openvino": "marco.xml",
}
INT8_OUTPUT_NAME = "marco_int8.xml"


def _saver(fmt: str):
    """The writer of one format, imported when used (each pulls in its own libraries)."""
    if fmt == "saved_model":
        from marco_jax.serving.export.saved_model import _save_saved_model as save
    elif fmt == "tflite":
        from marco_jax.serving.export.tflite import _save_tflite as save
    elif fmt == "onnx":
        from marco_jax.serving.export.onnx_graph import _save_onnx as save
    else:
        from marco_jax.serving.export.openvino_ir import _save_openvino as save
    return save


def _prepare(
    model: inception.InceptionV3,
    config: ml_collections.ConfigDict,
    out_dir: str | os.PathLike,
    provenance: Mapping[str, Any] | None,
):
    from marco_jax.serving.export.fold import network_of
    from marco_jax.serving.export.metadata import _metadata

    metadata = {**_metadata(config), "provenance": dict(provenance or {})}
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return network_of(model), metadata, out_dir


def export_model(
    model: inception.InceptionV3,
    config: ml_collections.ConfigDict,
    out_dir: str | os.PathLike,
    fmt: str,
    provenance: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """Writes `model` (the weights it holds now, evaluated as in eval mode) in format `fmt`.

    provenance: recorded with the metadata (e.g. the checkpoint step), for whoever finds the file.
    Returns the written path: `out_dir`/saved_model (a directory), marco.tflite, marco.onnx or
    marco.xml (beside marco.bin).
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}; use one of {FORMATS}.")
    network, metadata, out_dir = _prepare(model, config, out_dir, provenance)
    path = out_dir / _OUTPUT_NAMES[fmt]
    _saver(fmt)(network, metadata, path)
    return path


def export_int8(
    model: inception.InceptionV3,
    config: ml_collections.ConfigDict,
    out_dir: str | os.PathLike,
    calibration: Calibration,
    provenance: Mapping[str, Any] | None = None,
    force: bool = False,
) -> tuple[pathlib.Path, dict[str, Any]]:
    """Writes `model` as an int8 OpenVINO IR, `out_dir`/marco_int8.xml (and .bin), quantized on
    `calibration` (`int8.save_int8`); returns the path and its agreement figures.

    Raises:
      int8.LowAgreementError: under `int8.MIN_TOP1_AGREEMENT` and not `force` (nothing written).
    """
    from marco_jax.serving.export import int8

    network, metadata, out_dir = _prepare(model, config, out_dir, provenance)
    path = out_dir / INT8_OUTPUT_NAME
    return path, int8.save_int8(network, metadata, path, calibration, force)
