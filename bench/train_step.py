"""Throughput of the jitted MARCO train step (forward, backward, RMSProp, EMA, augmentation).

  python bench/train_step.py [--config configs/default.py] [--batch 8] [--runs 5] \
      [--config.model.compute_dtype=bfloat16]

Prints one JSON line: compile time, median step time over --runs timed steps (after one warm-up),
images/s, and on an accelerator the achieved TFLOP/s (XLA's FLOP count of the compiled step) and
the model FLOPs utilisation against the device's peak dense bf16 rate.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from marco_jax import parallel
from marco_jax.model import inception
from marco_jax.training import step as train_step

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Model/optimizer config.")
_BATCH = flags.DEFINE_integer("batch", 8, "Global batch size.")
_RUNS = flags.DEFINE_integer("runs", 5, "Timed steps; the median is reported.")

# Peak dense bf16 FLOP/s per device, for MFU; devices not listed report no MFU.
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "V100": 125e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
}


def _peak_flops(device: jax.Device) -> float | None:
    return next((v for k, v in PEAK_FLOPS.items() if k in device.device_kind), None)


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    config.input.global_batch_size = _BATCH.value
    parallel.check_divisible(_BATCH.value, "global_batch_size")
    config.seed = 0
    mesh = parallel.create_mesh()
    model = inception.create_model(config)
    _, state, step_fn = train_step.create(config, model, steps_per_epoch=1000, mesh=mesh)
    state = jax.device_put(state, parallel.replicated(mesh))
    size = config.model.image_size
    rng = np.random.default_rng(0)
    batch = parallel.to_global(
        {
            "image": rng.integers(0, 256, (_BATCH.value, size, size, 3), dtype=np.uint8),
            "label": rng.integers(0, config.model.num_classes, _BATCH.value).astype(np.int32),
        },
        parallel.batch_sharded(mesh),
    )
    start = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0

    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(_RUNS.value):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_seconds = float(np.median(times))
    device = jax.devices()[0]
    result = {
        "benchmark": "train_step",
        "command": " ".join(sys.argv),
        "model": config.model.name,
        "image_size": size,
        "depth_multiplier": config.model.depth_multiplier,
        "compute_dtype": config.model.compute_dtype,
        "global_batch": _BATCH.value,
        "compile_seconds": round(compile_seconds, 2),
        "step_seconds_median": round(step_seconds, 4),
        "step_seconds_all": [round(t, 4) for t in times],
        "images_per_second": round(_BATCH.value / step_seconds, 2),
        "flops_per_step": flops,
        "loss_finite": bool(jnp.isfinite(metrics["loss"])),
        "machine": {
            "platform": device.platform,
            "device_kind": device.device_kind,
            "devices": jax.device_count(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "jax": jax.__version__,
        },
    }
    if device.platform != "cpu" and flops:
        achieved = flops / step_seconds
        result["tflops_per_second"] = round(achieved / 1e12, 2)
        peak = _peak_flops(device)
        if peak:
            result["mfu"] = round(achieved / (peak * jax.device_count()), 4)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
