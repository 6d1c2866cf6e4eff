"""Serving stays light: importing the scoring command loads neither the training package, nor
clu, nor TensorFlow, nor even JAX (an export is scored without it; a checkpoint's network loads
the store and JAX when it is asked for)."""

import json
import subprocess
import sys

PROBE = """
import json, sys
import marco_jax.classify
print(json.dumps(sorted(sys.modules)))
"""

NEVER = ("marco_jax.training", "marco_jax.main", "clu", "tensorflow", "tensorflow_datasets")
NOT_AT_IMPORT = ("marco_jax.runs", "jax", "flax", "orbax", "matplotlib", "tfds_marco", "grain")


def _loaded_by(probe: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def _under(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


def test_classify_imports_neither_training_nor_clu_nor_tensorflow_nor_jax():
    loaded = _loaded_by(PROBE)
    assert "marco_jax.serving.engine" in loaded  # the probe did import the command
    assert _under(loaded, NEVER) == []
    assert _under(loaded, NOT_AT_IMPORT) == []
