"""Scoring a list of image files with any predictor, and the CSV / exit-code contract of
`python -m marco_jax.classify`.

The model side is a callable `predict_fn(images [N, S, S, 3]) -> probabilities [N, 4]` (a
jitted JAX model or an exported one), called with at most `batch_size` images; with
`pad_batches` always exactly `batch_size` (zero images pad the last batch), so that a jitted
model sees one shape. Files are read and preprocessed in a thread pool (libjpeg-turbo, Pillow's
resampling and numpy's copies release the GIL, and so do the exports' runtimes) a bounded number
of images ahead of the predictor, in input order, so decoding overlaps prediction without holding
a whole plate in memory. `ScoringStats` says where the time went: reading, waiting for images,
predicting.

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
import time
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


@dataclasses.dataclass
class ScoringStats:
    """Where a scoring run's time went, filled in by `iter_scores`.

    cpu_s: CPU seconds of the whole process while scoring (the runtime's threads included);
    read_cpu_s: those of the reader threads, reading and cropping; predict_s: wall seconds in
    predict_fn; waiting_s: wall seconds the predictor waited for a read image (the model
    starved); wall_s: the whole run.
    """

    images: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    read_cpu_s: float = 0.0
    predict_s: float = 0.0
    waiting_s: float = 0.0

    @property
    def read_share(self) -> float:
        """Reading and cropping's share of the CPU time: read_cpu_s / cpu_s."""
        return min(self.read_cpu_s / self.cpu_s, 1.0) if self.cpu_s else 0.0

    def to_json(self) -> dict[str, float]:
        return {
            **dataclasses.asdict(self),
            "read_share": self.read_share,
            "images_per_s": self.images / self.wall_s if self.wall_s else 0.0,
        }


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
    pad_batches: bool = True,
    stats: ScoringStats | None = None,
) -> Iterator[Row]:
    """Scores every file with the evaluation transform, one Row at a time in input order, each
    as soon as it and every row before it are done, so that a caller can write them as they
    come (an interruption then loses only the rows in flight). Unreadable files become error
    rows.

    tta: names from TTA_TRANSFORMS whose probabilities are averaged (ALL_TTA for all 8); empty
      to score each image once as it is.
    progress: draw a progress bar on stderr.
    pad_batches: call predict_fn with exactly batch_size images (for a jitted model); False
      sends the last batch as it is (exports take any batch size).
    stats: filled in with where the time went (`ScoringStats`).
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
    stats = stats if stats is not None else ScoringStats()
    began, began_cpu = time.perf_counter(), time.process_time()
    read_seconds: list[float] = []  # CPU seconds, appended by the reader threads
    load = functools.partial(
        _load_and_crop,
        preprocessing=preprocessing,
        max_pixels=max_pixels,
        budget=MemoryBudget(memory_budget),
        seconds=read_seconds,
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
        start = time.perf_counter()
        crops = [crop for _, crop in batch]
        probs = _predict_padded(predict_fn, crops, batch_size if pad_batches else len(crops))
        stats.predict_s += time.perf_counter() - start
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
        loads = _ordered_prefetch(pool, load, paths, ahead)
        for index in range(len(paths)):
            start = time.perf_counter()
            loaded = next(loads)
            stats.waiting_s += time.perf_counter() - start
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
        stats.images = done
        stats.read_cpu_s = sum(read_seconds)
        stats.cpu_s = time.process_time() - began_cpu
        stats.wall_s = time.perf_counter() - began


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
    seconds: list[float] | None = None,
) -> np.ndarray | str:
    """The evaluation input for one file, or the reason it cannot be read; the CPU time it took
    (this thread's) is appended to `seconds`."""
    reservation = budget.reserve(image_io.decode_cost(path)) if budget else contextlib.nullcontext()
    with reservation:
        start = time.thread_time()
        try:
            image = image_io.load_image(
                path, max_pixels=max_pixels, fast_dct=preprocessing.jpeg_dct == "fast"
            )
            return preprocessing.eval_transform(image)
        except image_io.ImageReadError as e:
            return e.reason
        finally:
            if seconds is not None:
                seconds.append(time.thread_time() - start)


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
