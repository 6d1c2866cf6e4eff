"""grain input pipelines: sharded, shuffled, augmented uint8 batches for training and evaluation.

The host does only what needs the encoded image: decode, the random patch at the evaluation
scale, flips (`marco_jax.data.preprocess`). The photometric distortions run on device inside the
jitted step (`marco_jax.data.augment`), so batches leave the host as uint8 (4x less to transfer
than float32).

Determinism: all hosts walk the same global stream (grain's global index shuffle, re-drawn every
epoch) and each takes its own slice of every global batch; every random choice of a record comes
from a generator seeded by (seed, position in that global stream). So the global batch, crops
and flips included, is the same whatever the number of hosts and worker processes, and a run on
N hosts trains exactly as on one. Batches are formed before the work is split among worker
processes, and the iterator state (`get_state()`/`set_state()`, or grain.checkpoint with Orbax)
restores mid-epoch to exactly the same stream.
"""

import functools
import math
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import grain
import ml_collections
import numpy as np
from absl import flags

from marco_jax.data import parallelism, preprocess, prescale


def _local_batch_size(batch_size: int, process_count: int, field: str) -> int:
    if batch_size % process_count:
        raise ValueError(
            f"config.input.{field}={batch_size} is not divisible by the {process_count} "
            "processes; choose a multiple of the process count."
        )
    return batch_size // process_count


def _check_shard(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must lie in [0, {process_count}).")


def record_text(record: dict[str, Any], field: str, default: str = "") -> str:
    """A text feature of a record as str (TFDS gives bytes); `default` where it has none."""
    value = record.get(field, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode_record(record: dict[str, Any], jpeg_dct: str) -> preprocess.ImageLike:
    """Decodes record["image"], naming the record's file in the error if it is not an image."""
    try:
        return preprocess.decode(record["image"], jpeg_dct)
    except ValueError as e:
        name = record_text(record, "filename", "<no filename>")
        source = record_text(record, "source", "?")
        raise ValueError(f"Record {name!r} (source {source!r}): {e}") from e


def _train_example(
    item: tuple[int, dict[str, Any]], seed: int, jpeg_dct: str, **transform_kwargs: Any
) -> dict[str, np.ndarray]:
    position, record = item
    rng = np.random.default_rng([seed, position])
    image = preprocess.train_transform(_decode_record(record, jpeg_dct), rng, **transform_kwargs)
    return {"image": image, "label": np.int32(record["label"])}


def _host_item(
    local_position: int, stream: grain.MapDataset, global_batch: int, offset: int, local_batch: int
) -> tuple[int, dict[str, Any]]:
    """This host's `local_position`-th record: slot offset + k of global batch b."""
    batch, slot = divmod(local_position, local_batch)
    position = batch * global_batch + offset + slot
    return position, stream[position]


def _read_options(threads: int) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads)


def _exit_when_orphaned(parent: int, interval_s: float) -> None:
    while True:
        time.sleep(interval_s)
        if os.getppid() != parent:
            os._exit(0)  # noqa: SLF001 - no cleanup owed to a parent that is gone


def _die_with_parent(worker_index: int, worker_count: int) -> None:
    """grain worker start: ends the worker within a second of its parent's death.

    A trainer killed with SIGKILL runs no cleanup, and its workers (~1 GB each at 599 px) lived
    on for minutes. PR_SET_PDEATHSIG would fire when the *thread* that started the worker ends,
    not the process, so a thread polls the parent pid instead.
    """
    del worker_index, worker_count
    threading.Thread(
        target=_exit_when_orphaned, args=(os.getppid(), 0.5), daemon=True, name="orphan-watch"
    ).start()


def _prefetch(config: ml_collections.ConfigDict, ds: grain.MapDataset) -> grain.IterDataset:
    """Hands the batch dataset to the worker processes of `parallelism` (none when 0)."""
    chosen = parallelism.choose(config.input)
    if chosen.workers > 0 and not flags.FLAGS.is_parsed():
        # grain's worker start reads an absl flag (its profiler switch) and fails when flags are
        # unparsed, as in tests, notebooks and scripts that are not absl apps. Marking them
        # parsed keeps every flag at its default; an absl app has parsed them already.
        flags.FLAGS.mark_as_parsed()
    return ds.to_iter_dataset(_read_options(chosen.read_threads)).mp_prefetch(
        grain.MultiprocessingOptions(
            num_workers=chosen.workers, per_worker_buffer_size=chosen.prefetch
        ),
        worker_init_fn=_die_with_parent,
    )


def create_train_dataset(
    config: ml_collections.ConfigDict,
    source: Sequence[dict[str, Any]],
    *,
    process_index: int,
    process_count: int,
    seed: int,
    start_batch: int = 0,
) -> grain.IterDataset:
    """Endless batches {"image": uint8 [B, S, S, 3], "label": int32 [B]} for this process.

    B = global_batch_size // process_count, S = config.model.image_size. Process p's batch b is
    slice [p * B, (p + 1) * B) of global batch b of one stream shared by all processes: `source`
    (random access: len + __getitem__, records with "image" bytes and "label") shuffled anew every
    epoch with config.input.shuffle_seed. `seed` drives the crops and flips.

    The stream starts at global batch `start_batch`: a run resumed at step s passes s, and sees
    the batches an uninterrupted run would, with any number of worker processes (the position
    is the step, so no worker-dependent iterator state need be restored).
    """
    if start_batch < 0:
        raise ValueError(f"start_batch={start_batch} must be >= 0.")
    _check_shard(process_index, process_count)
    global_batch = config.input.global_batch_size
    local_batch = _local_batch_size(global_batch, process_count, "global_batch_size")
    if len(source) == 0:
        raise ValueError("The training source is empty.")
    stream = grain.MapDataset.source(source).shuffle(seed=config.input.shuffle_seed).repeat()
    preprocessing = preprocess.Preprocessing.from_config(config)
    transform = functools.partial(
        _train_example,
        seed=seed,
        jpeg_dct=preprocessing.jpeg_dct,
        size=preprocessing.image_size,
        central_fraction=preprocessing.central_fraction,
        resize_method=preprocessing.resize_method,
        flip_left_right_prob=config.input.flip_left_right_prob,
        flip_up_down_prob=config.input.flip_up_down_prob,
        random_rot90=config.input.random_rot90,
    )
    host_slice = functools.partial(
        _host_item,
        stream=stream,
        global_batch=global_batch,
        offset=process_index * local_batch,
        local_batch=local_batch,
    )
    ds = (
        grain.MapDataset.range(len(stream) // global_batch * local_batch)
        .map(host_slice)
        .map(transform)
        .batch(local_batch, drop_remainder=True)
    )
    return _prefetch(config, ds[start_batch:] if start_batch else ds)


class _PaddedEvalShard(Sequence):
    """This process's records (index process_index + k * process_count), then None up to
    `length`, so that every process runs the same number of equally shaped eval steps."""

    def __init__(self, source: Sequence, process_index: int, process_count: int, length: int):
        self._source = source
        self._process_index = process_index
        self._process_count = process_count
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, position: int) -> tuple[int, dict[str, Any] | None]:
        if not 0 <= position < self._length:
            raise IndexError(position)
        index = self._process_index + position * self._process_count
        if index >= len(self._source):
            return -1, None
        return index, self._source[index]


def _eval_example(
    indexed_record: tuple[int, dict[str, Any] | None],
    *,
    preprocessing: preprocess.Preprocessing,
    text_fields: Sequence[str],
) -> dict[str, np.ndarray]:
    index, record = indexed_record
    if record is None:
        size = preprocessing.image_size
        return {
            "image": np.zeros((size, size, 3), preprocessing.input_dtype),
            "label": np.int32(0),
            "mask": np.bool_(False),
            "index": np.int64(-1),
        } | {field: np.str_("") for field in text_fields}
    image = _decode_record(record, preprocessing.jpeg_dct)
    return {
        "image": preprocessing.eval_transform(image),
        "label": np.int32(record["label"]),
        "mask": np.bool_(True),
        "index": np.int64(index),
    } | {field: np.str_(record_text(record, field)) for field in text_fields}


def create_eval_dataset(
    config: ml_collections.ConfigDict,
    source: Sequence[dict[str, Any]],
    *,
    process_index: int,
    process_count: int,
    text_fields: Sequence[str] = (),
) -> grain.IterDataset:
    """One deterministic pass: batches {"image", "label", "mask", "index"} of this process, plus
    each of `text_fields` (e.g. "source") as str, so that one read of a record gives all of it.

    Every record appears exactly once over all processes (mask True, index = its position in
    `source`); the last batches are padded (mask False, index -1, empty texts) to the per-process
    batch config.input.eval_batch_size // process_count, the same count of batches on every
    process.
    """
    _check_shard(process_index, process_count)
    local_batch = _local_batch_size(config.input.eval_batch_size, process_count, "eval_batch_size")
    if len(source) == 0:
        raise ValueError("The evaluation source is empty.")
    num_batches = math.ceil(math.ceil(len(source) / process_count) / local_batch)
    shard = _PaddedEvalShard(source, process_index, process_count, num_batches * local_batch)
    transform = functools.partial(
        _eval_example,
        preprocessing=preprocess.Preprocessing.from_config(config),
        text_fields=tuple(text_fields),
    )
    ds = grain.MapDataset.source(shard).map(transform).batch(local_batch, drop_remainder=True)
    return _prefetch(config, ds)


def open_tfds_source(config: ml_collections.ConfigDict, split: str) -> Sequence[dict[str, Any]]:
    """The random-access TFDS source of `split`, images left encoded for the worker processes.

    Goes through `tfds_marco.marco.build`, which prepares the dataset (array_record, as random
    access needs) in config.dataset.data_dir unless it is there already: the `synthetic` configs
    generate themselves, `full` reads config.dataset.manual_dir; config.dataset.config_overrides
    select a variant of the named config. config.dataset.prescale "jpeg" or "png" selects the
    variant whose train split is pre-scaled for this config's preprocessing (`data.prescale`).

    Raises:
      prescale.StorageMismatchError: `split` is stored pre-scaled for other preprocessing than
        the config's (one line).
    """
    if config.dataset.name != "marco":
        raise ValueError(
            f"config.dataset.name={config.dataset.name!r}: only the 'marco' TFDS dataset "
            "(tfds_marco/marco) is supported."
        )
    # Lazy: TFDS and the builder pull in TensorFlow, which the worker processes do not need.
    import tensorflow_datasets as tfds

    from tfds_marco.marco import build

    preprocessing = preprocess.Preprocessing.from_config(config)
    overrides = dict(config.dataset.get("config_overrides", {}))
    if image_format := config.dataset.get("prescale", ""):
        overrides = {
            "prescale_format": image_format,
            "prescale_image_size": preprocessing.image_size,
            "prescale_central_fraction": preprocessing.central_fraction,
            "prescale_resize_method": preprocessing.resize_method,
            "prescale_jpeg_dct": preprocessing.jpeg_dct,
        } | overrides  # explicit overrides win; `check` below catches a contradiction
    prepared = build(
        config.dataset.config_name,
        data_dir=config.dataset.data_dir,
        manual_dir=config.dataset.manual_dir,
        **overrides,
    ).data_dir
    # Read through a read-only builder of the prepared files: its source pickles into the grain
    # worker processes, where one holding the registered config object fails to unpickle.
    reader = tfds.builder_from_directory(prepared)
    prescale.check(reader.info.metadata, split, preprocessing, f"The dataset in {prepared}")
    return reader.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
