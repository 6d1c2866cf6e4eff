"""Serving stays light: scoring loads neither the training code, nor clu, nor TensorFlow, and the
export package loads no export runtime until a format is written or opened."""

import json
import subprocess
import sys

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""

TRAINING = (
    "marco_jax.training.train",
    "marco_jax.main",
    "marco_jax.training.optim",
    "marco_jax.runs.lock",
)


def _loaded(module: str) -> set[str]:
    """The modules that importing `module` in a fresh interpreter loads."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, module], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_classify_imports_neither_training_nor_clu_nor_tensorflow():
    loaded = _loaded("marco_jax.classify")
    roots = {name.split(".")[0] for name in loaded}
    assert not [m for m in loaded if m.startswith(TRAINING)]
    assert "clu" not in roots
    assert "tensorflow" not in roots
    assert "tensorflow_datasets" not in roots
    assert "tfds_marco" not in roots


def test_export_package_imports_no_runtime_nor_training():
    for module in ("marco_jax.serving.export", "marco_jax.serving.export.runtime"):
        loaded = _loaded(module)
        roots = {name.split(".")[0] for name in loaded}
        assert not [m for m in loaded if m.startswith("marco_jax.training")], module
        assert not roots & {"tensorflow", "onnx", "onnxruntime", "clu"}, module
