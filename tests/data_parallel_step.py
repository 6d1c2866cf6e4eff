"""One real training step on 1 device and on all devices, same state, same real batch: prints JSON.

Run by tests/training/test_train.py under XLA_FLAGS=--xla_force_host_platform_device_count=8 (the
device count must be set before JAX starts, hence a separate process): python
tests/data_parallel_step.py DATA_DIR"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import optax
from helpers import ci_config

from marco_jax import parallel
from marco_jax.data import input_pipeline
from marco_jax.model import inception
from marco_jax.training import step as train_step


def _relative_difference(reference, other) -> float:
    difference = jax.tree.map(lambda x, y: y - x, reference, other)
    return float(optax.global_norm(difference) / optax.global_norm(reference))


def main(data_dir: str) -> None:
    config = ci_config(data_dir)
    config.input.num_workers = 0
    model = inception.create_model(config, rngs=config.seed)
    mesh = parallel.create_mesh()
    _, state, one_device_step = train_step.create(config, model, steps_per_epoch=10)
    _, _, data_parallel_step = train_step.create(config, model, steps_per_epoch=10, mesh=mesh)
    source = input_pipeline.open_tfds_source(config, config.dataset.train_split)
    dataset = input_pipeline.create_train_dataset(
        config, source, process_index=0, process_count=1, seed=config.seed
    )
    batch = next(iter(dataset))
    # Copies: the steps donate the state, which the comparison below still reads.
    one, one_metrics = one_device_step(jax.tree.map(jnp.copy, state), batch)
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    many, many_metrics = data_parallel_step(
        jax.device_put(jax.tree.map(jnp.copy, state), replicated),
        parallel.to_global(batch, sharded),
    )

    def change(new: train_step.TrainState, field: str):
        return jax.tree.map(lambda x, x0: x - x0, getattr(new, field), getattr(state, field))

    print(
        json.dumps(
            {
                "devices": jax.device_count(),
                "loss": [float(one_metrics["loss"]), float(many_metrics["loss"])],
                "grad_norm": [float(one_metrics["grad_norm"]), float(many_metrics["grad_norm"])],
                "update_norm": float(optax.global_norm(change(one, "params"))),
                "update_difference": _relative_difference(
                    change(one, "params"), change(many, "params")
                ),
                "batch_stats_difference": _relative_difference(
                    change(one, "batch_stats"), change(many, "batch_stats")
                ),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
