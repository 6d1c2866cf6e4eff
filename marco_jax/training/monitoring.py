"""What the training loop reports beside its metrics: how long it waits for input, and where its
scalars go when TensorFlow is absent.

- `InputWait` times the loop's blocking on the next batch. Its share of the wall time is the
  share the accelerator can idle for want of data: near 0 the run is step-bound, and a large
  share means the input pipeline limits it (more workers, pre-scaled storage).
- clu's metric writers and periodic actions import TensorFlow (for its summary writer). An
  accelerator machine without TensorFlow still trains: `create_writer` then logs the scalars as
  clu's LoggingWriter does and writes TensorBoard event files with the `tensorboard` package,
  and `progress_hooks` is empty (no progress notes, no clu profiler).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import ml_collections
from absl import logging
from etils import epath


class ScalarWriter(Protocol):
    """The part of clu's MetricWriter that the training loop uses."""

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None: ...

    def write_hparams(self, hparams: Mapping[str, Any]) -> None: ...

    def flush(self) -> None: ...


class InputWait:
    """Wall time spent in `next(iterator)` against the wall time, between two `take`s."""

    def __init__(self) -> None:
        self._waited = 0.0
        self._since = time.perf_counter()

    def next(self, iterator: Iterator[Any]) -> Any:
        start = time.perf_counter()
        try:
            return next(iterator)
        finally:
            self._waited += time.perf_counter() - start

    def take(self, steps: int) -> dict[str, float]:
        """{"input_wait_share": waited / elapsed, "input_wait_ms": per step}; then restarts."""
        now = time.perf_counter()
        elapsed = max(now - self._since, 1e-9)
        result = {
            "input_wait_share": self._waited / elapsed,
            "input_wait_ms": 1000 * self._waited / max(steps, 1),
        }
        self._waited, self._since = 0.0, now
        return result


def _has_tensorflow() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


class _EventFileWriter:
    """Scalars to the log (clu LoggingWriter's format) and to TensorBoard event files, by the
    `tensorboard` package's TF-free writer (the one PyTorch's SummaryWriter uses)."""

    def __init__(self, logdir: str | None):
        self._events = None
        if logdir is not None:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            epath.Path(logdir).mkdir(parents=True, exist_ok=True)
            self._events = EventFileWriter(str(logdir), flush_secs=10)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        values = [
            f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in sorted(scalars.items())
        ]
        logging.info("[%d] %s", step, ", ".join(values))
        if self._events is None:
            return
        from tensorboard.compat.proto import event_pb2, summary_pb2

        summary = summary_pb2.Summary(
            value=[
                summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()
            ]
        )
        self._events.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        logging.info("[Hyperparameters] %s", dict(hparams))

    def flush(self) -> None:
        if self._events is not None:
            self._events.flush()


def create_writer(workdir: str, just_logging: bool) -> ScalarWriter:
    """clu's default writer (log + TensorBoard); without TensorFlow, `_EventFileWriter`."""
    if _has_tensorflow():
        from clu import metric_writers

        return metric_writers.create_default_writer(workdir, just_logging=just_logging)
    logging.warning(
        "TensorFlow is absent: scalars go to the log and to event files in %s.", workdir
    )
    return _EventFileWriter(None if just_logging else workdir)


def progress_hooks(
    config: ml_collections.ConfigDict,
    num_steps: int,
    writer: ScalarWriter,
    workdir: str,
    is_chief: bool,
) -> list[Callable[[int], Any]]:
    """clu's progress report and (process 0, config.profile_steps > 0) profiler actions; none
    without TensorFlow, which clu's periodic actions import."""
    if not _has_tensorflow():
        if config.profile_steps > 0:
            logging.warning("TensorFlow is absent: no clu profile (config.profile_steps).")
        return []
    from clu import periodic_actions

    hooks = [periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)]
    if is_chief and config.profile_steps > 0:
        hooks.append(
            periodic_actions.Profile(num_profile_steps=config.profile_steps, logdir=workdir)
        )
    return hooks
