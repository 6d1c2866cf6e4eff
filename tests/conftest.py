"""Shared test helpers: configs loaded the way `--config` loads them, shrunk for 2 CPU cores."""

from __future__ import annotations

import pathlib

import ml_collections
import pytest

from marco_jax import config_utils

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def load_config(name: str) -> ml_collections.ConfigDict:
    """configs/<name>.py's get_config(), as `--config configs/<name>.py` gives it."""
    return config_utils.load_config(REPO / "configs" / f"{name}.py")


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
    """One TFDS data_dir per test session, so generated datasets are built once."""
    return tmp_path_factory.mktemp("tensorflow_datasets")


def ci_config(data_dir: pathlib.Path) -> ml_collections.ConfigDict:
    """configs/ci.py reading and writing its dataset under `data_dir`."""
    config = load_config("ci")
    config.dataset.data_dir = str(data_dir)
    return config


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, tfds_data_dir) -> pathlib.Path:
    """A workdir holding a finished configs/ci.py run (checkpoints, config.json, eval JSON)."""
    from marco_jax import train

    workdir = tmp_path_factory.mktemp("trained")
    train.train_and_evaluate(ci_config(tfds_data_dir), str(workdir))
    return workdir
