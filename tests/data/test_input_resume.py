"""The train stream resumed at a batch (`start_batch`, what a resumed run passes: its step) is
the uninterrupted stream's tail, with any number of grain workers before and after
(changing input.num_workers between restarts once broke the grain iterator state)."""

import io

import numpy as np
from helpers import REPO
from PIL import Image

from marco_jax.config_utils import load_config
from marco_jax.data import input_pipeline


def _records(n: int = 13) -> list[dict]:
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(buffer, "JPEG")
        records.append({"image": buffer.getvalue(), "label": i, "filename": f"{i}.jpg"})
    return records


def _batches(records, num_workers: int, start_batch: int, count: int) -> list[dict]:
    config = load_config(REPO / "configs" / "ci.py")
    config.model.image_size = 32
    config.input.global_batch_size = 4
    config.input.num_workers = num_workers
    dataset = input_pipeline.create_train_dataset(
        config, records, process_index=0, process_count=1, seed=0, start_batch=start_batch
    )
    iterator = iter(dataset)
    batches = [next(iterator) for _ in range(count)]
    if hasattr(iterator, "close"):
        iterator.close()
    return batches


def test_resumed_stream_is_the_tail_whatever_the_worker_count():
    records = _records()
    reference = _batches(records, num_workers=0, start_batch=0, count=7)  # crosses 2 epochs
    for workers in (0, 2):
        resumed = _batches(records, num_workers=workers, start_batch=4, count=3)
        for expected, actual in zip(reference[4:], resumed, strict=True):
            np.testing.assert_array_equal(expected["label"], actual["label"])
            np.testing.assert_array_equal(expected["image"], actual["image"])
