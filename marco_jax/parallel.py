"""Data parallelism over every device of every host with `jax.jit` and shardings.

The training state is replicated and each global batch is split along the mesh's `data` axis.
Under `jit` the batch is one global array, so BatchNorm's statistics are the global batch's
without any explicit cross-device reduction.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Mapping

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from marco_jax import logs

DATA_AXIS = "data"

# Environment variables by which a launcher reveals a multi-process job that
# `jax.distributed.initialize()` can configure itself from.
_CLUSTER_HINTS = {
    "SLURM_NTASKS": "SLURM",
    "OMPI_COMM_WORLD_SIZE": "Open MPI",
    "TPU_WORKER_HOSTNAMES": "Cloud TPU",
}


def _launched_as_cluster_job() -> str | None:
    for variable, name in _CLUSTER_HINTS.items():
        value = os.environ.get(variable, "")
        if "," in value or (value.isdigit() and int(value) > 1):
            return name
    return None


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins the processes of a multi-host job; a no-op for a single process.

    Explicit arguments serve plain clusters; otherwise TPU pods, SLURM and Open MPI jobs are
    detected from their environment and configured by JAX itself.
    """
    if coordinator_address is not None:
        if num_processes is None or process_id is None:
            raise ValueError(
                "--coordinator_address needs --num_processes and --process_id as well."
            )
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif cluster := _launched_as_cluster_job():
        logging.info(
            "Detected a %s job; initialising jax.distributed from its environment.", cluster
        )
        jax.distributed.initialize()
    devices = (
        f"Process {jax.process_index()} of {jax.process_count()}; {jax.local_device_count()} "
        f"local and {jax.device_count()} global devices ({jax.devices()[0].platform})."
    )
    if jax.process_count() > 1:
        logging.info(devices)
    else:  # the console would show it before every one-line error; the log file keeps it
        logs.keep(devices)


def create_mesh() -> Mesh:
    # Auto axes: XLA propagates the batch sharding through the step (jit's classic behaviour);
    # explicit axes would demand sharding annotations inside the model and the augmentations.
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_divisible(batch_size: int, field: str) -> None:
    """Fails early, naming the config field, when a batch cannot be split evenly over devices."""
    if batch_size % jax.device_count():
        raise ValueError(
            f"config.input.{field}={batch_size} is not divisible by the {jax.device_count()} "
            f"devices of this job; choose a multiple of {jax.device_count()}."
        )


def to_global(
    local_batch: Mapping[str, np.ndarray], sharding: NamedSharding
) -> dict[str, jax.Array]:
    """Assembles each host's slice into one global array split along the data axis."""
    return {
        key: jax.make_array_from_process_local_data(sharding, value)
        for key, value in local_batch.items()
    }


def gather_from_processes(value: object) -> list:
    """`value` (anything JSON can write) of every process, in process order, on every process.

    For host-side data that cannot travel as device arrays, such as the text fields of
    evaluation records: each process knows only its own records.
    """
    if jax.process_count() == 1:
        return [value]
    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([data.size], np.int64)).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    everyone = multihost_utils.process_allgather(padded)
    return [
        json.loads(bytes(row[: int(n)]).decode()) for row, n in zip(everyone, sizes, strict=True)
    ]


class PreemptionWatcher:
    """Tells the training loop, identically on every host, that the job is being stopped.

    A single process listens for SIGTERM itself. In a multi-host job JAX's preemption service
    (started by `jax.distributed.initialize`) picks one step at which every host saves, so the
    hosts cannot disagree about when to stop.
    """

    def __init__(self) -> None:
        self._terminated = threading.Event()
        self._multihost = jax.process_count() > 1
        self._previous_handler = None
        if not self._multihost and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def close(self) -> None:
        """Gives SIGTERM back to whoever had it: a process that trains in-process (a test, a
        notebook) must not stay deaf to SIGTERM after the run."""
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def _on_sigterm(self, signum, frame) -> None:
        logging.warning("SIGTERM received: saving a checkpoint before exiting.")
        self._terminated.set()

    def should_stop(self, step: int) -> bool:
        if self._multihost:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._terminated.is_set()
