"""Imports the released MARCO model as a marco_jax workdir.

  python -m marco_jax.import_release --savedmodel DIR --workdir OUT [--config configs/default.py]

DIR is the unzipped release (`savedmodel.zip`, the paper's ref. 47): saved_model.pb and
variables/. OUT becomes a workdir like a training run's: config.json (the release's config,
configs/default.py), one checkpoint (step 0) whose weights and EMA weights are the release's
values, and release.json (which release: its graph's sha256 and global step). `classify
--workdir`, `evaluate`, `export` and `relabel` read it as they read a run, and training starts
from it with `--config.init_from=OUT` (or straight from DIR).

Exit codes: 0 imported; 2 wrong input (DIR is not the release, a variable is missing or has
another shape, OUT already holds a run), named in one line on stderr.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import ml_collections
import orbax.checkpoint as ocp
from absl import flags
from etils import epath

from marco_jax import cli, config_utils
from marco_jax.model import inception, release
from marco_jax.runs import store

PROVENANCE_FILE = "release.json"


def import_release(
    savedmodel: str, workdir: str, config: ml_collections.ConfigDict
) -> dict[str, object]:
    """Writes the workdir; returns the provenance recorded in it.

    Raises:
      cli.ArgumentError: not the release, a mismatch with `config`'s network, or a workdir that
        already holds a run (it is never overwritten).
    """
    out = epath.Path(workdir)
    if (out / store.CONFIG_FILE).exists() or (out / store.CHECKPOINT_DIR).exists():
        raise cli.ArgumentError(
            f"{workdir} already holds a run (config.json or checkpoints/); pass a new --workdir."
        )
    try:
        release.check_release_dir(savedmodel)  # before TensorFlow prints its start-up banners
        values = release.read_variables(savedmodel)
        model = inception.create_model(config, rngs=config.seed)
        release.load_into(model, values)
    except release.ReleaseError as e:
        raise cli.ArgumentError(f"{savedmodel}: {e}") from e
    from marco_jax.training import step

    # The optimiser's state is fresh: the release ships no slots for RMSProp.
    _, state, _ = step.create(config, model, steps_per_epoch=1)
    provenance = release.provenance(savedmodel, values)
    store.write_config(workdir, config)
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2))
    manager = store.create_manager(workdir, config.keep_checkpoints)
    manager.save(
        0,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            progress=ocp.args.JsonSave(
                {"best_accuracy": -1.0, "best_step": -1, "evals_since_best": 0}
            ),
        ),
        force=True,
    )
    manager.wait_until_finished()
    manager.close()
    return provenance


EXAMPLE = "python -m marco_jax.import_release --savedmodel savedmodel --workdir runs/release"


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_string(
        "savedmodel", None, "The unzipped release: saved_model.pb + variables/.", flag_values=fv
    )
    cli.define_workdir_flag(fv, "The workdir to write (must not hold a run yet).")
    config_utils.define_config_flag(fv, "Config of the release's network.", default="default")
    flags.mark_flags_as_required(["savedmodel", "workdir"], flag_values=fv)


def main(argv: Sequence[str], fv: flags.FlagValues = flags.FLAGS) -> None:
    cli.check_no_positional(argv)
    try:
        provenance = import_release(fv.savedmodel, fv.workdir, fv.config)
    except cli.ArgumentError as e:
        cli.fail(str(e))
    print(json.dumps({"workdir": fv.workdir, **provenance}))


def run() -> None:
    cli.run(main, define_flags, EXAMPLE)


if __name__ == "__main__":
    run()
