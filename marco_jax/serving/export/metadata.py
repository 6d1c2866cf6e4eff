"""What every export records besides its weights, so that `classify --model` preprocesses exactly
as the model was trained: its preprocessing (`image_size`, `central_fraction`, `resize_method`,
`jpeg_dct`), `class_names` and where the weights came from (`provenance`); an int8 export also
its calibration and its measured agreement with the float model (`int8`). SavedModel: the file
`SAVED_MODEL_METADATA`; ONNX: metadata property `METADATA_KEY`; TFLite: flatbuffer metadata
`METADATA_KEY`; OpenVINO IR: the model's rt_info at `OPENVINO_METADATA_PATH`. All hold the same
JSON text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from marco_jax.data import preprocess
from marco_jax.labels import CLASS_NAMES

if TYPE_CHECKING:
    import ml_collections

METADATA_KEY = "marco"
SAVED_MODEL_METADATA = "assets.extra/marco_export.json"
OPENVINO_METADATA_PATH = (METADATA_KEY,)


def _metadata(config: ml_collections.ConfigDict) -> dict[str, Any]:
    if config.model.num_classes != len(CLASS_NAMES):
        raise ValueError(
            f"config.model.num_classes is {config.model.num_classes}, but an export names its "
            f"outputs with labels.CLASS_NAMES ({len(CLASS_NAMES)} classes): export a MARCO "
            "classifier."
        )
    return {
        **preprocess.Preprocessing.from_config(config).to_metadata(),
        "class_names": list(CLASS_NAMES),
    }


def _input_dtype(metadata: dict[str, Any]) -> np.dtype:
    """uint8 images for Pillow's preprocessing, float32 in [0, 1] for the release's."""
    return preprocess.Preprocessing.from_metadata(metadata).input_dtype
