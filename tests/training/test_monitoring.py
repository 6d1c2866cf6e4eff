"""The training loop's input-wait measurement and its TensorFlow-free scalar writer."""

from __future__ import annotations

import time

import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.util import tensor_util

from marco_jax.training import monitoring


def test_input_wait_is_the_share_of_time_blocked_on_the_next_batch():
    def slow_batches():
        while True:
            time.sleep(0.06)
            yield "batch"

    wait, batches = monitoring.InputWait(), slow_batches()
    for _ in range(4):
        assert wait.next(batches) == "batch"
        time.sleep(0.02)  # the step, dispatched
    taken = wait.take(steps=4)
    assert 0.6 < taken["input_wait_share"] < 0.9  # 60 ms of every ~80
    assert 55 < taken["input_wait_ms"] < 120
    time.sleep(0.02)
    assert wait.take(steps=1)["input_wait_share"] < 0.2  # restarted: nothing waited since


def test_without_tensorflow_scalars_reach_event_files_and_no_clu_hooks(tmp_path, monkeypatch):
    monkeypatch.setattr(monitoring, "_has_tensorflow", lambda: False)
    writer = monitoring.create_writer(str(tmp_path), just_logging=False)
    writer.write_hparams({"lr": 0.1})
    writer.write_scalars(3, {"train_loss": 1.5, "input_wait_share": 0.25})
    writer.flush()
    values = {  # the loader migrates simple values to tensors, as TensorBoard reads them
        (event.step, value.tag): float(tensor_util.make_ndarray(value.tensor))
        for path in tmp_path.glob("events.out.tfevents.*")
        for event in EventFileLoader(str(path)).Load()
        for value in event.summary.value
    }
    assert values == {(3, "train_loss"): 1.5, (3, "input_wait_share"): 0.25}
    config = type("C", (), {"profile_steps": 5})()
    assert monitoring.progress_hooks(config, 10, writer, str(tmp_path), True) == []


@pytest.mark.parametrize("just_logging", [True, False])
def test_with_tensorflow_the_writer_is_clus(tmp_path, just_logging):
    pytest.importorskip("tensorflow")
    writer = monitoring.create_writer(str(tmp_path), just_logging=just_logging)
    assert type(writer).__module__.startswith("clu.")
