"""The OpenVINO export: an IR (`marco.xml` + `marco.bin`, float32 weights) converted by OpenVINO's
converter from the ONNX graph (`onnx_graph`), with the metadata in its rt_info
(`metadata.OPENVINO_METADATA_PATH`). Its int8 form is `int8`'s.

Why an IR besides the ONNX file: OpenVINO reads it without converting (the start of a scoring run
stays short), and NNCF quantizes it.
"""

from __future__ import annotations

import json
import pathlib
import tempfile
from typing import TYPE_CHECKING, Any

from marco_jax.serving.export.metadata import OPENVINO_METADATA_PATH
from marco_jax.serving.export.onnx_graph import onnx_model
from marco_jax.serving.export.runtime import import_openvino

if TYPE_CHECKING:
    import openvino

    from marco_jax.serving.export.fold import Network


def set_metadata(model: openvino.Model, metadata: dict[str, Any]) -> None:
    model.set_rt_info(json.dumps(metadata), list(OPENVINO_METADATA_PATH))


def openvino_model(network: Network, metadata: dict[str, Any]) -> openvino.Model:
    """The network as an openvino.Model: the ONNX graph (inputs, outputs and numerics as there),
    converted, with `metadata` in its rt_info only (not also under the converter's
    "framework" copy of the ONNX properties, which would go stale in an int8 model)."""
    import onnx

    ov = import_openvino()
    proto = onnx_model(network, metadata)
    del proto.metadata_props[:]
    with tempfile.TemporaryDirectory() as tmp:  # the converter reads ONNX from a file only
        path = pathlib.Path(tmp) / "marco.onnx"
        onnx.save_model(proto, str(path))
        model = ov.convert_model(str(path))
    set_metadata(model, metadata)
    return model


def save_model(model: openvino.Model, path: pathlib.Path) -> None:
    """Writes path (.xml) and its .bin; weights stay float32 (the converter's default would halve
    them to float16, moving the probabilities)."""
    import_openvino().save_model(model, str(path), compress_to_fp16=False)


def _save_openvino(network: Network, metadata: dict[str, Any], path: pathlib.Path) -> None:
    save_model(openvino_model(network, metadata), path)
