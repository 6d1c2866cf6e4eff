"""The tests' fixtures: configs shrunk for 2 CPU cores, one dataset folder and one trained
workdir per session. Plain helpers live in helpers.py."""

from __future__ import annotations

import pathlib

import ml_collections
import pytest
from helpers import ci_config, load_config


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
def trained_workdir(tmp_path_factory, tfds_data_dir) -> pathlib.Path:
    """A workdir holding a finished configs/ci.py run (checkpoints, config.json, eval JSON)."""
    from marco_jax.training import train

    workdir = tmp_path_factory.mktemp("trained")
    train.train_and_evaluate(ci_config(tfds_data_dir), str(workdir))
    return workdir
