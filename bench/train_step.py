"""Throughput of the jitted MARCO train step (forward, backward, RMSProp, EMA, augmentation).

  python bench/train_step.py [--config configs/default.py] [--per_device_batch 32,64,128,256] \
      [--variants all] [--profile_steps 3] [--deadline_s 300] [--config.model.image_size=599]

Measures the release network (configs/default.py: 599 px, AuxLogits head) with bf16 compute and
float32 parameters (`--compute_dtype`), on random uint8 batches that stay on the device, so that
only the step is timed. In priority order, each measurement one JSON line:
  1. the baseline at --baseline_batch per device (and, with --profile_steps, a jax.profiler trace
     of that many steps: the ops that took the most device time, one JSON line);
  2. the other --per_device_batch sizes with the aux head, then the baseline batch without it;
  3. each of --variants at the baseline batch: candidate speed-ups, each against the baseline;
  4. the other batch sizes without the aux head.
--deadline_s skips (with a "skipped" line) what would not end in time: compiles at 599 px take
most of a device run. Each line has the compile time, the step time (median over --repeats runs
of --steps back-to-back steps, with their spread), images/s, the step's FLOPs (XLA's count
before optimisation: convolutions as 2 FLOPs per multiply-add, the whole step) and, on a GPU or
TPU, the achieved TFLOP/s and the MFU against each peak known for the device kind.

Imports only jax, flax, optax, ml_collections, numpy and absl (plus marco_jax's model and step),
so it runs on a bare accelerator machine.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pathlib
import platform
import re
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from marco_jax import parallel
from marco_jax.model import inception
from marco_jax.training import step as train_step

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


@dataclasses.dataclass(frozen=True)
class Variant:
    """A candidate speed-up: config changes and/or XLA options for this step's compile only."""

    name: str
    why: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    xla: dict[str, Any] = dataclasses.field(default_factory=dict)


VARIANTS = (
    Variant(
        "bn_one_pass",
        "BatchNorm variance as E[x^2]-E[x]^2: one read of each activation less in the forward",
        config={"model.batch_norm_fast_variance": True},
    ),
    Variant(
        "remat_convs",
        "keep only conv outputs; recompute BatchNorm/ReLU/pools in the backward pass",
        config={"model.remat": "convs"},
    ),
    Variant(
        "xla_no_command_buffers",
        "XLA's CUDA-graph command buffers off (launch overhead vs graph capture)",
        xla={"xla_gpu_enable_command_buffer": ""},
    ),
    Variant(
        "xla_latency_hiding_scheduler",
        "XLA's latency-hiding scheduler (overlaps independent kernels and copies)",
        xla={"xla_gpu_enable_latency_hiding_scheduler": True},
    ),
    Variant(
        "xla_autotune_0",
        "no cuDNN/kernel autotuning: compile time saved vs step time lost",
        xla={"xla_gpu_autotune_level": 0},
    ),
    Variant(
        "f32_compute",
        "float32 compute, the reference for what bf16 buys",
        config={"model.compute_dtype": "float32"},
    ),
)


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
    for field, value in (plan.variant.config if plan.variant else {}).items():
        node = config
        *parents, leaf = field.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
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


def measure(base_config, plan: Plan, mesh, seen_shapes: set) -> dict[str, Any]:
    config = _configure(base_config, plan)
    model = inception.create_model(config)
    _, state, step_fn = train_step.create(config, model, steps_per_epoch=1000, mesh=mesh)
    state = jax.device_put(state, parallel.replicated(mesh))
    batch = _random_batch(config, mesh)
    lowered = step_fn.lower(state, batch)
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    start = time.perf_counter()
    xla_options = plan.variant.xla if plan.variant else {}
    compiled = lowered.compile(compiler_options=xla_options or None)
    compile_seconds = time.perf_counter() - start
    state, times, finite = _timed_runs(compiled, state, batch)
    step_seconds = float(np.median(times))
    global_batch = config.input.global_batch_size
    shape_key = (plan.per_device_batch, config.model.compute_dtype)
    result = {
        "benchmark": "train_step",
        "variant": plan.variant.name if plan.variant else "baseline",
        "aux_logits": config.model.aux_logits,
        "per_device_batch": plan.per_device_batch,
        "global_batch": global_batch,
        "image_size": config.model.image_size,
        "compute_dtype": config.model.compute_dtype,
        "compile_seconds": round(compile_seconds, 2),
        # XLA caches autotuning by convolution shape within a process: later compiles at a
        # batch size already seen are faster than a cold one.
        "compile_cold": shape_key not in seen_shapes,
        "step_ms": round(1000 * step_seconds, 3),
        "step_ms_spread": [round(1000 * min(times), 3), round(1000 * max(times), 3)],
        "images_per_second": round(global_batch / step_seconds, 1),
        "flops_per_image": round(flops / global_batch),
        "loss_finite": finite,
    }
    seen_shapes.add(shape_key)
    if plan.variant:
        result["why"] = plan.variant.why
    memory = compiled.memory_analysis()
    if memory is not None:
        result["device_memory_gib"] = round(
            (memory.temp_size_in_bytes + memory.argument_size_in_bytes) / 2**30, 2
        )
    device = jax.devices()[0]
    if device.platform != "cpu" and flops:
        achieved = flops / step_seconds / jax.device_count()
        result["tflops_per_second_per_device"] = round(achieved / 1e12, 1)
        if peaks := _peaks(device):
            result["mfu_vs_spec"] = round(achieved / peaks[0], 4)
            if peaks[1]:
                result["mfu_vs_measured_matmul"] = round(achieved / peaks[1], 4)
    if plan.profile:
        state = _profile(compiled, state, batch, result)
    del state, batch, compiled
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
    summary = top_ops(traces[-1], _TOP_OPS.value, hlo_lines(compiled.as_text()))
    steps = _PROFILE.value
    summary |= {
        "benchmark": "train_step_profile",
        "variant": baseline["variant"],
        "per_device_batch": baseline["per_device_batch"],
        "steps_traced": steps,
        "trace": str(traces[-1]),
        "device_ms_per_step": round(summary.pop("device_busy_ms") / steps, 3),
        "timed_step_ms": baseline["step_ms"],
    }
    _emit(summary)
    return state


_HLO_LINE = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_lines(hlo_text: str) -> dict[str, str]:
    """Instruction name -> its shape, opcode and JAX source op (op_name), from optimised HLO."""
    lines = {}
    for line in hlo_text.splitlines():
        if match := _HLO_LINE.match(line):
            name, rest = match.groups()
            op_name = _OP_NAME.search(rest)
            head = rest.split(", metadata=")[0].split("calls=")[0]
            lines[name] = head[:140] + (f" | {op_name.group(1)[-120:]}" if op_name else "")
    return lines


def _category(op: str, kernel: str) -> str:
    text = f"{op} {kernel}".lower()
    for category, keys in (
        ("convolution", ("conv", "fprop", "dgrad", "wgrad", "implicit_gemm", "xmma", "cudnn")),
        ("memcpy/memset", ("memcpy", "memset")),
        ("reduction", ("reduce", "reduction")),
        ("transpose/copy", ("transpose", "copy")),
    ):
        if any(k in text for k in keys):
            return category
    return "fusion/other"


def top_ops(trace_path: pathlib.Path, count: int, hlo: dict[str, str]) -> dict[str, Any]:
    """Sums a perfetto JSON trace's op events by HLO op.

    Op events are the complete ("X") events on the device's tracks (process names starting with
    /device:, e.g. GPU kernels and copies), or on the host where there is no device track (CPU
    runs: XLA's thunk executor names each op in args.hlo_op). The busy time is the union of
    those events' intervals; its share of the traced span shows how long the device idled.
    """
    with gzip.open(trace_path, "rt") as f:
        events = json.load(f)["traceEvents"]
    names = {
        e["pid"]: e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    device_pids = {pid for pid, name in names.items() if name.startswith("/device:")}
    ops = [
        e
        for e in events
        if e.get("ph") == "X"
        and e.get("dur", 0) > 0
        and (e["pid"] in device_pids if device_pids else "hlo_op" in e.get("args", {}))
    ]
    totals: dict[str, list] = defaultdict(lambda: [0.0, 0, ""])
    categories: dict[str, float] = defaultdict(float)
    for e in ops:
        op = e.get("args", {}).get("hlo_op") or e["name"]
        entry = totals[op]
        entry[0] += e["dur"]
        entry[1] += 1
        entry[2] = entry[2] or e["name"]
        categories[_category(op, e["name"])] += e["dur"]
    intervals = sorted((e["ts"], e["ts"] + e["dur"]) for e in ops)
    busy, end = 0.0, -np.inf
    for start, stop in intervals:
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    span = intervals[-1][1] - intervals[0][0] if intervals else 0.0
    total = sum(t[0] for t in totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:count]
    return {
        "tracks": sorted(names[p] for p in device_pids) or ["host (no device track)"],
        "device_busy_ms": busy / 1000,
        "device_busy_share_of_span": round(busy / span, 4) if span else None,
        "categories_share": {k: round(v / total, 4) for k, v in sorted(categories.items())},
        "top_ops": [
            {
                "op": op,
                "ms": round(t / 1000, 3),
                "share": round(t / total, 4),
                "calls": calls,
                "kernel": kernel[:100],
                "hlo": hlo.get(op, ""),
            }
            for op, (t, calls, kernel) in ranked
        ],
    }


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
    seen_shapes: set = set()
    longest = 0.0
    for plan in plans:
        began = time.perf_counter()
        label = {
            "benchmark": "train_step",
            "variant": plan.variant.name if plan.variant else "baseline",
            "aux_logits": plan.aux,
            "per_device_batch": plan.per_device_batch,
        }
        if _DEADLINE.value and began + longest - start > _DEADLINE.value:
            _emit(label | {"skipped": f"would pass --deadline_s={_DEADLINE.value:g}"})
            continue
        try:
            _emit(measure(base, plan, mesh, seen_shapes))
        except Exception as e:  # noqa: BLE001 - one failed measurement must not end the sweep
            message = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            _emit(label | {"error": f"{type(e).__name__}: {message}"})
        longest = max(longest, time.perf_counter() - began)
    _emit({"benchmark": "train_step_done", "seconds": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    app.run(main)
