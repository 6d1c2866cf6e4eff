"""The TFLite export (one file, float32 weights), converted from the concrete function of the
`images` signature, with the metadata as a named flatbuffer metadata buffer."""

from __future__ import annotations

import json
import pathlib
from typing import TYPE_CHECKING, Any

import numpy as np

from marco_jax.serving.export.metadata import METADATA_KEY

if TYPE_CHECKING:  # the network's code (JAX) only where a model is written
    from marco_jax.serving.export.fold import Network


def _tflite_with_metadata(flatbuffer: bytes, metadata: dict[str, Any]) -> bytes:
    """Adds a named metadata buffer, the way TF's converter adds its own conversion metadata."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(flatbuffer, 0))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    builder = flatbuffers.Builder(len(flatbuffer) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _tflite_metadata(flatbuffer: bytes) -> dict[str, Any] | None:
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(flatbuffer, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == METADATA_KEY:
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return None


def _save_tflite(network: Network, metadata: dict[str, Any], path: pathlib.Path) -> None:
    from marco_jax.serving.export.tf_graph import _images_spec, _make_tf_module, _tf

    tf = _tf()
    module = _make_tf_module(network, metadata)
    # TFLite has no use for the class-name strings.
    scores = tf.function(
        lambda images: {"scores": module.probabilities(images)},
        input_signature=[_images_spec(metadata)],
        autograph=False,
    )
    function = scores.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
    path.write_bytes(_tflite_with_metadata(converter.convert(), metadata))
