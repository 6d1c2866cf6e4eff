"""The images an int8 export is calibrated and checked on (`int8.Calibration`): image files, or
the records of a dataset split, through the model's own evaluation transform.

Every `HOLD_OUT_EVERY`-th image (the 4th, 8th, ...) is held out from calibration and measures
the int8 model's agreement with the float model; the others calibrate, up to a given count.
Images are read when NNCF or the agreement check asks for them, one at a time: a few hundred
599 px float images would hold gigabytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from marco_jax import cli
from marco_jax.data import image_io, preprocess
from marco_jax.serving.export.int8 import Calibration

HOLD_OUT_EVERY = 4


class ImageSequence(Sequence):
    """Model inputs read on access: `read(item)` gives the decoded image of each item."""

    def __init__(
        self,
        items: Sequence[Any],
        read: Callable[[Any], preprocess.ImageLike],
        preprocessing: preprocess.Preprocessing,
    ):
        self._items, self._read, self._preprocessing = items, read, preprocessing

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._preprocessing.eval_transform(self._read(self._items[index]))


def split_calibration(
    items: Sequence[Any],
    read: Callable[[Any], preprocess.ImageLike],
    preprocessing: preprocess.Preprocessing,
    max_calibration: int,
    source: str,
) -> Calibration:
    """Holds out every HOLD_OUT_EVERY-th item; the others calibrate, at most max_calibration of
    them (with the held-out ones among them)."""
    calibrate, held_out = [], []
    for position, item in enumerate(items):
        if len(calibrate) >= max_calibration:
            break
        (held_out if position % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1 else calibrate).append(item)
    if not held_out:
        raise cli.ArgumentError(
            f"int8 calibration needs at least {HOLD_OUT_EVERY} images (every "
            f"{HOLD_OUT_EVERY}th is held out to measure the int8 model); {source} has "
            f"{len(calibrate)}."
        )
    return Calibration(
        ImageSequence(calibrate, read, preprocessing),
        ImageSequence(held_out, read, preprocessing),
        source,
    )


def from_paths(
    paths: Sequence[str], preprocessing: preprocess.Preprocessing, max_calibration: int
) -> Calibration:
    """Image files, folders or list files (`image_io.scan_inputs`).

    Raises:
      cli.ArgumentError: no images, or one that cannot be read (named, when it is reached).
    """
    try:
        files = image_io.scan_inputs(paths).paths
    except image_io.InputListError as e:
        raise cli.ArgumentError(f"--calibration: {e}") from e

    def read(path: str) -> np.ndarray:
        try:
            return image_io.load_image(path, fast_dct=preprocessing.jpeg_dct == "fast")
        except image_io.ImageReadError as e:
            raise cli.ArgumentError(
                f"--calibration image {path} cannot be read ({e.reason}): remove it from the "
                "calibration images."
            ) from e

    source = f"{len(files)} image files under {', '.join(paths)}"
    return split_calibration(files, read, preprocessing, max_calibration, source)


def from_split(
    config: Any, split: str, preprocessing: preprocess.Preprocessing, max_calibration: int
) -> Calibration:
    """The records of `split` of the run's dataset (config.dataset), in their stored order."""
    from marco_jax.data import input_pipeline  # TFDS and grain: only for a dataset split

    try:
        records = input_pipeline.open_tfds_source(config, split)
    except (ValueError, FileNotFoundError) as e:
        raise cli.ArgumentError(f"--calibration_split {split}: {e}") from e
    source = f"split {split!r} of dataset {config.dataset.name}/{config.dataset.config_name}"

    def read(index: int) -> preprocess.ImageLike:
        return preprocess.decode(records[index]["image"], preprocessing.jpeg_dct)

    return split_calibration(range(len(records)), read, preprocessing, max_calibration, source)
