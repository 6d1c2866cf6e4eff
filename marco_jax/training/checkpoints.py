"""Orbax checkpoints of a training run: model/optimizer state, progress and an integrity record.

One checkpoint holds everything a resumed run needs to continue exactly where the killed one
stopped: the `TrainState` pytree and the early-stopping bookkeeping. The data position needs no
item of its own: a step consumes one batch, so a run resumed at step s starts the train stream
at batch s (`input_pipeline.create_train_dataset(start_batch=...)`), whatever the number of
grain workers before and after. (Checkpoints of older versions also hold a `data` item, the
grain iterator state; it is ignored.) The run's config is written as `config.json` beside the
checkpoints, so evaluation, export and classification can rebuild the model from a workdir alone.

Integrity: a bit flipped on disk used to restore silently (momentum values of 3.7e30 with a
finite loss), and the run then saved the contaminated state and deleted the last good one. So
  - a save refuses a state with a non-finite value (`NonFiniteStateError`);
  - every checkpoint carries an `integrity` item: per leaf, its largest magnitude and a
    position-weighted checksum of its bits (exact integer arithmetic on the device, so any
    reduction order gives the same value);
  - a restore recomputes both and compares; a checkpoint that fails, or cannot be read at all,
    is moved aside to `checkpoints_rejected/` and the previous one is tried, with a warning
    naming both; with none left, `CheckpointError` says what was wrong with each;
  - the integrity item also records what the state was trained for (`trained_for`: the model
    config and the input preprocessing), which shapes alone cannot tell (a 151 px config.json
    over a 599 px checkpoint has the same arrays); inference loads compare it with config.json;
  - each checkpoint is read back and verified before the next one is written, and at least two
    are kept, so the preservation policy never deletes the newest verified checkpoint before a
    newer one has been verified.
A failed save (a full disk) removes its own temporary directory and raises `CheckpointError`,
one line, instead of thousands of lines of asyncio tracebacks.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging as std_logging
import re
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from marco_jax.data import preprocess
from marco_jax.model import inception

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
REJECTED_DIR = "checkpoints_rejected"
EVAL_METRIC = "accuracy"
INTEGRITY_ITEM = "integrity"
MIN_KEPT = 2  # the newest verified checkpoint survives while the next one is written
SETTLE_POLLS, SETTLE_POLL_S = 5, 0.1  # after a failed restore (see _settle_failed_read)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or none could be read back; the message is one line."""


class NonFiniteStateError(CheckpointError):
    """The state to be saved holds NaN or infinite values; it is not saved."""


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


# ---------------------------------------------------------------------------- integrity


def _words(x: jax.Array) -> jax.Array:
    """The bits of `x` as a flat uint32 vector."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32).ravel()
    unsigned = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}"))
    return unsigned.astype(jnp.uint32).ravel()


def _leaf_record(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    words = _words(x)
    weights = 2 * jnp.arange(words.size, dtype=jnp.uint32) + 1  # also catches swapped values
    checksum = jnp.sum(words * weights, dtype=jnp.uint32)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        finite = jnp.all(jnp.isfinite(x))
        magnitude = jnp.max(jnp.abs(x)).astype(jnp.float32) if x.size else jnp.float32(0)
    else:
        finite, magnitude = jnp.bool_(True), jnp.float32(0)
    return finite, magnitude, checksum


_leaf_records = jax.jit(lambda leaves: [_leaf_record(x) for x in leaves])


def state_record(state: Any) -> dict[str, dict[str, Any]]:
    """{leaf path: {"finite", "max_abs", "checksum"}} of a state pytree, computed on device."""
    paths_and_leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    leaves = [jnp.asarray(leaf) for _, leaf in paths_and_leaves]
    records = jax.device_get(_leaf_records(leaves))
    return {
        jax.tree_util.keystr(path): {
            "finite": bool(finite),
            "max_abs": float(magnitude),
            "checksum": int(checksum),
        }
        for (path, _), (finite, magnitude, checksum) in zip(paths_and_leaves, records, strict=True)
    }


def non_finite_leaves(record: dict[str, dict[str, Any]]) -> list[str]:
    return [path for path, leaf in record.items() if not leaf["finite"]]


def _describe(paths: list[str], limit: int = 3) -> str:
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def _by_name(record: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Keys reduced to their names ("params/Logits/kernel"), the same whether the state was a
    TrainState (`.params['Logits']`) or the plain dict an inference restore gives."""
    return {"/".join(re.findall(r"[^.\[\]'\"]+", key)): leaf for key, leaf in record.items()}


def _verify(state: Any, saved: dict[str, Any] | None) -> None:
    """Raises ValueError (one line) unless `state` is finite and matches its saved record."""
    record = _by_name(state_record(state))
    if bad := non_finite_leaves(record):
        raise ValueError(f"non-finite values in {_describe(bad)}")
    if saved is None:
        return  # an older or imported checkpoint: finiteness is all that can be checked
    leaves = _by_name(saved["leaves"])
    if leaves.keys() != record.keys():
        raise ValueError("its leaves differ from the state this config builds")
    changed = [p for p in record if record[p]["checksum"] != leaves[p]["checksum"]]
    if changed:
        first = changed[0]
        raise ValueError(
            f"checksum mismatch in {_describe(changed)} (max |x| of {first} is "
            f"{record[first]['max_abs']:.3g}, {leaves[first]['max_abs']:.3g} when saved)"
        )


def trained_for(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What a checkpoint's arrays mean: the network and the input transform it was trained on."""
    return {
        "model": config.model.to_dict(),
        "preprocessing": preprocess.Preprocessing.from_config(config).to_metadata(),
    }


def check_trained_for(
    config: ml_collections.ConfigDict, saved: dict[str, Any] | None, step: int
) -> None:
    """Raises ValueError naming each field where config.json and checkpoint `step` disagree."""
    if saved is None or "trained_for" not in saved:
        return  # an older or imported checkpoint: its shapes are all that can be checked
    now, then = _flat(trained_for(config)), _flat(saved["trained_for"])
    differing = [key for key in sorted(then) if now.get(key) != then[key]]
    if differing:
        fields = ", ".join(
            f"{key} is {now.get(key)!r} there but was {then[key]!r}" for key in differing
        )
        raise ValueError(
            f"config.json does not match checkpoint {step}, which was trained with other "
            f"settings ({fields}); config.json was changed after training? Restore the run's "
            "own config.json."
        )


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


# ---------------------------------------------------------------------------- save


def _abstract(x: jax.Array) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)


def _one_line(error: BaseException) -> str:
    """`error` in one line of at most ~300 characters; the OS's reason, if any, first."""
    text = " ".join(str(error).split()) or type(error).__name__
    reason = next(
        (
            e.strerror
            for e in _chain(error)
            if isinstance(e, OSError) and e.strerror and e.strerror not in text
        ),
        None,
    )
    for known in ("No space left on device", "Disk quota exceeded", "Read-only file system"):
        if known in text and reason is None:
            reason = known
    if len(text) > 300:
        text = text[:160] + " ... " + text[-130:]
    return f"{reason}: {text}" if reason else text


def _chain(error: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def _remove_tmp_dirs(manager: ocp.CheckpointManager) -> list[str]:
    removed = []
    for path in manager.directory.iterdir() if manager.directory.exists() else []:
        if ".orbax-checkpoint-tmp" in path.name:
            try:
                path.rmtree()
                removed.append(path.name)
            except OSError as e:
                logging.warning("Could not remove %s: %s", path, e)
    return removed


class QuietOrbax:
    """Silences Orbax's and asyncio's loggers and unraisable exceptions while failing I/O unwinds.

    A failed write or read is reported by every pending tensorstore future of every array:
    "Exception ignored in: <coroutine ...>" and "Event loop is closed" tracebacks by the
    hundred, printed when the abandoned coroutines are garbage collected. They are collected
    here, under a hook that drops them; the one error that matters is raised and reported by
    the caller instead.
    """

    _NAMES = ("absl", "asyncio", "orbax", "jax._src.distributed")

    def __enter__(self) -> QuietOrbax:
        self._levels = [std_logging.getLogger(n).level for n in self._NAMES]
        for name in self._NAMES:
            std_logging.getLogger(name).setLevel(std_logging.CRITICAL)
        self._hook = sys.unraisablehook
        self.dropped = 0
        sys.unraisablehook = self._drop
        return self

    def _drop(self, unraisable: Any) -> None:
        self.dropped += 1

    def __exit__(self, *exc_info) -> None:
        if exc_info[0] is not None:
            gc.collect()  # the failed operation's coroutines, while their noise is dropped
        sys.unraisablehook = self._hook
        for name, level in zip(self._NAMES, self._levels, strict=True):
            std_logging.getLogger(name).setLevel(level)


class Saver:
    """Writes a run's checkpoints: refuses non-finite states, verifies each one written.

    `save` starts an asynchronous save after reading back and verifying the previous one;
    `finish` waits for the last save and verifies it. Either raises CheckpointError (one line)
    when a save failed, after removing the failed save's temporary directory.
    """

    def __init__(self, manager: ocp.CheckpointManager, config: ml_collections.ConfigDict):
        self.manager = manager
        self._trained_for = trained_for(config)
        self._unverified: tuple[int, Any] | None = None  # (step, abstract state)

    def save(
        self,
        step: int,
        state: Any,
        progress: dict[str, Any],
        metrics: dict[str, float] | None = None,
    ) -> None:
        record = state_record(state)
        if bad := non_finite_leaves(record):
            raise NonFiniteStateError(
                f"the state at step {step} holds non-finite values in {_describe(bad)}; "
                "it was not saved."
            )
        self.finish()
        if step in self.manager.all_steps():
            return  # e.g. a finished run re-saving its last step
        with QuietOrbax():
            try:
                self.manager.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(state),
                        progress=ocp.args.JsonSave(progress),
                        **{
                            INTEGRITY_ITEM: ocp.args.JsonSave(
                                {"leaves": record, "trained_for": self._trained_for}
                            )
                        },
                    ),
                    metrics=metrics,
                    force=True,
                )
            except Exception as e:  # noqa: BLE001 - any failure of the write is reported alike
                self._failed(step, e)
        self._unverified = (step, jax.tree.map(_abstract, state))

    def finish(self) -> None:
        """Waits for the pending save and verifies what it wrote."""
        if self._unverified is None:
            return
        step, abstract = self._unverified
        self._unverified = None
        with QuietOrbax():
            try:
                self.manager.wait_until_finished()
                self.manager.check_for_errors()
            except Exception as e:  # noqa: BLE001
                self._failed(step, e)
        try:
            _restore_verified(self.manager, step, abstract)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(
                f"checkpoint {step} in {self.manager.directory} does not read back as it was "
                f"written ({_one_line(e)}); check the storage."
            ) from None

    def _failed(self, step: int, error: BaseException) -> None:
        removed = _remove_tmp_dirs(self.manager)
        cleaned = f"; removed its partial files {removed}" if removed else ""
        raise CheckpointError(
            f"saving checkpoint {step} in {self.manager.directory} failed: "
            f"{_one_line(error)}{cleaned}."
        ) from None


# ---------------------------------------------------------------------------- restore


def _item_exists(manager: ocp.CheckpointManager, step: int, item: str) -> bool:
    return (manager.directory / str(step) / item).exists()


def _restore_verified(
    manager: ocp.CheckpointManager, step: int, abstract_state: Any
) -> tuple[Any, dict[str, Any]]:
    items = {
        "state": ocp.args.StandardRestore(abstract_state),
        "progress": ocp.args.JsonRestore(),
    }
    has_record = _item_exists(manager, step, INTEGRITY_ITEM)
    if has_record:
        items[INTEGRITY_ITEM] = ocp.args.JsonRestore()
    with QuietOrbax():
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    _verify(restored.state, restored[INTEGRITY_ITEM] if has_record else None)
    return restored.state, dict(restored.progress or {})


def _set_aside(manager: ocp.CheckpointManager, step: int) -> str:
    """Moves checkpoint `step` out of the manager's sight (never deletes it); returns where."""
    source = manager.directory / str(step)
    target_dir = manager.directory.parent / REJECTED_DIR
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    source.rename(target)
    return str(target)


def _settle_failed_read() -> None:
    """Lets a failed restore's other reads finish, quietly, before anything else runs.

    A restore fails at its first bad array while tensorstore still reads the others; their
    completions then call back into Orbax's closed event loop from tensorstore's threads and
    print "Event loop is closed" tracebacks to sys.stderr, and their abandoned coroutines raise
    when collected. Both are silenced here for a moment (the one error that matters is reported
    by the caller). Must run outside the `except` block: there the error's traceback still holds
    the coroutines.
    """
    with QuietOrbax(), contextlib.redirect_stderr(io.StringIO()):
        for _ in range(SETTLE_POLLS):
            gc.collect()
            time.sleep(SETTLE_POLL_S)


def restore_latest(
    manager: ocp.CheckpointManager, abstract_state: Any
) -> tuple[Any, dict[str, Any]] | None:
    """The newest good checkpoint as (state, progress) in `abstract_state`'s shardings.

    None when there is no checkpoint. Newer checkpoints that cannot be read or fail
    verification are moved to `checkpoints_rejected/` with a warning naming them and the step
    resumed from; CheckpointError when no checkpoint is good (nothing is moved then).
    """
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        return None
    failures: list[tuple[int, str]] = []
    for step in steps:
        try:
            state, progress = _restore_verified(manager, step, abstract_state)
        except Exception as e:  # noqa: BLE001 - unreadable for whatever reason: try the previous
            failures.append((step, _one_line(e)))
        else:
            break
        _settle_failed_read()
    else:
        details = "; ".join(f"step {s}: {reason}" for s, reason in failures)
        raise CheckpointError(
            f"no readable checkpoint in {manager.directory} ({details}); restore a backup, or "
            "move the checkpoints directory away to start afresh."
        )
    for bad, reason in failures:
        # One process moves; every process has read the same files and judged alike.
        where = _set_aside(manager, bad) if jax.process_index() == 0 else "(process 0)"
        logging.warning(
            "Checkpoint %d in %s is unreadable or corrupt (%s); moved it to %s and resumed "
            "from checkpoint %d, the newest good one.",
            bad,
            manager.directory,
            reason,
            where,
            step,
        )
    if failures:
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("marco_jax.training.checkpoints.set_aside")
        manager.reload()
    return state, progress


# ---------------------------------------------------------------------------- config


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


# ---------------------------------------------------------------------------- inference


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
) -> tuple[ml_collections.ConfigDict, inception.InceptionV3, int]:
    """Rebuilds the trained network from a workdir, with the EMA weights unless told otherwise.

    Returns (config, model, step). The paper evaluates "a running average of the training model"
    (section 3, "Training"), hence EMA by default. Raises FileNotFoundError or ValueError (one
    line) for a missing workdir or step, a config.json that no longer describes the checkpoint
    (`check_trained_for`), or a checkpoint whose values fail their integrity record.
    """
    config = read_config(workdir)
    manager = create_manager(workdir, read_only=True)
    step = resolve_step(manager, checkpoint)
    saved = integrity_record(manager, step)
    check_trained_for(config, saved, step)
    restored = restore_on_this_host(manager, step)
    manager.close()
    try:
        _verify(restored, saved)
    except ValueError as e:
        raise ValueError(
            f"checkpoint {step} in {workdir} is corrupt ({e}); choose another with "
            "--checkpoint, or restore the workdir from a backup."
        ) from None
    model = nnx.eval_shape(lambda: inception.create_model(config))
    params = restored["ema_params" if use_ema else "params"]
    batch_stats = restored["ema_batch_stats" if use_ema else "batch_stats"]
    graphdef, _, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
    return config, nnx.merge(graphdef, params, batch_stats), step


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


def verify_restored(state: Any, record: dict[str, Any] | None) -> None:
    """Raises CheckpointError unless a restored `state` is finite and matches `record`."""
    try:
        _verify(state, record)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
