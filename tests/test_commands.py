"""What every command shares: --help exits 0, a wrong path or value is one line and exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO

COMMANDS = ("main", "evaluate", "classify", "export", "relabel", "summary", "import_release")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO, timeout=300
    )


@pytest.mark.slow  # seven interpreters importing JAX (and some TensorFlow): ~1-2 min
@pytest.mark.parametrize("command", COMMANDS)
def test_help_exits_0_and_lists_flags(command):
    result = _run(f"marco_jax.{command}", "--help")
    assert result.returncode == 0, result.stderr[-1000:]
    assert "--" in result.stdout + result.stderr


def test_export_of_a_missing_workdir_is_one_line_and_exit_2(tmp_path):
    result = _run("marco_jax.export", "--workdir", str(tmp_path / "nope"), "--format", "onnx")
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "nope" in line


def test_export_with_a_bad_checkpoint_selector_is_exit_2(tmp_path):
    result = _run(
        "marco_jax.export", "--workdir", str(tmp_path), "--format", "onnx", "--checkpoint", "bset"
    )
    assert result.returncode == 2
    assert "bset" in result.stderr
