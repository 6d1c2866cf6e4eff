"""How many grain worker processes and threads build the input batches, and how much they
buffer: config.input's num_workers, read_threads and prefetch_buffer_size, each AUTO (-1) one
chosen from the cores. Apart from the pipeline so that config checks need not import grain.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

AUTO = -1  # input.num_workers, read_threads, prefetch_buffer_size: chosen from the cores


@dataclasses.dataclass(frozen=True)
class Parallelism:
    """How many processes and threads build batches, and how many batches each buffers."""

    workers: int  # grain worker processes (0: batches are built in this process)
    read_threads: int  # threads per process, each building whole batches
    prefetch: int  # batches buffered per worker process


def available_cores() -> int:
    """The cores this process may run on (its affinity mask: a container or taskset limit)."""
    return len(os.sched_getaffinity(0))


def choose(inp: ml_collections.ConfigDict, cores: int | None = None) -> Parallelism:
    """config.input's num_workers, read_threads and prefetch_buffer_size, each AUTO (-1) one
    chosen from `cores` (default: `available_cores()`); explicit values are kept.

    The auto rules, for CPU-bound work (decoding and resampling; bench/input_pipeline.py
    --workers 1,2,... measures the curve):
    - workers: one per core but one (at least one), which is left to the training loop: it
      dispatches the steps, copies batches to the devices and takes over grain's batches.
    - read_threads: 1 per worker process: a second thread only contends for the worker's
      core (configs/default.py: 2 threads per worker were ~2x slower at 599 px on 2 cores);
      all the cores when batches are built in-process (num_workers 0), where the threads are
      the only parallelism.
    - prefetch: 2 batches per worker, one handed over while the next is built; the host's
      buffer thus grows with its workers (at 599 px, 69 MB a batch of 64).
    """
    cores = available_cores() if cores is None else cores
    workers = max(1, cores - 1) if inp.num_workers == AUTO else inp.num_workers
    threads = inp.read_threads
    if threads == AUTO:
        threads = 1 if workers > 0 else cores
    prefetch = 2 if inp.prefetch_buffer_size == AUTO else inp.prefetch_buffer_size
    return Parallelism(workers, threads, prefetch)
