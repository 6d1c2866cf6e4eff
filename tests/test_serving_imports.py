"""Serving stays light: scoring loads neither the training code, nor clu, nor TensorFlow."""

import json
import subprocess
import sys

PROBE = """
import json, sys
import marco_jax.classify
print(json.dumps(sorted(sys.modules)))
"""

TRAINING = (
    "marco_jax.training.train",
    "marco_jax.main",
    "marco_jax.training.optim",
    "marco_jax.runs.lock",
)


def test_classify_imports_neither_training_nor_clu_nor_tensorflow():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    loaded = set(json.loads(out.splitlines()[-1]))
    roots = {name.split(".")[0] for name in loaded}
    assert not [m for m in loaded if m.startswith(TRAINING)]
    assert "clu" not in roots
    assert "tensorflow" not in roots
    assert "tensorflow_datasets" not in roots
    assert "tfds_marco" not in roots
