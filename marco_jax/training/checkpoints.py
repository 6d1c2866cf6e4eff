"""Writing a run's checkpoints, and resuming from the newest good one.

One checkpoint holds everything a resumed run needs to continue exactly where the killed one
stopped: the `TrainState` pytree and the early-stopping bookkeeping (the layout and its readers
are `marco_jax.runs.store`). The data position needs no item of its own: a step consumes one
batch, so a run resumed at step s starts the train stream at batch s
(`input_pipeline.create_train_dataset(start_batch=...)`), whatever the number of grain workers
before and after. (Checkpoints of older versions also hold a `data` item, the grain iterator
state; it is ignored.)

Integrity (`marco_jax.runs.integrity`): a bit flipped on disk used to restore silently, and the
run then saved the contaminated state and deleted the last good one. So
  - a save refuses a state with a non-finite value (`NonFiniteStateError`);
  - every checkpoint carries an `integrity` item, the per-leaf record and `trained_for`;
  - a restore recomputes the record and compares; a checkpoint that fails, or cannot be read at
    all, is moved aside to `checkpoints_rejected/` and the previous one is tried, with a warning
    naming both; with none left, `CheckpointError` says what was wrong with each;
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
import logging as std_logging
import sys
import time
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from marco_jax.runs import integrity, store

REJECTED_DIR = "checkpoints_rejected"
SETTLE_POLLS, SETTLE_POLL_S = 5, 0.1  # after a failed restore (see _settle_failed_read)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or none could be read back; the message is one line."""


class NonFiniteStateError(CheckpointError):
    """The state to be saved holds NaN or infinite values; it is not saved."""


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
        self._trained_for = integrity.trained_for(config)
        self._unverified: tuple[int, Any] | None = None  # (step, abstract state)

    def save(
        self,
        step: int,
        state: Any,
        progress: dict[str, Any],
        metrics: dict[str, float] | None = None,
    ) -> None:
        record = integrity.state_record(state)
        if bad := integrity.non_finite_leaves(record):
            raise NonFiniteStateError(
                f"the state at step {step} holds non-finite values in {integrity.describe(bad)}; "
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
                            store.INTEGRITY_ITEM: ocp.args.JsonSave(
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
    has_record = _item_exists(manager, step, store.INTEGRITY_ITEM)
    if has_record:
        items[store.INTEGRITY_ITEM] = ocp.args.JsonRestore()
    with QuietOrbax():
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    integrity.verify(restored.state, restored[store.INTEGRITY_ITEM] if has_record else None)
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


def verify_restored(state: Any, record: dict[str, Any] | None) -> None:
    """Raises CheckpointError unless a restored `state` is finite and matches `record`."""
    try:
        integrity.verify(state, record)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
