"""Throughput of the jitted MARCO train step (forward, backward, RMSProp, EMA, augmentation).

  python bench/train_step.py [--config configs/default.py] [--per_device_batch 32,64,128,256] \
      [--variants all] [--profile_steps 3] [--deadline_s 300] [--compile_threads 4]

Measures the release network (configs/default.py: 599 px, AuxLogits head) with bf16 compute and
float32 parameters (`--compute_dtype`), on random uint8 batches that stay on the device, so that
only the step is timed. In priority order, each measurement one JSON line:
  1. the baseline at --baseline_batch per device (and, with --profile_steps, a jax.profiler trace
     of that many steps: the ops that took the most device time, one JSON line);
  2. the other --per_device_batch sizes with the aux head, then the baseline batch without it;
  3. each of --variants (bench/step_variants.py) at the baseline batch, against the baseline;
  4. the other batch sizes without the aux head.
Compiles at 599 px take most of a device run: after the baseline, --compile_threads plans
compile at once (a wave), and each is timed alone once its wave is compiled. --deadline_s skips
(a "skipped" line) a wave that would end later than the longest wave so far allows. Each line
has the compile time, the step time (median over --repeats runs of --steps back-to-back steps,
with their spread), images/s, the step's FLOPs (XLA's count before optimisation: 2 per
multiply-add, the whole step) and, on a GPU or TPU, the achieved TFLOP/s and the MFU against
each peak known for the device kind (PEAK_FLOPS).

Imports only jax, flax, optax, ml_collections, numpy and absl (plus marco_jax's model and step,
and its standard-library neighbours step_variants.py and trace_summary.py), so it runs on a
bare accelerator machine (tests/bench checks it).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import platform
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from marco_jax import parallel
from marco_jax.model import inception
from marco_jax.training import step as train_step

# Run as a script, this file's folder is on sys.path.
from step_variants import VARIANTS, Variant, apply  # noqa: E402  isort: skip
from trace_summary import hlo_lines, top_ops  # noqa: E402  isort: skip

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Model config.")
_BATCHES = flags.DEFINE_list("per_device_batch", ["32", "64", "128", "256"], "Batch sizes.")
_BASELINE = flags.DEFINE_integer("baseline_batch", 128, "Per-device batch of the variants.")
_DTYPE = flags.DEFINE_enum(
    "compute_dtype", "bfloat16", ["bfloat16", "float32"], "Compute dtype (params stay f32)."
)
_VARIANTS = flags.DEFINE_list("variants", ["all"], "Variants to measure, or all, or none.")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per timed run, dispatched back to back.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs; the median is reported.")
_PROFILE = flags.DEFINE_integer("profile_steps", 0, "Steps to trace at the baseline (0: none).")
_PROFILE_DIR = flags.DEFINE_string("profile_dir", None, "Where the trace goes (default: temp).")
_TOP_OPS = flags.DEFINE_integer("top_ops", 25, "Ops listed from the trace.")
_DEADLINE = flags.DEFINE_float("deadline_s", 0.0, "Start nothing that would end later (0: off).")
_AUX_OFF = flags.DEFINE_bool("no_aux_sweep", True, "Also measure without the AuxLogits head.")
_THREADS = flags.DEFINE_integer(
    "compile_threads", 1, "Measurements compiled at once, in waves (all timed after the wave)."
)
_STEPS_PER_EPOCH = flags.DEFINE_integer(
    "steps_per_epoch",
    1000,
    "For the learning-rate schedule only; set it as a training run has it to share its compile "
    "(jax's persistent compilation cache).",
)

# Dense bf16 FLOP/s per device: (the vendor's figure, one measured here on large matmuls).
# H100/H200 SXM: 989 TFLOP/s dense bf16 (NVIDIA's datasheet); 790 TFLOP/s measured on the lent
# H200 (8192^3 bf16 products through PyTorch, 769-798 TFLOP/s; /work/.library/device/KINDS.md).
PEAK_FLOPS: dict[str, tuple[float, float | None]] = {
    "H200": (989e12, 790e12),
    "H100": (989e12, None),
    "A100": (312e12, None),
    "V100": (125e12, None),
    "TPU v4": (275e12, None),
    "TPU v5 lite": (197e12, None),
    "TPU v5p": (459e12, None),
}


def _selected_variants(names: list[str]) -> list[Variant]:
    if names in (["all"], []):
        return list(VARIANTS)
    if names == ["none"]:
        return []
    known = {v.name: v for v in VARIANTS}
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise app.UsageError(f"--variants: unknown {unknown}; use all, none or {sorted(known)}.")
    return [known[n] for n in names]


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def _peaks(device: jax.Device) -> tuple[float, float | None] | None:
    return next((v for k, v in PEAK_FLOPS.items() if k in device.device_kind), None)


def _machine() -> dict[str, Any]:
    device = jax.devices()[0]
    import flax
    import optax

    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "devices": jax.device_count(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


@dataclasses.dataclass
class Plan:
    """One measurement: a batch per device, the aux head on or off, a variant."""

    per_device_batch: int
    aux: bool
    variant: Variant | None = None
    profile: bool = False


def _plan(batches: list[int], baseline: int, variants: list[Variant], aux_sweep: bool):
    others = [b for b in batches if b != baseline]
    plans = [Plan(baseline, True, profile=_PROFILE.value > 0)]
    plans += [Plan(b, True) for b in others]
    if aux_sweep:
        plans.append(Plan(baseline, False))
    plans += [Plan(baseline, True, v) for v in variants]
    if aux_sweep:
        plans += [Plan(b, False) for b in others]
    return plans


def _configure(base, plan: Plan):
    config = base.copy_and_resolve_references()
    config.model.compute_dtype = _DTYPE.value
    config.model.aux_logits = plan.aux and base.model.aux_logits
    config.input.global_batch_size = plan.per_device_batch * jax.device_count()
    config.seed = 0
    if plan.variant:
        apply(config, plan.variant)
    return config


def _random_batch(config, mesh) -> dict[str, jax.Array]:
    size, batch = config.model.image_size, config.input.global_batch_size
    rng = np.random.default_rng(0)
    host = {
        "image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
        "label": rng.integers(0, config.model.num_classes, batch).astype(np.int32),
    }
    return parallel.to_global(host, parallel.batch_sharded(mesh))


def _timed_runs(compiled, state, batch) -> tuple[Any, list[float], bool]:
    """Per-step seconds of each timed run (steps dispatched back to back, one sync at the end)."""
    for _ in range(2):  # warm-up: first-call set-up (cuDNN handles, autotuned plans)
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(_REPEATS.value):
        start = time.perf_counter()
        for _ in range(_STEPS.value):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - start) / _STEPS.value)
    return state, times, bool(np.isfinite(float(metrics["loss"])))


@dataclasses.dataclass
class Prepared:
    """A measurement lowered and ready to compile: its config, state and batch on the device."""

    plan: Plan
    config: Any
    state: Any
    batch: dict[str, jax.Array]
    lowered: Any
    flops: float
    compiled: Any = None
    compile_seconds: float = 0.0


def prepare(base_config, plan: Plan, mesh) -> Prepared:
    config = _configure(base_config, plan)
    model = inception.create_model(config)
    _, state, step_fn = train_step.create(
        config, model, steps_per_epoch=_STEPS_PER_EPOCH.value, mesh=mesh
    )
    state = jax.device_put(state, parallel.replicated(mesh))
    batch = _random_batch(config, mesh)
    lowered = step_fn.lower(state, batch)
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    return Prepared(plan, config, state, batch, lowered, flops)


def compile_prepared(prepared: Prepared) -> Prepared:
    """Compiles (XLA releases the GIL, so waves compile in threads; XLA serialises the
    autotuning runs on a GPU itself, and nothing is timed until the whole wave is compiled)."""
    start = time.perf_counter()
    xla_options = prepared.plan.variant.xla if prepared.plan.variant else {}
    prepared.compiled = prepared.lowered.compile(compiler_options=xla_options or None)
    prepared.compile_seconds = time.perf_counter() - start
    return prepared


def measure(prepared: Prepared, concurrent: int) -> dict[str, Any]:
    """Times a compiled measurement (and profiles it if planned); frees its buffers."""
    plan, config, compiled = prepared.plan, prepared.config, prepared.compiled
    state, times, finite = _timed_runs(compiled, prepared.state, prepared.batch)
    step_seconds = float(np.median(times))
    global_batch = config.input.global_batch_size
    result = {
        "benchmark": "train_step",
        "variant": plan.variant.name if plan.variant else "baseline",
        "aux_logits": config.model.aux_logits,
        "per_device_batch": plan.per_device_batch,
        "global_batch": global_batch,
        "image_size": config.model.image_size,
        "compute_dtype": config.model.compute_dtype,
        "compile_seconds": round(prepared.compile_seconds, 2),
        # Wall time while this many compiles shared the host's cores (and XLA's autotuning);
        # XLA also caches autotuning by convolution shape within a process, so compiles after
        # the first at a batch size are faster than a cold one.
        "compiled_concurrently": concurrent,
        "step_ms": round(1000 * step_seconds, 3),
        "step_ms_spread": [round(1000 * min(times), 3), round(1000 * max(times), 3)],
        "images_per_second": round(global_batch / step_seconds, 1),
        "flops_per_image": round(prepared.flops / global_batch),
        "loss_finite": finite,
    }
    if plan.variant:
        result["why"] = plan.variant.why
    memory = compiled.memory_analysis()
    if memory is not None:
        result["device_memory_mib"] = round(
            (memory.temp_size_in_bytes + memory.argument_size_in_bytes) / 2**20
        )
    device = jax.devices()[0]
    if device.platform != "cpu" and prepared.flops:
        achieved = prepared.flops / step_seconds / jax.device_count()
        result["tflops_per_second_per_device"] = round(achieved / 1e12, 1)
        if peaks := _peaks(device):
            result["mfu_vs_spec"] = round(achieved / peaks[0], 4)
            if peaks[1]:
                result["mfu_vs_measured_matmul"] = round(achieved / peaks[1], 4)
    if plan.profile:
        state = _profile(compiled, state, prepared.batch, result)
    prepared.state = prepared.batch = prepared.compiled = prepared.lowered = None
    del state
    return result


def _profile(compiled, state, batch, baseline: dict[str, Any]):
    """Traces --profile_steps steps and emits the ops that took the most device time."""
    log_dir = _PROFILE_DIR.value or tempfile.mkdtemp(prefix="marco_train_step_trace_")
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
        for _ in range(_PROFILE.value):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
    traces = sorted(pathlib.Path(log_dir).glob("plugins/profile/*/perfetto_trace.json.gz"))
    if not traces:
        _emit({"benchmark": "train_step_profile", "error": f"no perfetto trace in {log_dir}"})
        return state
    found = top_ops(traces[-1], _TOP_OPS.value, hlo_lines(compiled.as_text()))
    steps = _PROFILE.value
    summary = {
        "benchmark": "train_step_profile",
        "variant": baseline["variant"],
        "per_device_batch": baseline["per_device_batch"],
        "steps_traced": steps,
        "timed_step_ms": baseline["step_ms"],
        "device_ms_per_step": round(found.pop("device_busy_ms") / steps, 3),
        **found,
        "trace": str(traces[-1]),
    }
    _emit(summary)
    return state


def _label(plan: Plan) -> dict[str, Any]:
    return {
        "benchmark": "train_step",
        "variant": plan.variant.name if plan.variant else "baseline",
        "aux_logits": plan.aux,
        "per_device_batch": plan.per_device_batch,
    }


def _error(plan: Plan, e: Exception) -> dict[str, Any]:
    message = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return _label(plan) | {"error": f"{type(e).__name__}: {message}"}


def _run_wave(base, wave: list[Plan], mesh) -> None:
    """Prepares each plan, compiles the wave in threads, then times each plan alone. A failed
    plan (out of memory, a compile option this XLA lacks) gives an error line, not an exit."""
    prepared = []
    for plan in wave:
        try:
            prepared.append(prepare(base, plan, mesh))
        except Exception as e:  # noqa: BLE001 - one failed measurement must not end the sweep
            _emit(_error(plan, e))
    with concurrent.futures.ThreadPoolExecutor(max(1, len(prepared))) as pool:
        futures = [pool.submit(compile_prepared, p) for p in prepared]
    for p, future in zip(prepared, futures, strict=True):
        try:
            future.result()
            _emit(measure(p, len(prepared)))
        except Exception as e:  # noqa: BLE001
            _emit(_error(p.plan, e))
        p.state = p.batch = p.compiled = p.lowered = None


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    start = time.perf_counter()
    base = _CONFIG.value
    batches = [int(b) for b in _BATCHES.value]
    baseline = _BASELINE.value if _BASELINE.value in batches else batches[0]
    plans = _plan(batches, baseline, _selected_variants(_VARIANTS.value), _AUX_OFF.value)
    mesh = parallel.create_mesh()
    device = jax.devices()[0]
    peaks = _peaks(device)
    _emit(
        {
            "benchmark": "train_step_machine",
            "command": " ".join(sys.argv),
            "machine": _machine(),
            "model": base.model.name,
            "peak_tflops_spec": peaks[0] / 1e12 if peaks else None,
            "peak_tflops_measured_matmul": peaks[1] / 1e12 if peaks and peaks[1] else None,
            "plan": [
                f"{p.per_device_batch}/{'aux' if p.aux else 'noaux'}/"
                f"{p.variant.name if p.variant else 'baseline'}"
                for p in plans
            ],
        }
    )
    # The baseline compiles alone, so that its line (and profile) comes first whatever happens
    # later; then waves of --compile_threads.
    width = max(1, _THREADS.value)
    waves = [plans[:1]] + [plans[i : i + width] for i in range(1, len(plans), width)]
    longest_wave = 0.0
    for wave in waves:
        began = time.perf_counter()
        if _DEADLINE.value and began + longest_wave - start > _DEADLINE.value:
            for plan in wave:
                _emit(_label(plan) | {"skipped": f"would pass --deadline_s={_DEADLINE.value:g}"})
            continue
        _run_wave(base, wave, mesh)
        longest_wave = max(longest_wave, time.perf_counter() - began)
    _emit({"benchmark": "train_step_done", "seconds": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    app.run(main)
