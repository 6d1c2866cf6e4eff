"""bench/train_step.py's parts that need no compile of the network: the trace summary and the
candidate speed-ups (every one must be a valid config and XLA options this jax accepts)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from helpers import REPO, load_config

from marco_jax.training import config_checks


def _load(name: str):
    """bench/<name>.py (bench/ is no package), registered as bench_<name>."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


trace_summary = _load("trace_summary")
step_variants = _load("step_variants")


def _write_trace(path, events):
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)


def test_top_ops_sums_the_device_tracks_by_hlo_op(tmp_path):
    gpu, host = 1, 2
    kernel = {"ph": "X", "pid": gpu, "tid": 7}
    _write_trace(
        tmp_path / "t.json.gz",
        [
            {"ph": "M", "pid": gpu, "name": "process_name", "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "pid": host, "name": "process_name", "args": {"name": "/host:CPU"}},
            kernel | {"ts": 0, "dur": 30, "name": "sm90_fprop", "args": {"hlo_op": "conv.1"}},
            kernel | {"ts": 30, "dur": 30, "name": "sm90_fprop", "args": {"hlo_op": "conv.1"}},
            kernel | {"ts": 80, "dur": 20, "name": "loop_fusion", "args": {"hlo_op": "fusion.2"}},
            {"ph": "X", "pid": host, "tid": 1, "ts": 0, "dur": 500, "name": "PjitFunction"},
        ],
    )
    hlo = trace_summary.hlo_lines(
        "ENTRY %main {\n  %conv.1 = bf16[8,35,35,64]{3,2,1,0} custom-call(%p), "
        'metadata={op_name="jit(train_step)/conv_general_dilated"}\n}'
    )
    summary = trace_summary.top_ops(tmp_path / "t.json.gz", 5, hlo)
    assert summary["tracks"] == ["/device:GPU:0"]
    assert summary["device_busy_ms"] == pytest.approx(0.08)
    assert summary["device_busy_share_of_span"] == pytest.approx(0.8)  # idle 60..80 of 0..100
    first, second = summary["top_ops"]
    assert (first["op"], first["calls"], first["share"]) == ("conv.1", 2, 0.75)
    assert "bf16[8,35,35,64]" in first["hlo"] and "conv_general_dilated" in first["hlo"]
    assert (second["op"], second["share"]) == ("fusion.2", 0.25)
    assert summary["categories_share"] == {"convolution": 0.75, "fusion/other": 0.25}


def test_top_ops_without_a_device_track_uses_the_hosts_op_events(tmp_path):
    op = {"ph": "X", "pid": 1, "tid": 3, "args": {"hlo_op": "reduce_fusion.4"}}
    _write_trace(
        tmp_path / "t.json.gz",
        [
            op | {"ts": 0, "dur": 10, "name": "reduce_fusion.4"},
            {"ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 99, "name": "PjitFunction"},
        ],
    )
    summary = trace_summary.top_ops(tmp_path / "t.json.gz", 5, {})
    assert [o["op"] for o in summary["top_ops"]] == ["reduce_fusion.4"]
    assert summary["categories_share"] == {"reduction": 1.0}


@pytest.mark.parametrize("variant", step_variants.VARIANTS, ids=lambda v: v.name)
def test_each_variant_is_a_valid_config_and_xla_options_jax_accepts(variant):
    config = load_config("default")
    for field in variant.config:  # a misspelt field would silently add a new one
        node = config
        for key in field.split("."):
            assert key in node, f"{variant.name}: config has no {field}"
            node = node[key]
    step_variants.apply(config, variant)
    config_checks.validate(config)
    lowered = jax.jit(lambda x: x * 2).lower(jnp.ones(3))
    lowered.compile(compiler_options=variant.xla or None)  # an unknown option raises


def test_the_bench_imports_nothing_a_bare_accelerator_machine_lacks():
    """bench/train_step.py must run with only jax, flax, optax and ml_collections installed."""
    lacking = ["grain", "tensorflow_datasets", "clu", "tensorflow", "array_record", "simplejpeg"]
    lacking += ["orbax", "PIL", "tifffile"]
    code = f"""
import importlib.abc, sys
class Lacking(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {lacking!r}:
            raise ImportError(f"{{name}} is not installed here")
sys.meta_path.insert(0, Lacking())
sys.path.insert(0, "bench")
import train_step
"""
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)
