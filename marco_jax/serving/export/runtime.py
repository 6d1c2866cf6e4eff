"""Loading an export for scoring (`load_exported`): the format is read from the path, its
runtime (TensorFlow, TFLite's interpreter or ONNX Runtime) is imported only when a model of that
format is opened, and the recorded metadata gives the preprocessing and class order."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from marco_jax.data import preprocess
from marco_jax.serving.export.metadata import METADATA_KEY, SAVED_MODEL_METADATA
from marco_jax.serving.export.tf_graph import _tf
from marco_jax.serving.export.tflite import _tflite_metadata


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    """An exported model ready to score: call it with [N, S, S, 3] images as its
    `preprocessing.eval_transform` makes them (uint8, or float32 in [0, 1]); get [N, classes]."""

    path: str
    format: str
    preprocessing: preprocess.Preprocessing
    class_names: tuple[str, ...]
    provenance: dict[str, Any]  # where the weights came from (workdir, step, ema/raw), if known
    predict: Callable[[np.ndarray], np.ndarray]

    @property
    def image_size(self) -> int:
        return self.preprocessing.image_size

    @property
    def central_fraction(self) -> float:
        return self.preprocessing.central_fraction

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        size, dtype = self.image_size, self.preprocessing.input_dtype
        if images.dtype != dtype or images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(
                f"{self.path} takes {dtype} images [batch, {size}, {size}, 3], got "
                f"{images.dtype} {images.shape}; make them with its "
                "preprocessing.eval_transform first."
            )
        return self.predict(np.ascontiguousarray(images))


def format_of(path: str | os.PathLike) -> str:
    """Which export a path holds: a SavedModel directory, a .tflite or an .onnx file."""
    path = pathlib.Path(path)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return "saved_model"
    if path.is_file() and path.suffix.lower() == ".tflite":
        return "tflite"
    if path.is_file() and path.suffix.lower() == ".onnx":
        return "onnx"
    raise ValueError(
        f"{path} is not an exported model: expected a SavedModel directory (with "
        "saved_model.pb), a .tflite file or an .onnx file written by marco_jax.export."
    )


# Each loader returns (the recorded metadata or None, predict).


def _load_saved_model(path: pathlib.Path, num_threads: int):
    """num_threads is not applied: TF's thread pools are per process and fixed at its start."""
    tf = _tf()
    del num_threads
    signature = tf.saved_model.load(str(path)).signatures["images"]
    recorded = path / SAVED_MODEL_METADATA
    metadata = json.loads(recorded.read_text()) if recorded.is_file() else None
    return metadata, lambda images: signature(images=tf.constant(images))["scores"].numpy()


def _load_tflite(path: pathlib.Path, num_threads: int):
    tf = _tf()
    flatbuffer = path.read_bytes()
    with warnings.catch_warnings():
        # TF 2.21 still ships this interpreter; its successor (ai_edge_litert) is not a
        # dependency, so the deprecation notice would only alarm lab users.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        interpreter = tf.lite.Interpreter(model_content=flatbuffer, num_threads=num_threads)
    (input_detail,) = interpreter.get_input_details()
    (output_detail,) = interpreter.get_output_details()
    allocated_shape = None

    def predict(images: np.ndarray) -> np.ndarray:
        nonlocal allocated_shape
        if images.shape != allocated_shape:  # the batch size is set at allocation
            interpreter.resize_tensor_input(input_detail["index"], images.shape, strict=True)
            interpreter.allocate_tensors()
            allocated_shape = images.shape
        interpreter.set_tensor(input_detail["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(output_detail["index"]).copy()

    return _tflite_metadata(flatbuffer), predict


def _load_onnx(path: pathlib.Path, num_threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = num_threads
    try:
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # ONNX Runtime's errors derive from Exception only
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"{path} is not a readable ONNX model (ONNX Runtime: {reason}); the file is damaged "
            "or not an ONNX model: export the checkpoint again with marco_jax.export."
        ) from None
    recorded = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    metadata = json.loads(recorded) if recorded else None
    return metadata, lambda images: session.run(["scores"], {"images": images})[0]


_LOADERS = {"saved_model": _load_saved_model, "tflite": _load_tflite, "onnx": _load_onnx}


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):  # honours taskset / container CPU sets (Linux)
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_exported(path: str | os.PathLike, num_threads: int | None = None) -> ExportedModel:
    """Opens any export for scoring; the format is read from the path (see `format_of`).

    num_threads: CPU threads for TFLite and ONNX Runtime (default: every usable core; TFLite's
    own default is one). A SavedModel runs on TensorFlow's process-wide thread pools.
    The returned model is not thread-safe (a TFLite interpreter holds its tensors): call it
    from one thread.
    """
    fmt = format_of(path)
    metadata, predict = _LOADERS[fmt](pathlib.Path(path), num_threads or _usable_cores())
    no_metadata = (
        f"{path} holds no marco_jax metadata (image size, central fraction, class names): "
        "it was not written by marco_jax.export; export the checkpoint with it."
    )
    if not isinstance(metadata, dict):
        raise ValueError(no_metadata)
    try:
        return ExportedModel(
            path=str(path),
            format=fmt,
            preprocessing=preprocess.Preprocessing.from_metadata(metadata),
            class_names=tuple(metadata["class_names"]),
            provenance=metadata.get("provenance", {}),
            predict=predict,
        )
    except (KeyError, TypeError) as e:  # metadata without a field, or of the wrong kind
        raise ValueError(f"{no_metadata} (missing or malformed: {e})") from None
