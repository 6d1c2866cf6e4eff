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
    """The MARCO variant at its smallest: every block present, 0.1 depth, 151 px."""
    config = load_config("default")
    config.model.depth_multiplier = 0.1
    config.model.min_depth = 8
    config.model.image_size = 151
    return config
