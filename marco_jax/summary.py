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

from marco_jax import cli, config_utils
from marco_jax.model import inception, predict


def _count(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def model_summary(config: ml_collections.ConfigDict) -> tuple[str, dict[str, Any]]:
    """Returns clu's parameter table and the summary numbers, without running the network."""
    model = nnx.eval_shape(lambda: inception.create_model(config))
    graphdef, params, batch_stats = inception.split_model(model)
    size = config.model.image_size
    out = jax.eval_shape(
        lambda weights: nnx.merge(graphdef, *weights)(jnp.zeros((1, size, size, 3)), train=False),
        (params, batch_stats),
    )
    summary = {
        "params": _count(params),
        "batch_stats": _count(batch_stats),
        "flops_per_image": predict.flops_per_image(graphdef, (params, batch_stats), size),
        "output_shape": list(out.shape),
    }
    return parameter_overview.get_parameter_overview(params, include_stats=False), summary


EXAMPLE = "python -m marco_jax.summary --config default"


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    config_utils.define_config_flag(fv, "The model's config.")
    flags.mark_flags_as_required(["config"], flag_values=fv)


def main(argv: Sequence[str], fv: flags.FlagValues = flags.FLAGS) -> None:
    cli.check_no_positional(argv)
    table, summary = model_summary(fv.config)
    print(table)
    print(json.dumps(summary))


def run() -> None:
    cli.run(main, define_flags, EXAMPLE)


if __name__ == "__main__":
    run()
