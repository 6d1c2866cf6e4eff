"""What scoring needs from a model, whichever kind: its batch function and input geometry.

A checkpoint's network runs as the jitted JAX model (`predict.predict_fn`); an export of
`marco_jax.export` runs in its own runtime and brings its recorded preprocessing and class order.
"""

from __future__ import annotations

import dataclasses

from marco_jax import cli
from marco_jax.data import preprocess
from marco_jax.labels import CLASS_NAMES
from marco_jax.serving import engine


@dataclasses.dataclass(frozen=True)
class Predictor:
    """The batch function (uint8 or float [N, S, S, 3] -> probabilities) and its geometry."""

    predict: engine.PredictFn
    preprocessing: preprocess.Preprocessing


def checkpoint_predictor(loaded) -> Predictor:
    """The network of a `store.Loaded` checkpoint, preprocessing as its run's config says."""
    from marco_jax.model import predict

    return Predictor(
        predict.predict_fn(loaded.model), preprocess.Preprocessing.from_config(loaded.config)
    )


def exported_predictor(path: str) -> Predictor:
    """An export of `marco_jax.export`; its recorded geometry and class order are used.

    Raises:
      cli.ArgumentError: not an export, or one whose classes differ from CLASS_NAMES.
    """
    from marco_jax.serving import export

    try:
        exported = export.load_exported(path)
    except (OSError, ValueError) as e:
        raise cli.ArgumentError(str(e)) from e
    if tuple(exported.class_names) != CLASS_NAMES:
        raise cli.ArgumentError(
            f"{path} predicts classes {exported.class_names}, not {CLASS_NAMES}; export the "
            "model again with this version of marco_jax."
        )
    return Predictor(exported, exported.preprocessing)
