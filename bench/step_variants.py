"""The candidate speed-ups that bench/train_step.py measures against its baseline step.

Each is a change to the config (switches the code has: configs/default.py says what they do)
and/or XLA debug options passed to this step's compile alone (`Lowered.compile(
compiler_options=...)`), so that one process measures them all, each against the same baseline.
A kept XLA option would go into the training run's XLA_FLAGS; a kept config switch becomes
the default. No third-party import beyond the standard library, so tests can load it.
"""

from __future__ import annotations

import dataclasses
from typing import Any


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


def apply(config: Any, variant: Variant) -> None:
    """Sets the variant's config fields ("model.remat") on an ml_collections ConfigDict."""
    for field, value in variant.config.items():
        node = config
        *parents, leaf = field.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
