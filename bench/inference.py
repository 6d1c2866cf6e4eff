"""CPU inference speed of the MARCO network: the jitted JAX model against each export.

  python bench/inference.py [--config configs/default.py] [--batch_sizes 1,8,64] \
      [--formats jax,saved_model,tflite,onnx] [--out bench_inference.json] \
      [--config.model.depth_multiplier=0.1 --config.model.image_size=151]   # a quick run

Why: lab workstations score plates on a CPU, where XLA's convolutions are slow next to the
kernels TensorFlow (oneDNN), TFLite (XNNPACK) and ONNX Runtime (MLAS) use;
`marco_jax.serving.export` exists for that gap, and this measures it. Weights are random (speed
does not depend on them); the JAX path is the jitted eval-mode network plus softmax on uint8
images, like the exports.

For every path and batch size: one warm-up call (compilation / allocation), then timed calls
until both --min_runs calls and --seconds_per_size seconds are done, or --max_runs calls: big
batches get fewer runs (their count is in the JSON). Reported: median images/s, the median
latency of one call at batch 1, the ratios export/JAX, each export's max abs difference from
the JAX probabilities, the command line, the machine and the load average before and after
(other processes on the machine slow every path).

Prints one JSON object (also written to --out when given). Every runtime uses all the cores this
process may run on (`taskset -c 0,1 python bench/inference.py` pins them).
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from marco_jax.model import inception, predict
from marco_jax.serving import export

REPO = pathlib.Path(__file__).resolve().parents[1]
PATHS = ("jax", *export.FORMATS)

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(REPO / "configs" / "default.py"), "Model config (paper: 599 px MARCO)."
)
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "8", "64"], "Batch sizes to time.")
_FORMATS = flags.DEFINE_list("formats", list(PATHS), f"Paths to time, among {PATHS}.")
_MIN_RUNS = flags.DEFINE_integer("min_runs", 3, "Timed calls per batch size, at least.")
_MAX_RUNS = flags.DEFINE_integer("max_runs", 10, "Timed calls per batch size, at most.")
_SECONDS = flags.DEFINE_float(
    "seconds_per_size", 10.0, "Keep timing a batch size until this long (within the run counts)."
)
_OUT = flags.DEFINE_string("out", None, "Also write the JSON here.")
_CHECK_BATCH = 4  # images compared between each export and JAX

Predict = Callable[[np.ndarray], np.ndarray]


def _random_model(config, seed: int = 0) -> inception.InceptionV3:
    """The configured network with He-scaled random kernels and non-trivial BatchNorm statistics
    (a fresh model's mean 0 / var 1 would hide a wrong BatchNorm fold in the agreement check)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: inception.create_model(config)))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            values = rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape)
        elif name == "var":
            values = rng.uniform(0.5, 2.0, leaf.shape)
        else:  # BatchNorm offsets and means, logits bias
            values = rng.normal(0, 0.1, leaf.shape)
        return values.astype(np.float32)

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(draw, state.to_pure_dict()))
    return nnx.merge(graphdef, state)


def _time_batch_size(predict_batch: Predict, images: np.ndarray) -> dict[str, Any]:
    start = time.perf_counter()
    predict_batch(images)
    first = time.perf_counter() - start
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < _MAX_RUNS.value and (
        len(times) < _MIN_RUNS.value or time.perf_counter() - began < _SECONDS.value
    ):
        start = time.perf_counter()
        predict_batch(images)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "images_per_s": len(images) / median,
        "median_ms": 1000 * median,
        "min_ms": 1000 * min(times),
        "runs": len(times),
        "first_call_ms": 1000 * first,  # compilation / allocation included
    }


def _versions() -> dict[str, str]:
    names = ("jax", "jaxlib", "flax", "tensorflow-cpu", "onnxruntime", "onnx", "numpy", "pillow")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "versions": _versions(),
        "jax_devices": [str(d) for d in jax.devices()],
    }


def _ratios(results: dict[str, dict], batch_sizes: list[int]) -> dict[str, dict]:
    """Export images/s over JAX images/s (> 1: the export is faster), per batch size."""
    jax_results = results.get("jax")
    if jax_results is None:
        return {}
    return {
        fmt: {
            f"batch_{b}": r[f"batch_{b}"]["images_per_s"]
            / jax_results[f"batch_{b}"]["images_per_s"]
            for b in batch_sizes
        }
        for fmt, r in results.items()
        if fmt != "jax"
    }


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # TF's SavedModel writer logs every step at INFO
    jax.config.update("jax_platforms", "cpu")
    unknown = sorted(set(_FORMATS.value) - set(PATHS))
    if unknown:
        raise app.UsageError(f"--formats: unknown {unknown}; choose from {PATHS}.")
    config = _CONFIG.value
    batch_sizes = [int(b) for b in _BATCH_SIZES.value]
    size = config.model.image_size
    load_before = os.getloadavg()
    model = _random_model(config)
    rng = np.random.default_rng(0)
    batches = {b: rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8) for b in batch_sizes}
    check_images = rng.integers(0, 256, (_CHECK_BATCH, size, size, 3), dtype=np.uint8)
    jax_predict = predict.predict_fn(model)
    reference = jax_predict(check_images)

    results: dict[str, dict] = {}
    details: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in _FORMATS.value:
            if name == "jax":
                predict_batch = jax_predict
            else:
                start = time.perf_counter()
                path = export.export_model(model, config, tmp, name)
                exported = export.load_exported(path)
                predict_batch = exported
                details[name] = {
                    "export_and_load_s": time.perf_counter() - start,
                    "max_abs_diff_vs_jax": float(np.abs(exported(check_images) - reference).max()),
                }
            results[name] = {
                f"batch_{b}": _time_batch_size(predict_batch, batches[b]) for b in batch_sizes
            }
            print(f"{name}: {json.dumps(results[name])}", file=sys.stderr)

    report = {
        "benchmark": "bench/inference.py",
        "command": " ".join(sys.argv),
        "model": {
            "name": config.model.name,
            "image_size": size,
            "depth_multiplier": config.model.depth_multiplier,
            "params": int(
                sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
            ),
        },
        "timing": {
            "warmup_calls": 1,
            "min_runs": _MIN_RUNS.value,
            "max_runs": _MAX_RUNS.value,
            "seconds_per_size": _SECONDS.value,
            "note": "median over the timed calls; 'runs' per entry says how many",
        },
        "results": results,
        "latency_batch_1_ms": {
            name: r["batch_1"]["median_ms"] for name, r in results.items() if "batch_1" in r
        },
        "speedup_vs_jax": _ratios(results, batch_sizes),
        "exports": details,
        "machine": _machine(),
        "load_average_before_after": [load_before, os.getloadavg()],
    }
    text = json.dumps(report, indent=1)
    print(text)
    if _OUT.value:
        pathlib.Path(_OUT.value).write_text(text + "\n")


if __name__ == "__main__":
    app.run(main)
