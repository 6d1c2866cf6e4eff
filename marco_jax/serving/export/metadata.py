"""What every export records besides its weights, so that `classify --model` preprocesses exactly
as the model was trained: its preprocessing (`image_size`, `central_fraction`, `resize_method`,
`jpeg_dct`), `class_names` and where the weights came from (`provenance`). SavedModel: the file
`SAVED_MODEL_METADATA`; ONNX: metadata property `METADATA_KEY`; TFLite: flatbuffer metadata
`METADATA_KEY`.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from marco_jax.data import preprocess
from marco_jax.labels import CLASS_NAMES

METADATA_KEY = "marco"
SAVED_MODEL_METADATA = "assets.extra/marco_export.json"


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
