"""A training run on disk, as everyone but the trainer reads it: config.json and the checkpoints.

A workdir holds `config.json` (the run's config, so that evaluation, export and classification
rebuild the model from the workdir alone) and `checkpoints/<step>/` (Orbax: the `TrainState`
pytree as `state`, the early-stopping bookkeeping as `progress`, and the `integrity` record of
`marco_jax.runs.integrity`). Training writes them (`marco_jax.training.checkpoints`); this module
names the layout and reads it, so that serving and evaluation never load the training stack.

`load` is the one way to get a trained network out of a workdir: the step chosen by "best",
"latest" or a number (`cli.parse_checkpoint`, the one parser of `--checkpoint`), verified against
its integrity record, with the EMA weights unless told otherwise (`chosen_weights`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from marco_jax import cli
from marco_jax.model import inception
from marco_jax.runs import integrity

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
EVAL_METRIC = "accuracy"
INTEGRITY_ITEM = "integrity"
MIN_KEPT = 2  # the newest verified checkpoint survives while the next one is written


def create_manager(workdir: str, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    """Keeps the last max(`keep`, 2) checkpoints plus the best one by eval accuracy."""

    def accuracy(metrics: dict[str, float]) -> float:
        return metrics[EVAL_METRIC]

    options = ocp.CheckpointManagerOptions(
        best_fn=accuracy,  # also makes Orbax record each checkpoint's metrics
        best_mode="max",
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(
            [
                ocp.checkpoint_managers.LatestN(n=max(keep, MIN_KEPT)),
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=accuracy, n=1, keep_checkpoints_without_metrics=False
                ),
            ]
        ),
        read_only=read_only,
        create=not read_only,
        # Leftovers of a process killed mid-save hold disk space; a writer holds the workdir lock.
        cleanup_tmp_directories=not read_only,
    )
    # A reader knows the state's handler up front, so it can read its metadata before restoring.
    handlers = {"state": ocp.StandardCheckpointHandler()} if read_only else None
    return ocp.CheckpointManager(
        epath.Path(workdir) / CHECKPOINT_DIR, options=options, item_handlers=handlers
    )


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes config.json atomically (a kill mid-write leaves the previous one)."""
    path = epath.Path(workdir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (CONFIG_FILE + ".tmp")
    tmp.write_text(config.to_json_best_effort(indent=2))
    tmp.replace(path)


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


def restore_on_this_host(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """The saved TrainState as a dict of arrays on this host's first device.

    Whatever topology saved it (8 GPUs, a TPU pod), a lab workstation can read it: the target
    shardings come from the checkpoint's shapes, not from its recorded devices.
    `manager` must come from `create_manager(..., read_only=True)`. Checkpoints holding only
    `state` and `progress` (imported releases) are read as well as training checkpoints.
    """
    metadata = manager.item_metadata(step)["state"]
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), metadata
    )
    return manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    ).state


def integrity_record(manager: ocp.CheckpointManager, step: int) -> dict[str, Any] | None:
    """The integrity record saved with checkpoint `step` (None for older or imported ones)."""
    path = manager.directory / str(step) / INTEGRITY_ITEM
    files = [p for p in path.iterdir() if p.is_file()] if path.exists() else []
    for file in files:
        try:
            return json.loads(file.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            continue
    return None


def chosen_weights(state: Mapping[str, Any] | Any, use_ema: bool) -> tuple[Any, Any]:
    """(params, batch_stats) of a TrainState, or of the dict an inference restore gives: their
    exponential moving average, or the raw weights.

    The paper evaluates "a running average of the training model" (section 3, "Training"); like
    TF-slim, the BatchNorm statistics are averaged along with the weights.
    """
    prefix = "ema_" if use_ema else ""
    if isinstance(state, Mapping):
        return state[prefix + "params"], state[prefix + "batch_stats"]
    return getattr(state, prefix + "params"), getattr(state, prefix + "batch_stats")


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A checkpoint's network with the config it was trained with."""

    config: ml_collections.ConfigDict
    model: inception.InceptionV3
    step: int
    use_ema: bool


def load(
    workdir: str,
    checkpoint: str | int = "best",
    use_ema: bool = True,
    data_dir: str | None = None,
) -> Loaded:
    """The trained network of `workdir` at `checkpoint` ("best", "latest" or a step number, as
    `--checkpoint` takes it), with the EMA weights unless `use_ema` is False.

    data_dir replaces config.dataset.data_dir (a dataset built elsewhere than during training).

    Raises:
      cli.ArgumentError: one line, for a bad selector, a missing workdir or step, a config.json
        that no longer describes the checkpoint (`integrity.check_trained_for`, or
        `integrity.check_shapes` where the checkpoint has no record of it), or a checkpoint
        whose values fail their integrity record.
    """
    try:
        return _load(workdir, cli.parse_checkpoint(checkpoint), use_ema, data_dir)
    except (FileNotFoundError, ValueError) as e:
        raise cli.ArgumentError(str(e)) from e


def _load(workdir: str, checkpoint: str | int, use_ema: bool, data_dir: str | None) -> Loaded:
    config = read_config(workdir)
    manager = create_manager(workdir, read_only=True)
    step = resolve_step(manager, checkpoint)
    saved = integrity_record(manager, step)
    integrity.check_trained_for(config, saved, step)
    restored = restore_on_this_host(manager, step)
    manager.close()
    try:
        integrity.verify(restored, saved)
    except ValueError as e:
        raise ValueError(
            f"checkpoint {step} in {workdir} is corrupt ({e}); choose another with "
            "--checkpoint, or restore the workdir from a backup."
        ) from None
    abstract = nnx.eval_shape(lambda: inception.create_model(config))
    graphdef = nnx.split(abstract, nnx.Param, nnx.BatchStat)[0]
    model = nnx.merge(graphdef, *chosen_weights(restored, use_ema))
    integrity.check_shapes(model, abstract, f"{workdir} (step {step})")
    if data_dir is not None:
        config.dataset.data_dir = data_dir
    return Loaded(config, model, step, use_ema)
