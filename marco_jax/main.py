"""Trains the MARCO classifier: `python -m marco_jax.main --config configs/<name>.py --workdir DIR`.

Override any config field on the command line, e.g. `--config.input.global_batch_size=256`.
Restarting with the same --workdir resumes from its last good checkpoint. Multi-host jobs either
pass --coordinator_address/--num_processes/--process_id, or are detected (Cloud TPU, SLURM,
Open MPI).

Exit codes, so that a scheduler can tell the cases apart (each failure is one line on stderr):
  0   finished: the step budget is reached or early stopping ended the run. Relaunching it
      trains no further step (it evaluates and exits 0 again).
  1   a crash (a bug or an unexpected environment fault): Python's traceback.
  2   the invocation must change: an invalid config value (one line per field), a config that
      changes the network or the data order of the run in --workdir, or a workdir in use by
      another live process (the line names its pid and host).
  3   training diverged: the loss or the updated state became NaN/inf. The line names the
      last checkpoint (verified finite) that a relaunch resumes from.
  4   checkpoint storage: no checkpoint in --workdir could be read back, or a save failed
      (e.g. a full disk; its partial files are removed).
  75  preempted (SIGTERM; EX_TEMPFAIL of sysexits.h): a checkpoint was saved, relaunch the same
      command to resume.
"""

from __future__ import annotations

import sys

import jax
from absl import flags, logging
from clu import platform
from ml_collections import config_flags

from marco_jax import cli, parallel
from marco_jax.runs import lock
from marco_jax.training import checkpoints, config_checks

EXIT_FINISHED = 0
EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_CHECKPOINT = 4
EXIT_PREEMPTED = 75

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and eval results.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0, for a multi-process job on a plain cluster.",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in the job.")


def _fail(code: int, message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}")
    # Before anything logs: a bad value is the only output, one line per field.
    if problems := config_checks.problems(_CONFIG.value):
        _fail(EXIT_USAGE, "\nerror: ".join(problems))
    # Imported only now: loading TensorFlow (through clu's writers) prints C++ banners that no
    # flag silences, and a bad value must be the only line a user sees.
    from marco_jax.training import train

    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    platform.work_unit().set_task_status(
        f"process_index: {jax.process_index()}, process_count: {jax.process_count()}"
    )
    platform.work_unit().create_artifact(platform.ArtifactType.DIRECTORY, _WORKDIR.value, "workdir")
    try:
        result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (config_checks.ConfigError, lock.WorkdirLockedError) as e:
        _fail(EXIT_USAGE, str(e).replace("\n", "\nerror: "))
    except train.NonFiniteLossError as e:
        _fail(EXIT_DIVERGED, str(e))
    except checkpoints.CheckpointError as e:
        _fail(EXIT_CHECKPOINT, str(e))
    logging.info(
        "Final evaluation: accuracy %.4f at step %s (%s).",
        result["accuracy"],
        result["step"],
        result["status"],
    )
    if result["status"] == train.PREEMPTED:
        sys.stderr.write(
            f"preempted at step {result['stopped_at']}: checkpoint saved; relaunch to resume "
            f"(exit {EXIT_PREEMPTED}).\n"
        )
        sys.exit(EXIT_PREEMPTED)
    print(f"{result['status']} at step {result['step']}, accuracy {result['accuracy']:.4f}.")


def run() -> None:
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run(main)


if __name__ == "__main__":
    run()
