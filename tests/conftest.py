"""Shared test helpers: configs loaded the way `--config` loads them, shrunk for 2 CPU cores."""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def load_config(name: str) -> ml_collections.ConfigDict:
    """Loads configs/<name>.py and calls its get_config(), as `--config configs/<name>.py` does."""
    spec = importlib.util.spec_from_file_location(
        f"configs.{name}", REPO / "configs" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture
def tiny_config() -> ml_collections.ConfigDict:
    """The MARCO variant at its smallest: every block present, 0.1 depth, 151 px."""
    config = load_config("default")
    config.model.depth_multiplier = 0.1
    config.model.min_depth = 8
    config.model.image_size = 151
    return config
