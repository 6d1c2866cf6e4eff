"""Scoring a list of image files with any predictor, and the CSV / exit-code contract of
`python -m marco_jax.classify`.

The model side is a callable `predict_fn(uint8 images [N, S, S, 3]) -> probabilities [N, 4]`
(a jitted JAX model or an exported one), always called with exactly `batch_size` images so that
a compiled or exported model sees one shape. Files are read and preprocessed in a thread pool
(Pillow's decoders and resampling release the GIL) a bounded number of images ahead of the
predictor, so decoding overlaps prediction without holding a whole plate in memory.

Contract of the output:
- one CSV row per input path, in input order: `path,prediction,p_<class>...` in CLASS_NAMES
  order, then `crystal_flag` (1 when p_crystals >= the threshold, only when one is given), then
  `error`; a file that could not be read has an empty prediction and probabilities and its
  reason in `error`.
- exit code EXIT_ALL_SCORED (0) when every file was scored, EXIT_SOME_FAILED (3) otherwise
  (2 stays the usage-error code of argparse/absl); the last line printed is `summary_line`.
"""

import collections
import contextlib
import dataclasses
import functools
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TextIO

import numpy as np
import tqdm

from marco_jax.data import image_io, preprocess
from marco_jax.labels import CLASS_NAMES, CRYSTALS, NUM_CLASSES
from marco_jax.serving import csv_file

EXIT_ALL_SCORED = 0
EXIT_SOME_FAILED = 3

PredictFn = Callable[[np.ndarray], np.ndarray]


def _dihedral(image: np.ndarray, *, flip: bool, quarter_turns: int) -> np.ndarray:
    return np.rot90(image[:, ::-1] if flip else image, k=quarter_turns)


# The 8 symmetries of the square: a drop photograph has no preferred orientation (paper section
# 3: full rotational invariance), so the model's answer can be averaged over them. A left-right
# flip is applied before the counter-clockwise rotation.
TTA_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    f"{'flip_' if flip else ''}rot{90 * turns}": functools.partial(
        _dihedral, flip=flip, quarter_turns=turns
    )
    for flip in (False, True)
    for turns in range(4)
}
ALL_TTA = tuple(TTA_TRANSFORMS)
DEFAULT_NUM_WORKERS = 4
DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes of decoded images in flight (`MemoryBudget`)


@dataclasses.dataclass(frozen=True)
class Row:
    """The result for one input: probabilities in CLASS_NAMES order, or the reason it failed."""

    path: str
    probs: tuple[float, ...] | None = None
    error: str = ""

    @property
    def prediction(self) -> str:
        return "" if self.probs is None else CLASS_NAMES[int(np.argmax(self.probs))]


def score_files(paths: Sequence[str], predict_fn: PredictFn, **options: Any) -> list[Row]:
    """Every file's Row, in input order; unreadable files become error rows.

    `options` are `iter_scores`'s (preprocessing, batch_size, tta, num_workers, ...); this is
    the whole-list form of it for callers that do not stream.
    """
    return list(iter_scores(paths, predict_fn, **options))


def iter_scores(
    paths: Sequence[str],
    predict_fn: PredictFn,
    *,
    preprocessing: preprocess.Preprocessing,
    batch_size: int,
    tta: Sequence[str] = (),
    num_workers: int = DEFAULT_NUM_WORKERS,
    max_pixels: int = image_io.DEFAULT_MAX_PIXELS,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: bool = True,
) -> Iterator[Row]:
    """Scores every file with the evaluation transform, one Row at a time in input order, each
    as soon as it and every row before it are done, so that a caller can write them as they
    come (an interruption then loses only the rows in flight). Unreadable files become error
    rows.

    tta: names from TTA_TRANSFORMS whose probabilities are averaged (ALL_TTA for all 8); empty
      to score each image once as it is.
    progress: draw a progress bar on stderr.
    memory_budget: bytes the readers may hold in decoded images at once (`MemoryBudget`): an
      81-megapixel photograph takes about 0.7 GB while it is decoded and cropped, so the
      number of workers alone does not bound memory.
    """
    unknown = sorted(set(tta) - set(TTA_TRANSFORMS))
    if unknown:
        raise ValueError(f"Unknown test-time transforms {unknown}; choose from {list(ALL_TTA)}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    transforms = [TTA_TRANSFORMS[name] for name in tta] or [np.asarray]
    load = functools.partial(
        _load_and_crop,
        preprocessing=preprocessing,
        max_pixels=max_pixels,
        budget=MemoryBudget(memory_budget),
    )
    rows: list[Row | None] = [None] * len(paths)
    prob_sums = np.zeros((len(paths), NUM_CLASSES), np.float64)
    views_done = np.zeros(len(paths), np.int64)
    # Crops waiting for the predictor, each with the index of its input.
    queue: list[tuple[int, np.ndarray]] = []
    pool = ThreadPoolExecutor(num_workers)
    bar = tqdm.tqdm(total=len(paths), unit="img", file=sys.stderr, disable=not progress)

    def predict_queued(count: int) -> None:
        batch = queue[:count]
        del queue[:count]
        probs = _predict_padded(predict_fn, [crop for _, crop in batch], batch_size)
        for (index, _), p in zip(batch, probs, strict=True):
            prob_sums[index] += p
            views_done[index] += 1
            if views_done[index] == len(transforms):
                mean = prob_sums[index] / len(transforms)
                rows[index] = Row(paths[index], tuple(mean.tolist()))
                bar.update()

    done = 0  # rows[:done] have been yielded

    def finished() -> Iterator[Row]:
        nonlocal done
        while done < len(rows) and rows[done] is not None:
            yield rows[done]
            rows[done] = None  # yielded: the caller holds it now
            done += 1

    try:
        # Enough images in flight to fill the next batches while the predictor runs.
        ahead = 2 * max(batch_size, num_workers)
        for index, loaded in enumerate(_ordered_prefetch(pool, load, paths, ahead)):
            if isinstance(loaded, str):
                rows[index] = Row(paths[index], error=loaded)
                bar.update()
            else:
                queue.extend((index, transform(loaded)) for transform in transforms)
                while len(queue) >= batch_size:
                    predict_queued(batch_size)
            yield from finished()
        if queue:
            predict_queued(len(queue))
        yield from finished()
    finally:  # also on Ctrl-C or an early close: no queued image is read any more
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()


class MemoryBudget:
    """Bounds the bytes of decoded images the reader threads hold at once.

    Each read reserves its estimate (`image_io.decode_cost`) before decoding and releases it
    after cropping; a read waits while the others hold too much. One image larger than the
    whole budget still runs, alone, so nothing is refused for it.
    """

    def __init__(self, limit: int):
        self._limit = max(int(limit), 1)
        self._used = 0
        self._condition = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        nbytes = min(max(int(nbytes), 0), self._limit)
        with self._condition:
            self._condition.wait_for(lambda: self._used + nbytes <= self._limit)
            self._used += nbytes
        try:
            yield
        finally:
            with self._condition:
                self._used -= nbytes
                self._condition.notify_all()


def _load_and_crop(
    path: str,
    *,
    preprocessing: preprocess.Preprocessing,
    max_pixels: int,
    budget: MemoryBudget | None = None,
) -> np.ndarray | str:
    """The evaluation input for one file, or the reason it cannot be read."""
    reservation = budget.reserve(image_io.decode_cost(path)) if budget else contextlib.nullcontext()
    with reservation:
        try:
            image = image_io.load_image(
                path, max_pixels=max_pixels, fast_dct=preprocessing.jpeg_dct == "fast"
            )
        except image_io.ImageReadError as e:
            return e.reason
        return preprocessing.eval_transform(image)


def _ordered_prefetch(
    pool: ThreadPoolExecutor, fn: Callable, items: Iterable, ahead: int
) -> Iterator:
    """fn over items in the pool, results in item order, at most `ahead` submitted unread."""
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _predict_padded(predict_fn: PredictFn, crops: list[np.ndarray], batch_size: int) -> np.ndarray:
    """Calls predict_fn on exactly batch_size images (zero images pad a short last batch)."""
    batch = np.zeros((batch_size, *crops[0].shape), crops[0].dtype)
    batch[: len(crops)] = crops
    probs = np.asarray(predict_fn(batch))
    if probs.shape != (batch_size, NUM_CLASSES):
        raise ValueError(
            f"predict_fn returned shape {probs.shape} for a batch of {batch_size} images; "
            f"expected ({batch_size}, {NUM_CLASSES}) probabilities in CLASS_NAMES order."
        )
    return probs[: len(crops)]


def csv_header(crystal_threshold: float | None = None) -> list[str]:
    flag = [] if crystal_threshold is None else ["crystal_flag"]
    return ["path", "prediction", *(f"p_{name}" for name in CLASS_NAMES), *flag, "error"]


def row_cells(row: Row, crystal_threshold: float | None = None) -> list[str]:
    """The CSV cells of one row (probabilities with 6 decimals), safe in a spreadsheet and
    exact for a program (`csv_file`: the path cell, and how to read the path back)."""
    scores = [""] * NUM_CLASSES if row.probs is None else [f"{p:.6f}" for p in row.probs]
    flag = []
    if crystal_threshold is not None:
        flag = [""] if row.probs is None else [str(int(row.probs[CRYSTALS] >= crystal_threshold))]
    return [
        csv_file.path_cell(row.path),
        row.prediction,
        *scores,
        *flag,
        csv_file.text_cell(row.error),
    ]


def write_csv(rows: Iterable[Row], stream: TextIO, crystal_threshold: float | None = None) -> None:
    """Writes the header and one line per row (`row_cells`); `stream` must be UTF-8."""
    if crystal_threshold is not None and not 0.0 <= crystal_threshold <= 1.0:
        raise ValueError(f"crystal_threshold must be in [0, 1], got {crystal_threshold}.")
    stream.write(csv_file.csv_line(csv_header(crystal_threshold)))
    for row in rows:
        stream.write(csv_file.csv_line(row_cells(row, crystal_threshold)))


def exit_code(rows: Sequence[Row]) -> int:
    return EXIT_SOME_FAILED if any(row.error for row in rows) else EXIT_ALL_SCORED


def summary_line(rows: Sequence[Row], skipped: str | None = None) -> str:
    """The run's last line: "scored N, failed M", then ", skipped K (...)" when `skipped`
    (`Inputs.skipped_summary`) is given."""
    failed = sum(1 for row in rows if row.error)
    line = f"scored {len(rows) - failed}, failed {failed}"
    return line if skipped is None else f"{line}, skipped {skipped}"
