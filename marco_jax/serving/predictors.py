"""What scoring needs from a model, whichever kind: its batch function and input geometry.

A checkpoint's network runs as the jitted JAX model (`predict.predict_fn`); an export of
`marco_jax.export` runs in its own runtime and brings its recorded preprocessing and class order.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from marco_jax import cli
from marco_jax.data import preprocess
from marco_jax.labels import CLASS_NAMES
from marco_jax.serving import engine


@dataclasses.dataclass(frozen=True)
class Predictor:
    """The batch function (uint8 or float [N, S, S, 3] -> probabilities) and its geometry.

    pad_batches: the function wants exactly --batch_size images a call (a jitted model compiles
    one shape); exports take any batch size. about: what scores, for the run's provenance.
    """

    predict: engine.PredictFn
    preprocessing: preprocess.Preprocessing
    pad_batches: bool = True
    about: dict[str, Any] = dataclasses.field(default_factory=dict)


def checkpoint_predictor(loaded) -> Predictor:
    """The network of a `store.Loaded` checkpoint, preprocessing as its run's config says."""
    from marco_jax.model import predict

    return Predictor(
        predict.predict_fn(loaded.model),
        preprocess.Preprocessing.from_config(loaded.config),
        about={"runtime": "jax", "step": loaded.step, "ema": loaded.use_ema},
    )


def exported_predictor(path: str, **options: Any) -> Predictor:
    """An export of `marco_jax.export`; its recorded geometry and class order are used.

    options: `runtime.load_exported`'s (num_threads, runtime, precision, batch_size).

    Raises:
      cli.ArgumentError: not an export, or one whose classes differ from CLASS_NAMES.
    """
    from marco_jax.serving.export import runtime  # a runtime only: no JAX, no model code

    try:
        exported = runtime.load_exported(path, **options)
    except (OSError, ValueError) as e:
        raise cli.ArgumentError(str(e)) from e
    if tuple(exported.class_names) != CLASS_NAMES:
        raise cli.ArgumentError(
            f"{path} predicts classes {exported.class_names}, not {CLASS_NAMES}; export the "
            "model again with this version of marco_jax."
        )
    about = {
        "format": exported.format,
        "runtime": exported.runtime,
        "precision": exported.precision or "f32",
        "export_provenance": exported.provenance,
    }
    if exported.quantization:
        about["int8"] = exported.quantization
    return Predictor(exported, exported.preprocessing, pad_batches=False, about=about)
