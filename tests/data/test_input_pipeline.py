"""marco_jax.data.input_pipeline on an in-memory source of small JPEGs: shapes, determinism, epochs,
per-host shards, exact evaluation coverage, mid-epoch iterator restore (with worker processes)."""

import io

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import REPO
from PIL import Image

from marco_jax.config_utils import load_config
from marco_jax.data import input_pipeline, preprocess

NUM_RECORDS = 23  # prime: no batch size or host count divides it
IMAGE_SIZE = 32


def _jpeg(rng: np.random.Generator) -> bytes:
    height, width = int(rng.integers(60, 151)), int(rng.integers(80, 201))
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def records() -> list[dict]:
    """Noise JPEGs of varied sizes; the label is the record's index so outputs can be traced."""
    rng = np.random.default_rng(0)
    return [
        {"image": _jpeg(rng), "label": i, "filename": f"drop_{i}.jpg", "source": "test"}
        for i in range(NUM_RECORDS)
    ]


@pytest.fixture
def config():
    """Pillow's preprocessing (configs/table3.py); the release's is tested on its own below."""
    config = load_config(REPO / "configs" / "table3.py")
    config.model.image_size = IMAGE_SIZE
    config.input.global_batch_size = 4
    config.input.eval_batch_size = 6
    config.input.num_workers = 0
    return config


def _take(config, records, n_batches, *, seed=0, process_index=0, process_count=1):
    dataset = input_pipeline.create_train_dataset(
        config, records, process_index=process_index, process_count=process_count, seed=seed
    )
    iterator = iter(dataset)
    batches = [next(iterator) for _ in range(n_batches)]
    iterator.close()
    return batches


def _labels(batches) -> list[int]:
    return [int(label) for batch in batches for label in batch["label"]]


def _assert_same_batches(expected, actual):
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual, strict=True):
        np.testing.assert_array_equal(want["image"], got["image"])
        np.testing.assert_array_equal(want["label"], got["label"])


def test_train_batches_have_the_contract_shapes_and_types(config, records):
    (batch,) = _take(config, records, 1)
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert batch["image"].dtype == np.uint8
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32


def test_train_pipeline_is_deterministic_for_a_seed(config, records):
    first = _take(config, records, 4, seed=5)
    _assert_same_batches(first, _take(config, records, 4, seed=5))
    other_seed = _take(config, records, 4, seed=6)
    # The seed drives the crops and flips only; the order is config.input.shuffle_seed's.
    assert _labels(other_seed) == _labels(first)
    assert not np.array_equal(other_seed[0]["image"], first[0]["image"])
    config.input.shuffle_seed = 1
    assert _labels(_take(config, records, 4, seed=5)) != _labels(first)


def test_every_epoch_is_a_new_permutation_of_the_records(config, records):
    # 12 batches of 4 = 48 examples: two full epochs of 23 and the start of a third.
    labels = _labels(_take(config, records, 12))
    first, second = labels[:NUM_RECORDS], labels[NUM_RECORDS : 2 * NUM_RECORDS]
    assert sorted(first) == list(range(NUM_RECORDS))
    assert sorted(second) == list(range(NUM_RECORDS))
    assert first != second and first != list(range(NUM_RECORDS))


def test_hosts_slice_the_single_process_global_batches(config, records):
    """Any number of hosts sees the same global batches, crops and flips included."""
    config.input.global_batch_size = 6  # 3 hosts x 2
    single = _take(config, records, 5)
    hosts = [_take(config, records, 5, process_index=p, process_count=3) for p in range(3)]
    for b, batch in enumerate(single):
        assert [host[b]["image"].shape[0] for host in hosts] == [2, 2, 2]
        for key in ("image", "label"):
            np.testing.assert_array_equal(
                np.concatenate([host[b][key] for host in hosts]), batch[key]
            )
    # 5 batches of 6 = 30 examples: the first epoch of 23 has every record once.
    assert sorted(_labels(single)[:NUM_RECORDS]) == list(range(NUM_RECORDS))


def test_batch_sizes_must_divide_among_processes(config, records):
    config.input.global_batch_size = 8
    with pytest.raises(ValueError, match="global_batch_size=8 is not divisible by the 3"):
        input_pipeline.create_train_dataset(
            config, records, process_index=0, process_count=3, seed=0
        )
    with pytest.raises(ValueError, match="process_index=2"):
        input_pipeline.create_train_dataset(
            config, records, process_index=2, process_count=2, seed=0
        )


def test_a_corrupt_record_is_reported_by_file_name(config, records):
    broken = [dict(r, image=b"garbage") if r["label"] == 3 else r for r in records]
    with pytest.raises(ValueError, match="drop_3.jpg"):
        _take(config, broken, 6)


def _restore_and_continue(config, records, save, restore):
    """Reads 3 batches, saves the state, reads 4 more (across the epoch end at example 23);
    a fresh iterator restored from the saved state must yield the same 4."""
    dataset = input_pipeline.create_train_dataset(
        config, records, process_index=0, process_count=1, seed=3
    )
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)
    saved = save(iterator)
    expected = [next(iterator) for _ in range(4)]
    iterator.close()
    restored = iter(dataset)
    restore(restored, saved)
    actual = [next(restored) for _ in range(4)]
    restored.close()
    _assert_same_batches(expected, actual)
    return expected


def test_restoring_the_iterator_state_mid_epoch_continues_identically(config, records):
    _restore_and_continue(
        config,
        records,
        save=lambda iterator: iterator.get_state(),
        restore=lambda iterator, state: iterator.set_state(state),
    )


def test_worker_processes_restore_through_orbax_and_match_the_in_process_stream(
    config, records, tmp_path
):
    """The training loop's path: grain's Orbax handler, with worker processes."""
    checkpointer = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
    directory = tmp_path / "data_iterator"

    def save(iterator):
        checkpointer.save(directory, args=grain.checkpoint.CheckpointSave(iterator))
        return directory

    def restore(iterator, path):
        checkpointer.restore(path, args=grain.checkpoint.CheckpointRestore(iterator))

    in_process = _take(config, records, 7, seed=3)[3:]
    config.input.num_workers = 2
    with_workers = _restore_and_continue(config, records, save, restore)
    _assert_same_batches(in_process, with_workers)


def _eval_batches(config, records, process_index, process_count):
    dataset = input_pipeline.create_eval_dataset(
        config, records, process_index=process_index, process_count=process_count
    )
    iterator = iter(dataset)
    batches = list(iterator)
    iterator.close()
    return batches


def test_eval_sees_every_record_once_across_processes_with_static_shapes(config, records):
    process_count = 3  # eval batch 6 -> 2 per process; 23 records -> 8, 8, 7 -> 4 batches each
    seen = []
    for process_index in range(process_count):
        batches = _eval_batches(config, records, process_index, process_count)
        assert len(batches) == 4
        for batch in batches:
            assert batch["image"].shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
            assert batch["image"].dtype == np.uint8
            assert batch["mask"].dtype == np.bool_ and batch["index"].dtype == np.int64
            for image, label, mask, index in zip(
                batch["image"], batch["label"], batch["mask"], batch["index"], strict=True
            ):
                if not mask:
                    assert index == -1 and not image.any()
                    continue
                seen.append(int(index))
                assert label == records[index]["label"]
                expected = preprocess.center_crop_and_resize(
                    preprocess.decode_image(records[index]["image"]),
                    IMAGE_SIZE,
                    config.input.central_fraction,
                )
                np.testing.assert_array_equal(image, expected)
    assert sorted(seen) == list(range(NUM_RECORDS))


def test_eval_is_deterministic_and_pads_only_the_end(config, records):
    first = _eval_batches(config, records, 0, 1)  # 23 records, batch 6 -> 4 batches, 1 padding
    again = _eval_batches(config, records, 0, 1)
    assert len(first) == 4
    for a, b in zip(first, again, strict=True):
        for key in ("image", "label", "mask", "index"):
            np.testing.assert_array_equal(a[key], b[key])
    masks = np.concatenate([batch["mask"] for batch in first])
    np.testing.assert_array_equal(masks, [True] * NUM_RECORDS + [False])


def test_the_tfds_source_feeds_worker_processes(config, tmp_path):
    """open_tfds_source on the smallest synthetic config: images stay encoded, and the source
    survives the pickling into grain's worker processes."""
    config.dataset.config_name = "synthetic_tiny"
    config.dataset.data_dir = str(tmp_path)
    source = input_pipeline.open_tfds_source(config, config.dataset.train_split)
    assert isinstance(source[0]["image"], bytes)
    config.input.num_workers = 2
    (batch,) = _take(config, source, 1)
    assert batch["image"].shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert set(batch["label"].tolist()) <= {0, 1, 2, 3}


def test_eval_with_the_release_preprocessing_gives_its_float_images(config, records):
    """configs/default.py's choice: fast-DCT decode, central square, TF1 bilinear, float [0, 1]."""
    config.input.resize_method, config.input.jpeg_dct = "tf1_bilinear", "fast"
    config.input.central_fraction = 1.0
    (batch, *_) = _eval_batches(config, records, 0, 1)
    assert batch["image"].dtype == np.float32
    for image, index in zip(batch["image"], batch["index"], strict=True):
        decoded = preprocess.decode_image(records[index]["image"], "fast")
        expected = preprocess.tf1_center_crop_and_resize(decoded, IMAGE_SIZE, 1.0)
        np.testing.assert_array_equal(image, expected)
