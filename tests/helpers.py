"""What the tests share besides fixtures: the checkout's paths and configs loaded the way
`--config` loads them."""

from __future__ import annotations

import pathlib
import sys

import ml_collections

from marco_jax import config_utils

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def load_config(name: str) -> ml_collections.ConfigDict:
    """configs/<name>.py's get_config(), as `--config configs/<name>.py` gives it."""
    return config_utils.load_config(REPO / "configs" / f"{name}.py")


def ci_config(data_dir: pathlib.Path) -> ml_collections.ConfigDict:
    """configs/ci.py reading and writing its dataset under `data_dir`."""
    config = load_config("ci")
    config.dataset.data_dir = str(data_dir)
    return config


def main_command(workdir, data_dir, *overrides: str) -> list[str]:
    """`python -m marco_jax.main` on configs/ci.py with its dataset under `data_dir`."""
    return [
        sys.executable,
        "-m",
        "marco_jax.main",
        f"--config={REPO / 'configs/ci.py'}",
        f"--workdir={workdir}",
        f"--config.dataset.data_dir={data_dir}",
        *overrides,
    ]
