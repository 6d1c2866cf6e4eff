"""The network rebuilt for inference with every BatchNorm folded into its convolution, as one
list of steps that each format's builder walks (`_apply`).

The steps come from the layer tables that define the model (`inception.STEM`,
`inception.MIXED_BLOCKS`, through the model's own `stem`, branches and forks). The fold holds for
inference only: w * rsqrt(var + eps), beta - mean * rsqrt(var + eps), computed in float64 and
stored in float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from marco_jax.model import inception


@dataclasses.dataclass(frozen=True)
class FoldedConv:
    """A ConvBN with its BatchNorm folded in: relu(conv(x, kernel) + bias). Kernel is HWIO."""

    name: str
    kernel: np.ndarray
    bias: np.ndarray
    stride: int
    padding: str


@dataclasses.dataclass(frozen=True)
class Concat:
    """Branches applied to the same input, concatenated along channels (Mixed blocks, forks)."""

    branches: tuple[tuple[Step, ...], ...]


Step = FoldedConv | inception.Pool | Concat


@dataclasses.dataclass(frozen=True)
class Network:
    """The inference network: steps, then global mean, logits (kernel [C, classes]), softmax."""

    steps: tuple[Step, ...]
    logits_kernel: np.ndarray
    logits_bias: np.ndarray


def fold_batch_norm(name: str, layer: inception.ConvBN) -> FoldedConv:
    """BatchNorm with running statistics is affine, so it merges into the convolution."""
    bn = layer.bn
    inv_std = 1.0 / np.sqrt(np.asarray(bn.var[...], np.float64) + bn.epsilon)
    kernel = np.asarray(layer.conv.kernel[...], np.float64) * inv_std
    bias = np.asarray(bn.bias[...], np.float64) - np.asarray(bn.mean[...], np.float64) * inv_std
    spec = layer.spec
    return FoldedConv(
        name, kernel.astype(np.float32), bias.astype(np.float32), spec.stride, spec.padding
    )


def _chain_steps(owner: Any, layers: Sequence[inception.Layer], prefix: str) -> tuple[Step, ...]:
    def conv(spec: inception.Conv) -> FoldedConv:
        return fold_batch_norm(prefix + spec.name, getattr(owner, spec.name))

    steps: list[Step] = []
    for layer in layers:
        if isinstance(layer, inception.Conv):
            steps.append(conv(layer))
        elif isinstance(layer, inception.Fork):
            steps.append(Concat(tuple((conv(c),) for c in layer.convs)))
        else:
            steps.append(layer)
    return tuple(steps)


def network_of(model: inception.InceptionV3) -> Network:
    """The eval-mode computation of `model` (no dropout, no auxiliary head) as folded steps."""
    steps = list(_chain_steps(model, model.stem, ""))
    for name, _ in inception.MIXED_BLOCKS:
        block = getattr(model, name)
        chains = {b: getattr(block, b) for b in block.branch_names}
        steps.append(
            Concat(tuple(_chain_steps(c, c.layers, f"{name}/{b}/") for b, c in chains.items()))
        )
    kernel = np.asarray(model.Logits.kernel[...], np.float32)[0, 0]
    return Network(tuple(steps), kernel, np.asarray(model.Logits.bias[...], np.float32))


class _Builder(Protocol):
    def conv(self, x: Any, step: FoldedConv) -> Any: ...
    def pool(self, x: Any, step: inception.Pool) -> Any: ...
    def concat(self, xs: list[Any]) -> Any: ...


def _apply(steps: Sequence[Step], x: Any, builder: _Builder) -> Any:
    """Walks the steps with one target's ops; every format shares this walk."""
    for step in steps:
        if isinstance(step, FoldedConv):
            x = builder.conv(x, step)
        elif isinstance(step, inception.Pool):
            x = builder.pool(x, step)
        else:
            x = builder.concat([_apply(branch, x, builder) for branch in step.branches])
    return x


def _all_convs(steps: Sequence[Step]) -> list[FoldedConv]:
    found: list[FoldedConv] = []
    for step in steps:
        if isinstance(step, FoldedConv):
            found.append(step)
        elif isinstance(step, Concat):
            for branch in step.branches:
                found.extend(_all_convs(branch))
    return found
