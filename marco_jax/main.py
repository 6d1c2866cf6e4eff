"""Trains the MARCO classifier: `python -m marco_jax.main --config configs/<name>.py --workdir DIR`.

Override any config field on the command line, e.g. `--config.input.global_batch_size=256`.
Restarting with the same --workdir resumes from its last checkpoint. Multi-host jobs either pass
--coordinator_address/--num_processes/--process_id, or are detected (Cloud TPU, SLURM, Open MPI).
"""

from __future__ import annotations

import jax
from absl import app, flags, logging
from clu import platform
from ml_collections import config_flags

from marco_jax import parallel, train

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and eval results.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0, for a multi-process job on a plain cluster.",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in the job.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    platform.work_unit().set_task_status(
        f"process_index: {jax.process_index()}, process_count: {jax.process_count()}"
    )
    platform.work_unit().create_artifact(platform.ArtifactType.DIRECTORY, _WORKDIR.value, "workdir")
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    logging.info("Final evaluation: accuracy %.4f at step %s.", result["accuracy"], result["step"])


def run() -> None:
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)


if __name__ == "__main__":
    run()
