"""Prints the model's size and cost before anyone launches a cluster job on it.

  python -m marco_jax.summary --config configs/default.py [--config.model.depth_multiplier=0.5]

The last line is one JSON object: trainable parameter count, BatchNorm statistics count, forward
FLOPs per image from XLA's cost analysis, and the logits shape for one image.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from clu import parameter_overview
from flax import nnx
from ml_collections import config_flags

from marco_jax import cli
from marco_jax.model import inception


def _count(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def model_summary(config: ml_collections.ConfigDict) -> tuple[str, dict[str, Any]]:
    """Returns clu's parameter table and the summary numbers, without running the network."""
    model = nnx.eval_shape(lambda: inception.create_model(config))
    graphdef, state = nnx.split(model)
    params = nnx.state(model, nnx.Param).to_pure_dict()
    size = config.model.image_size
    image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)

    def forward(state, images):
        return nnx.merge(graphdef, state)(images, train=False)

    lowered = jax.jit(forward).lower(state, image)
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    out = jax.eval_shape(forward, state, image)
    summary = {
        "params": _count(params),
        "batch_stats": _count(nnx.state(model, nnx.BatchStat)),
        "flops_per_image": float(cost["flops"]),
        "output_shape": list(out.shape),
    }
    return parameter_overview.get_parameter_overview(params, include_stats=False), summary


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    config_flags.DEFINE_config_file("config", None, "Path to a config file.", flag_values=fv)
    flags.mark_flags_as_required(["config"], flag_values=fv)


def main(argv: Sequence[str], fv: flags.FlagValues = flags.FLAGS) -> None:
    cli.check_no_positional(argv)
    table, summary = model_summary(fv.config)
    print(table)
    print(json.dumps(summary))


def run() -> None:
    cli.run(main, define_flags)


if __name__ == "__main__":
    run()
