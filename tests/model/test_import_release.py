"""`import_release`: the release's values by name onto our network, and its refusals.

The checkpoints here are written straight from the graph's variable list (no graph is run), so
these tests are fast; test_release.py runs the real graph.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO

from marco_jax.runs import store

tf = pytest.importorskip("tensorflow")
import release_graph  # noqa: E402  (needs TensorFlow)

pytestmark = pytest.mark.slow  # each import is a process loading TF and JAX: ~3 min on 2 cores


@pytest.fixture(scope="module")
def values() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    drawn = {
        name: rng.normal(size=shape).astype(np.float32)
        for name, shape in release_graph.variable_shapes().items()
    }
    drawn["global_step"] = np.int64(1234)
    return drawn


def _import(source, workdir) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "marco_jax.import_release", "--savedmodel", str(source),
         "--workdir", str(workdir)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip


def test_import_writes_a_workdir_with_the_values_as_raw_and_ema_weights(values, tmp_path):
    source = release_graph.write_release(tmp_path / "release", values)
    result = _import(source, tmp_path / "run")
    assert result.returncode == 0, result.stderr
    loaded = store.load(str(tmp_path / "run"), "latest")
    model, step = loaded.model, loaded.step
    assert step == 0
    layer = model.Mixed_6a.Branch_0.Conv2d_1a_1x1
    name = "Inception/Mixed_6a/Branch_0/Conv2d_1a_1x1"
    np.testing.assert_array_equal(layer.conv.kernel[...], values[f"{name}/weights"])
    np.testing.assert_array_equal(layer.bn.var[...], values[f"{name}/BatchNorm/moving_variance"])
    # Our logits are (crystals, precipitate, clear, other); the release's (Clear, Crystals,
    # Other, Precipitate).
    kernel = values["Inception/Logits/Conv2d_1c_1x1/weights"]
    np.testing.assert_array_equal(model.Logits.kernel[...], kernel[..., [1, 3, 0, 2]])
    raw = store.load(str(tmp_path / "run"), "latest", use_ema=False).model
    np.testing.assert_array_equal(raw.Logits.bias[...], model.Logits.bias[...])
    assert '"global_step": 1234' in (tmp_path / "run" / "release.json").read_text()
    again = _import(source, tmp_path / "run")
    assert again.returncode == 2 and "already holds a run" in again.stderr


def test_a_directory_that_is_not_the_release_is_refused_naming_the_file(tmp_path):
    result = _import(tmp_path, tmp_path / "run")
    assert result.returncode == 2
    assert "saved_model.pb is missing" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_missing_variable_is_named(values, tmp_path):
    name = "Inception/Mixed_7c/Branch_3/Conv2d_0b_1x1/BatchNorm/beta"
    partial = {k: v for k, v in values.items() if k != name}
    result = _import(release_graph.write_release(tmp_path / "release", partial), tmp_path / "run")
    assert result.returncode == 2
    assert f"no variable {name}" in result.stderr
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_variable_of_another_shape_is_named_with_both_shapes(values, tmp_path):
    name = "Inception/Mixed_6a/Branch_0/Conv2d_1a_1x1/weights"
    wrong = {**values, name: np.zeros((3, 3, 288, 384), np.float32)}  # Table 3's reading
    result = _import(release_graph.write_release(tmp_path / "release", wrong), tmp_path / "run")
    assert result.returncode == 2
    assert f"{name} has shape (3, 3, 288, 384) in the release, (3, 3, 288, 256)" in result.stderr
