"""bench/device_check.sh --dry-run: every stage of the device run on the CPU, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO


@pytest.mark.slow  # CPU compiles of the network (bench, eval; training hits the cache): ~75 s
def test_the_dry_run_passes_every_stage(tmp_path):
    env = os.environ | {"OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    env["TMPDIR"] = str(tmp_path)
    run = subprocess.run(
        ["bash", str(REPO / "bench/device_check.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [
        json.loads(line) for line in (tmp_path / "out/device_check.jsonl").read_text().splitlines()
    ]
    assert lines == [json.loads(line) for line in run.stdout.splitlines()]  # stdout is the same
    by_stage = {line.get("stage", line.get("benchmark")): line for line in lines}
    assert not [
        line for line in lines if "error" in line or "exit_code" in line and line["exit_code"]
    ]
    assert by_stage["env"]["mode"] == "dry"
    assert "wheels" in by_stage  # installed, or skipped with the reason
    assert by_stage["imports"]["ok"]
    step = by_stage["train_step"]
    assert step["variant"] == "baseline" and step["loss_finite"] and step["images_per_second"] > 0
    profile = by_stage["train_step_profile"]
    assert profile["top_ops"] and 0 < profile["device_busy_share_of_span"] <= 1
    assert by_stage["data"]["prescale"] == "jpeg" and by_stage["data"]["train_images"] == 16
    assert by_stage["e2e"]["exit_code"] == 0
    e2e = by_stage["e2e_summary"]
    assert e2e["steady_windows"] == 2 and e2e["images_per_second"] > 0
    assert 0 <= e2e["input_wait_share"] <= 1 and e2e["bound"] in ("input", "step")
    assert e2e["step_only_images_per_second"] == step["images_per_second"]
    assert by_stage["train_step_summary"]["rows"][0]["img_s"] == step["images_per_second"]
    assert lines[-1]["stage"] == "done"
    assert not list(tmp_path.glob("marco_device_check.*"))  # its scratch folder is removed
