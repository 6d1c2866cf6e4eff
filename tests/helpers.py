"""What the tests share besides fixtures: the checkout's paths, configs loaded the way
`--config` loads them, and child processes that never outlive their test."""

from __future__ import annotations

import contextlib
import importlib
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence

import ml_collections
from absl import flags

from marco_jax import cli, config_utils

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


def invoke_command(
    command: str, args: list, monkeypatch, capsys
) -> tuple[int, list[str], list[str]]:
    """`python -m marco_jax.<command> ARGS` in this process, as `cli.run` runs it (its flag
    parsing, its console and log file): (exit code, stderr lines, stdout lines)."""
    module = importlib.import_module(f"marco_jax.{command}")
    argv = [f"marco_jax.{command}", *map(str, args)]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv
    fv = flags.FlagValues()
    module.define_flags(fv)
    try:
        code = cli.run_parsed(module.main, cli.parse_flags(fv, argv), fv) or 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines(), captured.out.strip().splitlines()


def classify_main(*args) -> int:
    """`classify.main` on fresh flags parsed from ARGS, in this process: its exit code (a
    one-line refusal exits through SystemExit)."""
    from marco_jax import classify

    fv = flags.FlagValues()
    classify.define_flags(fv)
    try:
        return classify.main(fv(["classify", *map(str, args)]), fv)
    except SystemExit as e:
        return e.code


@contextlib.contextmanager
def started(command: Sequence[str], **popen_kwargs) -> Iterator[subprocess.Popen]:
    """`subprocess.Popen(command)` in a session of its own, killed with all its children when
    the block ends, a failed assertion included: a test that gives up on a 100,000-step trainer
    must not leave it training beside the rest of the suite."""
    process = subprocess.Popen(command, start_new_session=True, **popen_kwargs)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def subprocess_env(devices: int = 1, **extra: str) -> dict[str, str]:
    """The environment of a command a test starts: CPU only, `devices` simulated devices, and the
    session's compilation cache (conftest.pytest_configure), inherited from os.environ."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env | extra
