"""The tests' fixtures: configs shrunk for 2 CPU cores, one dataset folder and one trained
workdir per session. Plain helpers live in helpers.py."""

from __future__ import annotations

import contextlib
import io
import pathlib
import sys

import ml_collections
import pytest
from absl import flags
from helpers import load_config


@pytest.fixture
def tiny_config() -> ml_collections.ConfigDict:
    """The MARCO variant (Table 3 reading) at its smallest: every block, 0.1 depth, 151 px."""
    config = load_config("table3")
    config.model.depth_multiplier = 0.1
    config.model.min_depth = 8
    config.model.image_size = 151
    return config


@pytest.fixture(scope="session")
def tfds_data_dir(tmp_path_factory) -> pathlib.Path:
    """One TFDS data_dir per test session, so generated datasets are built once; configs/ci.py's
    dataset is built already, so that the processes a test starts never race to build it."""
    from tfds_marco.marco import build

    data_dir = tmp_path_factory.mktemp("tensorflow_datasets")
    build(load_config("ci").dataset.config_name, data_dir=str(data_dir))
    return data_dir


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tfds_data_dir) -> tuple[pathlib.Path, str]:
    """A finished configs/ci.py run, made the way `python -m marco_jax.main` makes it (its flag
    parsing, its console and log file; in this process): the workdir (checkpoints, config.json,
    eval JSON, logs/train.log) and what the console showed (stdout and stderr together)."""
    from marco_jax import cli, main

    workdir = tmp_path_factory.mktemp("trained") / "run"  # created by the run, as a new one is
    argv = ["marco_jax.main", "--config=ci", f"--workdir={workdir}"]
    argv.append(f"--config.dataset.data_dir={tfds_data_dir}")
    console = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv
        fv = flags.FlagValues()
        main.define_flags(fv)
        parsed = cli.parse_flags(fv, argv)
        with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
            cli.run_parsed(main.main, parsed, fv)
    return workdir, console.getvalue()


@pytest.fixture(scope="session")
def trained_workdir(trained_run) -> pathlib.Path:
    """A workdir holding a finished configs/ci.py run (checkpoints, config.json, eval JSON)."""
    return trained_run[0]
