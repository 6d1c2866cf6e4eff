"""Orbax checkpoints of a training run: model/optimizer state, data iterator and progress together.

One checkpoint holds everything a resumed run needs to continue exactly where the killed one
stopped: the `TrainState` pytree, the grain iterator position (so the same batches follow), and
the early-stopping bookkeeping. The run's config is written once as `config.json` beside the
checkpoints, so evaluation, export and classification can rebuild the model from a workdir alone.
"""

from __future__ import annotations

import json
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from marco_jax import models

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
EVAL_METRIC = "accuracy"


def create_manager(workdir: str, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    """Keeps the last `keep` checkpoints plus the best one by eval accuracy."""

    def accuracy(metrics: dict[str, float]) -> float:
        return metrics[EVAL_METRIC]

    options = ocp.CheckpointManagerOptions(
        best_fn=accuracy,  # also makes Orbax record each checkpoint's metrics
        best_mode="max",
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(
            [
                ocp.checkpoint_managers.LatestN(n=keep),
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=accuracy, n=1, keep_checkpoints_without_metrics=False
                ),
            ]
        ),
        read_only=read_only,
        create=not read_only,
    )
    # A reader knows the state's handler up front, so it can read its metadata before restoring.
    handlers = {"state": ocp.StandardCheckpointHandler()} if read_only else None
    return ocp.CheckpointManager(
        epath.Path(workdir) / CHECKPOINT_DIR, options=options, item_handlers=handlers
    )


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    data_iterator: grain.DatasetIterator,
    progress: dict[str, Any],
    metrics: dict[str, float] | None = None,
) -> None:
    """Starts an asynchronous save; `manager.wait_until_finished()` makes it durable."""
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            progress=ocp.args.JsonSave(progress),
        ),
        metrics=metrics,
        force=True,
    )


def restore_latest(
    manager: ocp.CheckpointManager, abstract_state: Any, data_iterator: grain.DatasetIterator
) -> tuple[Any, dict[str, Any]] | None:
    """Restores the newest checkpoint into `abstract_state`'s shardings, or None if there is none.

    The data iterator is restored in place.
    """
    step = manager.latest_step()
    if step is None:
        return None
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
            progress=ocp.args.JsonRestore(),
        ),
    )
    return restored.state, restored.progress


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    path = epath.Path(workdir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_json_best_effort(indent=2))


def read_config(workdir: str) -> ml_collections.ConfigDict:
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: {workdir} is not a marco_jax training workdir "
            "(train with `python -m marco_jax.main --workdir DIR` first)."
        )
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def resolve_step(manager: ocp.CheckpointManager, checkpoint: str | int) -> int:
    """Maps "best", "latest" or a step number to a saved step, with a clear error if absent."""
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"No checkpoint in {manager.directory}.")
    if checkpoint == "latest":
        return manager.latest_step()
    if checkpoint == "best":
        # No checkpoint carries eval metrics when a run stopped before its first evaluation.
        return manager.best_step() or manager.latest_step()
    step = int(checkpoint)
    if step not in steps:
        raise ValueError(f"No checkpoint for step {step} in {manager.directory}; saved: {steps}.")
    return step


def load_for_inference(
    workdir: str, checkpoint: str | int = "best", use_ema: bool = True
) -> tuple[ml_collections.ConfigDict, models.InceptionV3, int]:
    """Rebuilds the trained network from a workdir, with the EMA weights unless told otherwise.

    Returns (config, model, step). The paper evaluates "a running average of the training model"
    (section 3, "Training"), hence EMA by default.
    """
    config = read_config(workdir)
    manager = create_manager(workdir, read_only=True)
    step = resolve_step(manager, checkpoint)
    restored = restore_on_this_host(manager, step)
    manager.close()
    model = nnx.eval_shape(lambda: models.create_model(config))
    params = restored["ema_params" if use_ema else "params"]
    batch_stats = restored["ema_batch_stats" if use_ema else "batch_stats"]
    graphdef, _, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
    return config, nnx.merge(graphdef, params, batch_stats), step


def restore_on_this_host(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """The saved TrainState as a dict of arrays on this host's first device.

    Whatever topology saved it (8 GPUs, a TPU pod), a lab workstation can read it: the target
    shardings come from the checkpoint's shapes, not from its recorded devices.
    `manager` must come from `create_manager(..., read_only=True)`.
    """
    metadata = manager.item_metadata(step)["state"]
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), metadata
    )
    return manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    ).state
