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
      changes the network or the data order of the run in --workdir, a workdir in use by
      another live process (the line names its pid and host), or a dataset stored pre-scaled
      for other preprocessing (config.dataset.prescale).
  3   training diverged: the loss or the updated state became NaN/inf. The line names the
      last checkpoint (verified finite) that a relaunch resumes from.
  4   checkpoint storage: no checkpoint in --workdir could be read back, or a save failed
      (e.g. a full disk; its partial files are removed).
  75  preempted (SIGTERM; EX_TEMPFAIL of sysexits.h): a checkpoint was saved, relaunch the same
      command to resume.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import jax
from absl import flags, logging
from clu import platform
from ml_collections import config_flags

from marco_jax import cli, parallel
from marco_jax.data.prescale import StorageMismatchError
from marco_jax.runs import lock
from marco_jax.training import checkpoints, config_checks

EXIT_FINISHED = 0
EXIT_USAGE = cli.EXIT_USAGE
EXIT_DIVERGED = 3
EXIT_CHECKPOINT = 4
EXIT_PREEMPTED = 75


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    cli.define_workdir_flag(fv, "Directory for checkpoints, logs and eval results.")
    config_flags.DEFINE_config_file(
        "config", None, "Training config file.", flag_values=fv, lock_config=True
    )
    flags.DEFINE_string(
        "coordinator_address",
        None,
        "host:port of process 0, for a multi-process job on a plain cluster.",
        flag_values=fv,
    )
    flags.DEFINE_integer("num_processes", None, "Number of processes in the job.", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "This process's index in the job.", flag_values=fv)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)


def _fail(code: int, message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def main(argv: Sequence[str], fv: flags.FlagValues = flags.FLAGS) -> None:
    cli.check_no_positional(argv)
    # Before anything logs: a bad value is the only output, one line per field.
    if problems := config_checks.problems(fv.config):
        _fail(EXIT_USAGE, "\nerror: ".join(problems))
    # Imported only now: loading TensorFlow (through clu's writers) prints C++ banners that no
    # flag silences, and a bad value must be the only line a user sees.
    from marco_jax.training import train

    parallel.initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id)
    platform.work_unit().set_task_status(
        f"process_index: {jax.process_index()}, process_count: {jax.process_count()}"
    )
    platform.work_unit().create_artifact(platform.ArtifactType.DIRECTORY, fv.workdir, "workdir")
    try:
        result = train.train_and_evaluate(fv.config, fv.workdir)
    except (config_checks.ConfigError, lock.WorkdirLockedError, StorageMismatchError) as e:
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
    cli.run(main, define_flags)


if __name__ == "__main__":
    run()
