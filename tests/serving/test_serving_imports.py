"""Serving stays light: importing the scoring command loads neither the training package, nor
clu, nor TensorFlow, nor even JAX (an export is scored without it; a checkpoint's network loads
the store and JAX when it is asked for), and the export package loads no export runtime until a
format is written or opened."""

import json
import subprocess
import sys

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""

NEVER = ("marco_jax.training", "marco_jax.main", "clu", "tensorflow", "tensorflow_datasets")
NOT_AT_IMPORT = ("marco_jax.runs", "jax", "flax", "orbax", "matplotlib", "tfds_marco", "grain")
RUNTIMES = ("tensorflow", "onnx", "onnxruntime")


def _loaded(module: str) -> set[str]:
    """The modules that importing `module` in a fresh interpreter loads."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, module], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def _under(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


def test_classify_imports_neither_training_nor_clu_nor_tensorflow_nor_jax():
    loaded = _loaded("marco_jax.classify")
    assert "marco_jax.serving.engine" in loaded  # the probe did import the command
    assert _under(loaded, NEVER) == []
    assert _under(loaded, NOT_AT_IMPORT) == []


def test_export_package_imports_no_runtime_nor_training():
    for module in ("marco_jax.serving.export", "marco_jax.serving.export.runtime"):
        loaded = _loaded(module)
        assert _under(loaded, NEVER + RUNTIMES) == [], module
