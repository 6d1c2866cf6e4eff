"""The training loop's input-wait measurement and its TensorFlow-free scalar writer."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image
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


def test_without_tensorflow_scalars_and_images_reach_event_files_and_no_clu_hooks(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(monitoring, "_has_tensorflow", lambda: False)
    writer = monitoring.create_writer(str(tmp_path), just_logging=False)
    writer.write_hparams({"lr": 0.1})
    writer.write_scalars(3, {"train/loss": 1.5, "train/input_wait_share": 0.25})
    picture = np.zeros((1, 5, 7, 3), np.uint8)
    picture[0, 2, 3] = (255, 128, 0)
    writer.write_images(3, {"eval/confusion_matrix": picture})
    writer.flush()
    events = [
        (event.step, value)
        for path in tmp_path.glob("events.out.tfevents.*")
        for event in EventFileLoader(str(path)).Load()
        for value in event.summary.value
    ]
    # The loader migrates both to tensors, as TensorBoard reads them: an image becomes the
    # strings [width, height, PNG].
    tensors = {(step, value.tag): value.tensor for step, value in events}
    image = tensors.pop((3, "eval/confusion_matrix"))
    values = {key: float(tensor_util.make_ndarray(tensor)) for key, tensor in tensors.items()}
    assert values == {(3, "train/loss"): 1.5, (3, "train/input_wait_share"): 0.25}
    decoded = np.asarray(Image.open(io.BytesIO(image.string_val[2])))
    np.testing.assert_array_equal(decoded, picture[0])
    config = type("C", (), {"profile_steps": 5})()
    assert monitoring.profiler_hooks(config, str(tmp_path), is_chief=True) == []


@pytest.mark.parametrize("just_logging", [True, False])
def test_with_tensorflow_the_writer_is_clus(tmp_path, just_logging):
    pytest.importorskip("tensorflow")
    writer = monitoring.create_writer(str(tmp_path), just_logging=just_logging)
    assert type(writer).__module__.startswith("clu.")
