"""Loading an export for scoring (`load_exported`): the format is read from the path, its
runtime (TensorFlow, TFLite's interpreter, ONNX Runtime or OpenVINO) is imported only when a model
of that format is opened, and the recorded metadata gives the preprocessing and class order.

This module, like the whole `classify --model` path, imports neither JAX nor the model code: a
lab's light install (requirements-lab.txt) has neither.

Runtimes (`RUNTIMES`; the first of each format is its default):
- an OpenVINO IR (.xml + .bin) runs on OpenVINO;
- an ONNX file runs on ONNX Runtime, or on OpenVINO when asked (`runtime="openvino"`), which
  converts it at every start (about a second at 599 px: the IR starts faster);
- a SavedModel on TensorFlow, a .tflite file on TFLite's interpreter.
OpenVINO computes in `precision`: "f32" by default, so that a file scores alike on every CPU;
"bf16" is OpenVINO's own default on CPUs with bfloat16 units (faster; probabilities within 0.007
of f32 on the trained test models, as tests/serving/test_openvino.py measures, but 0.27 on the
release's network with random values, which amplifies rounding). In an int8 IR only the layers
NNCF left in float use it.

Threads and streams (OpenVINO): the model is compiled for one image per inference request, with
its throughput hint told how many requests run at once (`batch_size`, the images of one call),
so that it splits the cores into streams that each run one image: one stream using every core
for one image at a time, up to one stream per core for batches of at least that many images.
A fixed input shape also means one compilation at load, none per batch size. `num_threads`
caps the cores it uses (default: every core this process may run on).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from marco_jax.data import preprocess
from marco_jax.serving.export.metadata import (
    METADATA_KEY,
    OPENVINO_METADATA_PATH,
    SAVED_MODEL_METADATA,
)

RUNTIMES: dict[str, tuple[str, ...]] = {
    "saved_model": ("tensorflow",),
    "tflite": ("tflite",),
    "onnx": ("onnxruntime", "openvino"),
    "openvino": ("openvino",),
}
PRECISIONS = ("f32", "bf16")


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
    runtime: str = ""
    precision: str | None = None  # OpenVINO's inference precision; None: the file's float32
    quantization: dict[str, Any] | None = None  # an int8 export's calibration and agreement

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
    """Which export a path holds: a SavedModel directory, a .tflite, .onnx or OpenVINO .xml file."""
    path = pathlib.Path(path)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return "saved_model"
    if path.is_file() and path.suffix.lower() in (".tflite", ".onnx", ".xml"):
        return {".tflite": "tflite", ".onnx": "onnx", ".xml": "openvino"}[path.suffix.lower()]
    raise ValueError(
        f"{path} is not an exported model: expected a SavedModel directory (with "
        "saved_model.pb), a .tflite, an .onnx or an OpenVINO .xml file (beside its .bin) "
        "written by marco_jax.export."
    )


@dataclasses.dataclass(frozen=True)
class _Options:
    num_threads: int
    precision: str
    batch_size: int


_FORMAT_NAMES = {"onnx": "ONNX", "openvino": "OpenVINO"}


def _not_readable(path: pathlib.Path, runtime: str, error: Exception) -> ValueError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    name = _FORMAT_NAMES[format_of(path)]
    return ValueError(
        f"{path} is not a readable {name} model ({runtime}: {reason}); the file is damaged or "
        f"not an {name} model: export the checkpoint again with marco_jax.export."
    )


# Each loader returns (the recorded metadata or None, predict).


def _load_saved_model(path: pathlib.Path, options: _Options):
    """num_threads is not applied: TF's thread pools are per process and fixed at its start."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(path)).signatures["images"]
    recorded = path / SAVED_MODEL_METADATA
    metadata = json.loads(recorded.read_text()) if recorded.is_file() else None
    return metadata, lambda images: signature(images=tf.constant(images))["scores"].numpy()


def _load_tflite(path: pathlib.Path, options: _Options):
    import tensorflow as tf

    from marco_jax.serving.export.tflite import _tflite_metadata

    flatbuffer = path.read_bytes()
    with warnings.catch_warnings():
        # TF 2.21 still ships this interpreter; its successor (ai_edge_litert) is not a
        # dependency, so the deprecation notice would only alarm lab users.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        interpreter = tf.lite.Interpreter(model_content=flatbuffer, num_threads=options.num_threads)
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


def _load_onnx(path: pathlib.Path, options: _Options):
    import onnxruntime

    session_options = onnxruntime.SessionOptions()
    session_options.intra_op_num_threads = options.num_threads
    try:
        session = onnxruntime.InferenceSession(
            str(path), session_options, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # ONNX Runtime's errors derive from Exception only
        raise _not_readable(path, "ONNX Runtime", e) from None
    recorded = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    metadata = json.loads(recorded) if recorded else None
    return metadata, lambda images: session.run(["scores"], {"images": images})[0]


def _openvino_metadata(model) -> dict[str, Any] | None:
    """The metadata of an IR (`OPENVINO_METADATA_PATH`) or of an ONNX file read by OpenVINO,
    whose ONNX reader files the file's metadata properties under "framework"."""
    for key in (list(OPENVINO_METADATA_PATH), ["framework", METADATA_KEY]):
        if model.has_rt_info(key):
            return json.loads(model.get_rt_info(key).astype(str))
    return None


def import_openvino():
    """`import openvino`, without its usage telemetry.

    Why: importing openvino (its converter, `openvino.tools.ovc`) starts a process that posts a
    usage event to Google Analytics at every import, unless the user opted out, and counts the
    runs in ~/intel. A lab's scoring run must not talk to the network, nor fork beside JAX's
    threads. OpenVINO and NNCF both fall back to a no-op stub when `openvino_telemetry` cannot
    be imported, so it is made unimportable (unless something imported it already).
    """
    sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


def _load_openvino(path: pathlib.Path, options: _Options):
    ov = import_openvino()
    import openvino.properties as properties
    import openvino.properties.hint as hints

    core = ov.Core()
    try:
        model = core.read_model(str(path))
    except Exception as e:  # OpenVINO raises RuntimeError, or its own exception types
        raise _not_readable(path, "OpenVINO", e) from None
    metadata = _openvino_metadata(model)
    if not isinstance(metadata, dict) or "image_size" not in metadata:
        return metadata, None  # load_exported names what is missing
    size = int(metadata["image_size"])
    model.reshape([1, size, size, 3])  # one image per request: see the module docstring
    compiled = core.compile_model(
        model,
        "CPU",
        {
            hints.performance_mode: hints.PerformanceMode.THROUGHPUT,
            hints.num_requests: options.batch_size,
            properties.inference_num_threads: options.num_threads,
            hints.inference_precision: getattr(ov.Type, options.precision),
        },
    )
    queue = ov.AsyncInferQueue(
        compiled, compiled.get_property(properties.optimal_number_of_infer_requests)
    )
    num_outputs = compiled.output(0).get_partial_shape()[1].get_length()

    def predict(images: np.ndarray) -> np.ndarray:
        scores = np.empty((len(images), num_outputs), np.float32)

        def store(request, index: int) -> None:
            scores[index] = request.get_output_tensor(0).data[0]

        queue.set_callback(store)
        for index in range(len(images)):
            queue.start_async({0: images[index : index + 1]}, index)
        queue.wait_all()
        return scores

    return metadata, predict


_LOADERS = {
    "tensorflow": _load_saved_model,
    "tflite": _load_tflite,
    "onnxruntime": _load_onnx,
    "openvino": _load_openvino,
}


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):  # honours taskset / container CPU sets (Linux)
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_exported(
    path: str | os.PathLike,
    num_threads: int | None = None,
    *,
    runtime: str | None = None,
    precision: str = "f32",
    batch_size: int = 16,
) -> ExportedModel:
    """Opens any export for scoring; the format is read from the path (see `format_of`).

    num_threads: CPU threads for TFLite, ONNX Runtime and OpenVINO (default: every usable core;
      TFLite's own default is one). A SavedModel runs on TensorFlow's process-wide thread pools.
    runtime: one of RUNTIMES[format] (default: its first).
    precision: OpenVINO's inference precision, one of PRECISIONS (other runtimes: "f32" only).
    batch_size: how many images a call will usually get (OpenVINO sizes its streams for it).
    The returned model is not thread-safe (a TFLite interpreter holds its tensors): call it
    from one thread.

    Raises:
      ValueError: not an export, a runtime or precision the format has not, a damaged file.
    """
    fmt = format_of(path)
    runtime = runtime or RUNTIMES[fmt][0]
    if runtime not in RUNTIMES[fmt]:
        raise ValueError(
            f"{path} runs on {' or '.join(RUNTIMES[fmt])}, not on {runtime}: leave --runtime out."
        )
    if precision not in PRECISIONS or (precision != "f32" and runtime != "openvino"):
        raise ValueError(
            f"precision {precision!r}: {runtime} computes in f32 only; OpenVINO takes "
            f"{' or '.join(PRECISIONS)}."
        )
    options = _Options(num_threads or usable_cores(), precision, max(int(batch_size), 1))
    metadata, predict = _LOADERS[runtime](pathlib.Path(path), options)
    no_metadata = (
        f"{path} holds no marco_jax metadata (image size, central fraction, class names): "
        "it was not written by marco_jax.export; export the checkpoint with it."
    )
    if not isinstance(metadata, dict) or predict is None:
        raise ValueError(no_metadata)
    try:
        return ExportedModel(
            path=str(path),
            format=fmt,
            preprocessing=preprocess.Preprocessing.from_metadata(metadata),
            class_names=tuple(metadata["class_names"]),
            provenance=metadata.get("provenance", {}),
            predict=predict,
            runtime=runtime,
            precision=precision if runtime == "openvino" else None,
            quantization=metadata.get("int8"),
        )
    except (KeyError, TypeError) as e:  # metadata without a field, or of the wrong kind
        raise ValueError(f"{no_metadata} (missing or malformed: {e})") from None
