"""The tests' fixtures: configs shrunk for 2 CPU cores, one dataset folder and one trained
workdir per session, and one JAX compilation cache for the session. Plain helpers live in
helpers.py."""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import shutil
import sys
import tempfile

import ml_collections
import pytest
from absl import flags
from helpers import load_config

_CACHE_VARIABLE = "JAX_COMPILATION_CACHE_DIR"
_created_cache: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    """One persistent compilation cache for the whole session: the xdist workers and every
    command a test starts (`python -m marco_jax.main`, ...) inherit the variable, so the ci
    model's train and eval steps compile once instead of once per process (measured: a ci run's
    CPU time 80 s -> 33 s with the cache warm). It starts empty, so no test depends on an earlier
    session; a user's own cache variable is kept."""
    global _created_cache
    if _CACHE_VARIABLE not in os.environ:  # xdist workers inherit the controller's
        _created_cache = tempfile.mkdtemp(prefix="marco_jax_test_compilation_cache_")
        os.environ[_CACHE_VARIABLE] = _created_cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    import jax  # noqa: PLC0415 - after the variables, which jax reads when imported

    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_VARIABLE])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _created_cache:
        shutil.rmtree(_created_cache, ignore_errors=True)


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
