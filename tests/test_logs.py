"""The console of a command shows its progress, its own lines and its outcome; the log file in
the workdir keeps everything, library output included (`marco_jax.logs`)."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, invoke_command

from marco_jax import logs
from marco_jax.evaluation import evaluator

# What libraries print: absl's record prefix ("I1204 17:26:28.822402 1405 file.py:12]"),
# TensorFlow's native banners, Orbax, clu's parameter table, the resource tracker.
LIBRARY = re.compile(
    r"^[IWE]\d{4} \d\d:|oneDNN|InitializeLog|Orbax|orbax|checkpoint_manager|^\| |^\+-|"
    r"leaked shared_memory|could not be restored|read only"
)


def _lines(text: str) -> str:
    """The console as a terminal leaves it: a bar's redraws ("\r") each on a line of its own."""
    return "\n".join(re.split(r"[\r\n]+", text))


def _library_lines(text: str) -> list[str]:
    return [line for line in _lines(text).splitlines() if LIBRARY.search(line)]


def test_training_console_shows_progress_metrics_and_summary_and_the_log_keeps_the_rest(
    trained_run,
):
    workdir, console = trained_run
    console = _lines(console)
    assert _library_lines(console) == []
    assert re.search(
        r"^marco_inception_v3: 97,836 parameters, 9\.\d+ MFLOPs per 151 px image; "
        r"training on 1 cpu device\.$",
        console,
        re.M,
    )
    assert re.search(r"train: 100%\|.*\| 6/6 ", console)  # the bar, with its rate and ETA
    for step in (2, 4, 6):  # config.log_every_steps
        assert re.search(rf"^step {step}/6: loss \d\.\d+, accuracy", console, re.M)
    for step in (3, 6):  # config.eval_every_steps
        assert re.search(rf"^eval at step {step}: accuracy \d\.\d+, loss \d\.\d+", console, re.M)
    assert f"  checkpoints  {workdir / 'checkpoints'}" in console
    assert f"  TensorBoard  tensorboard --logdir {workdir}" in console
    assert f"next: python -m marco_jax.evaluate --workdir {workdir}" in console

    log = (workdir / "logs" / "train.log").read_text()
    assert "checkpoint_manager.py" in log  # Orbax's INFO
    assert "| Conv2d_1a_3x3/conv/kernel" in log  # clu's parameter table
    assert re.search(r"\] step 6/6: loss", log) and re.search(r"\] eval at step 6:", log)
    assert "next: python -m marco_jax.evaluate" in log


def test_relaunch_keeps_native_banners_and_library_lines_off_the_console(trained_workdir, tmp_path):
    """A real process: TensorFlow's C++ banners and the worker processes' output go to the log
    file, and the shared memory of grain's batches is released before exit."""
    workdir = tmp_path / "copy"
    shutil.copytree(trained_workdir, workdir)
    command = [sys.executable, "-m", "marco_jax.main", "--config=ci", f"--workdir={workdir}"]
    data_dir = json.loads((workdir / "config.json").read_text())["dataset"]["data_dir"]
    command += [f"--config.dataset.data_dir={data_dir}", "--config.input.num_workers=1"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _library_lines(result.stdout + result.stderr) == []
    assert result.stdout.startswith("finished at step 6: accuracy")
    assert "input.num_workers 0 -> 1" in result.stderr  # the project's own warning stays
    log = (workdir / "logs" / "train.log").read_text()
    assert "oneDNN custom operations are on" in log  # native, written to descriptor 2
    # The resource tracker, a process started with descriptor 2 on the log, reported 4 here
    # (the last evaluation batch's arrays) before `input_pipeline._release_shared_memory`.
    assert "leaked shared_memory" not in log
    assert len(re.findall(r"^==== \d{4}-", log, re.M)) == 2  # a header line per run


def test_evaluate_prints_its_accuracy_and_sends_orbax_warnings_to_the_log(
    trained_workdir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "report"
    code, lines, out_lines = invoke_command(
        "evaluate", [f"--workdir={trained_workdir}", f"--out={out}"], monkeypatch, capsys
    )
    assert code == 0
    console = "\n".join(lines)
    assert re.search(r"^predict: 100%\|.*\| 8/8 ", console, re.M)
    assert re.search(
        r"^accuracy \d\.\d{4} on 8 images of test \(step 6, EMA weights\)$", console, re.M
    )
    assert out_lines == [f"{out / 'report.html'}"]
    assert _library_lines(console) == []
    log = (trained_workdir / "logs" / "evaluate.log").read_text()
    assert "Given directory is read only" in log and "could not be restored" in log


def test_verbosity_brings_library_records_back_to_the_console(tmp_path):
    console = io.StringIO()
    library = logging.getLogger("orbax")
    for verbosity, run in ((None, "quiet"), (0, "verbose")):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "stderr", console)
            with logs.CommandLog("probe", tmp_path, verbosity):
                library.warning("harmless, %s", run)
                logging.getLogger("marco_jax.probe").info("ours, %s", run)
    text = console.getvalue()
    assert "harmless, quiet" not in text and "harmless, verbose" in text
    assert "ours, quiet" in text and "ours, verbose" in text
    log = (tmp_path / "logs" / "probe.log").read_text()
    for line in ("harmless, quiet", "harmless, verbose", "ours, quiet", "ours, verbose"):
        assert line in log


def test_eval_loss_is_the_mean_cross_entropy():
    probs = np.array([[0.5, 0.25, 0.125, 0.125], [0.1, 0.2, 0.3, 0.4]], np.float32)
    predictions = evaluator.Predictions(probs, np.array([0, 3]), {})
    assert evaluator.cross_entropy(predictions) == pytest.approx(-(np.log(0.5) + np.log(0.4)) / 2)


def test_tensorboard_groups_train_and_eval_and_holds_the_confusion_matrix(trained_workdir):
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(trained_workdir), size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    assert {"train/loss", "train/accuracy", "train/learning_rate", "eval/accuracy"} <= tags
    assert {"eval/loss", "eval/accuracy_crystals", "eval/confusion_matrix"} <= tags
    assert not [tag for tag in tags if "/" not in tag and tag != "hparams"], tags
    assert [event.step for event in events.Tensors("eval/confusion_matrix")] == [3, 6]
