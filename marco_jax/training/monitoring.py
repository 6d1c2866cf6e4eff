"""What the training loop reports beside its metrics: how long it waits for input, and where its
scalars go when TensorFlow is absent.

- `InputWait` times the loop's blocking on the next batch. Its share of the wall time is the
  share the accelerator can idle for want of data: near 0 the run is step-bound, and a large
  share means the input pipeline limits it (more workers, pre-scaled storage).
- clu's metric writers and periodic actions import TensorFlow (for its summary writer). An
  accelerator machine without TensorFlow still trains: `create_writer` then logs the scalars as
  clu's LoggingWriter does and writes TensorBoard event files with the `tensorboard` package,
  and `profiler_hooks` is empty (no clu profiler).
"""

from __future__ import annotations

import importlib.util
import io
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import ml_collections
import numpy as np
from absl import logging
from etils import epath


class MetricWriter(Protocol):
    """The part of clu's MetricWriter that the training loop uses."""

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None: ...

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None: ...

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
        from tensorboard.compat.proto import summary_pb2

        summary = summary_pb2.Summary(
            value=[
                summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()
            ]
        )
        self._add(step, summary)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """images: {tag: [N, H, W, 3] uint8}; the first of each, PNG-encoded, as clu writes."""
        if self._events is None:
            return
        from PIL import Image
        from tensorboard.compat.proto import summary_pb2

        values = []
        for tag, batch in images.items():
            png = io.BytesIO()
            Image.fromarray(np.asarray(batch[0], np.uint8)).save(png, format="PNG")
            height, width, channels = batch[0].shape
            image = summary_pb2.Summary.Image(
                height=height, width=width, colorspace=channels, encoded_image_string=png.getvalue()
            )
            values.append(summary_pb2.Summary.Value(tag=tag, image=image))
        self._add(step, summary_pb2.Summary(value=values))

    def _add(self, step: int, summary: Any) -> None:
        from tensorboard.compat.proto import event_pb2

        self._events.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        logging.info("[Hyperparameters] %s", dict(hparams))

    def flush(self) -> None:
        if self._events is not None:
            self._events.flush()


def create_writer(workdir: str, just_logging: bool) -> MetricWriter:
    """clu's default writer (log + TensorBoard); without TensorFlow, `_EventFileWriter`."""
    if _has_tensorflow():
        from clu import metric_writers

        return metric_writers.create_default_writer(workdir, just_logging=just_logging)
    logging.warning(
        "TensorFlow is absent: scalars go to the log and to event files in %s.", workdir
    )
    return _EventFileWriter(None if just_logging else workdir)


def profiler_hooks(
    config: ml_collections.ConfigDict, workdir: str, is_chief: bool
) -> list[Callable[[int], Any]]:
    """clu's profiler action on process 0 when config.profile_steps > 0; none without
    TensorFlow, which clu's periodic actions import. (Progress is the console's bar.)"""
    if not (is_chief and config.profile_steps > 0):
        return []
    if not _has_tensorflow():
        logging.warning("TensorFlow is absent: no clu profile (config.profile_steps).")
        return []
    from clu import periodic_actions

    return [periodic_actions.Profile(num_profile_steps=config.profile_steps, logdir=workdir)]
