"""Relabeling (paper section 2): rank a dataset's images by how much the trained model disagrees
with their labels, lay the most disputed out for an expert on a labelling page
(`relabel_page`), and merge the expert's corrections into the builder's corrected_labels.csv.
The command and the workflow: `marco_jax.relabel`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from marco_jax import cli
from marco_jax.data import input_pipeline
from marco_jax.evaluation import evaluator, relabel_page
from marco_jax.labels import CLASS_NAMES
from marco_jax.runs import store

# Section 2, "Relabeling": "the 5% of the images that were most in disagreement with the
# classifier ... were relabeled by one expert".
DEFAULT_FRACTION = 0.05
DEFAULT_SPLITS = ("train", "test")
CANDIDATES_CSV = "relabel_candidates.csv"
PAGE_HTML = "relabel.html"
CANDIDATE_COLUMNS = (
    "split",
    "filename",
    "source",
    "label",
    "original_label",
    "predicted",
    "p_label",
    "p_pred",
    "disagreement",
    "corrected_label",
)
CORRECTED_COLUMNS = ("filename", "label")
DEFAULT_THUMBNAIL_SIZE = 256  # longest side, pixels; the page shows the original on click


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One scored image; `index` is its position in its split's source (for the thumbnail)."""

    split: str
    index: int
    filename: str
    source: str
    original_label: str
    label: int
    probs: tuple[float, ...]

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.probs))

    @property
    def disagreement(self) -> float:
        return 1.0 - self.probs[self.label]


class SplitRecords(Sequence):
    """The records of several splits end to end: one evaluation pass, compiled once, scores
    them all."""

    def __init__(self, sources: Mapping[str, Sequence[Mapping[str, Any]]]):
        self.sources = dict(sources)
        self._starts = np.cumsum([0] + [len(s) for s in self.sources.values()])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, position: int) -> tuple[str, int]:
        """(split, index in that split) of the record at `position`."""
        if not 0 <= position < len(self):
            raise IndexError(position)
        k = int(np.searchsorted(self._starts, position, side="right")) - 1
        return list(self.sources)[k], position - int(self._starts[k])

    def __getitem__(self, position: int) -> Mapping[str, Any]:
        split, index = self.locate(position)
        return self.sources[split][index]


TEXT_FIELDS = ("filename", "source", "original_label")  # read with the images, in one pass


def score_records(records: SplitRecords, predictions: evaluator.Predictions) -> list[Candidate]:
    """Pairs each record with its label and predicted probabilities."""
    texts = predictions.texts
    return [
        Candidate(
            *records.locate(position),
            filename=str(texts["filename"][position]),
            source=str(texts["source"][position]),
            original_label=str(texts["original_label"][position]),
            label=int(label),
            probs=tuple(float(x) for x in p),
        )
        for position, (label, p) in enumerate(
            zip(predictions.labels, predictions.probs, strict=True)
        )
    ]


def _check_positive(*, fraction: float = 1.0, **counts: int) -> None:
    if not 0.0 < fraction <= 1.0:
        raise cli.ArgumentError(f"fraction must lie in (0, 1], got {fraction}.")
    for name, value in counts.items():
        if value < 1:
            raise cli.ArgumentError(f"{name} must be >= 1, got {value}.")


def select(candidates: Iterable[Candidate], fraction: float) -> list[Candidate]:
    """The ceil(fraction * N) most disputed images, highest disagreement first (ties: by split
    and filename, so that the list does not depend on the order the splits were read in)."""
    _check_positive(fraction=fraction)
    ranked = sorted(candidates, key=lambda c: (-c.disagreement, c.split, c.filename))
    return ranked[: math.ceil(fraction * len(ranked))]


def write_candidates_csv(candidates: Sequence[Candidate], path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CANDIDATE_COLUMNS)
        for c in candidates:
            writer.writerow(
                [
                    c.split,
                    c.filename,
                    c.source,
                    CLASS_NAMES[c.label],
                    c.original_label,
                    CLASS_NAMES[c.predicted],
                    f"{c.probs[c.label]:.6f}",
                    f"{c.probs[c.predicted]:.6f}",
                    f"{c.disagreement:.6f}",
                    "",
                ]
            )


def find_candidates(
    workdir: str,
    *,
    fraction: float = DEFAULT_FRACTION,
    splits: Sequence[str] = DEFAULT_SPLITS,
    out: str | None = None,
    checkpoint: str = "best",
    use_ema: bool = True,
    data_dir: str | None = None,
    thumbnail_size: int = DEFAULT_THUMBNAIL_SIZE,
) -> dict[str, Any]:
    """Step 1 of `marco_jax.relabel`'s docstring; returns {"csv": path, "html": the labelling
    page's path, "candidates", "num_scored"} (no files from the other processes of a multi-host
    job)."""
    _check_positive(fraction=fraction, thumbnail_size=thumbnail_size)
    loaded = store.load(workdir, checkpoint, use_ema, data_dir)
    try:
        records = SplitRecords(
            {s: input_pipeline.open_tfds_source(loaded.config, s) for s in splits}
        )
    except ValueError as e:  # an unknown split, named by TFDS with the existing ones
        raise cli.ArgumentError(str(e)) from e
    predictions = evaluator.predict_model(loaded.config, loaded.model, records, TEXT_FIELDS)
    scored = score_records(records, predictions)
    candidates = select(scored, fraction)
    result = {"csv": None, "html": None, "candidates": candidates, "num_scored": len(scored)}
    if jax.process_index() != 0:  # every process of a multi-host job predicts, one writes
        return result
    out = out or os.path.join(workdir, f"relabel_{loaded.step}")
    os.makedirs(out, exist_ok=True)
    csv_path = os.path.join(out, CANDIDATES_CSV)
    write_candidates_csv(candidates, csv_path)
    page = relabel_page.write_page(
        candidates, records.sources, os.path.join(out, PAGE_HTML), thumbnail_size=thumbnail_size
    )
    logging.info("%d of %d images to review: %s", len(candidates), len(scored), page)
    return result | {"csv": csv_path, "html": page}


def _read_corrected(path: str) -> dict[str, str]:
    """An existing `filename,label` file, kept by a later export."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [row for row in csv.reader(f) if row]
    if rows and [cell.strip().lower() for cell in rows[0]] == list(CORRECTED_COLUMNS):
        rows = rows[1:]
    return {row[0].strip(): row[1].strip() for row in rows if len(row) >= 2}


def export_corrections(corrections_csv: str, out: str) -> int:
    """Step 3 of `marco_jax.relabel`'s docstring: merges the corrections of `corrections_csv`
    (a relabel_candidates.csv with its corrected_label column filled in, or the
    corrected_labels.csv the labelling page saved) into `out`; returns how many it added.

    Raises:
      cli.ArgumentError: a missing column, an unknown label, or one image given two different
        corrections, naming the line.
    """
    try:
        with open(corrections_csv, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except OSError as e:
        raise cli.ArgumentError(f"cannot read {corrections_csv}: {e.strerror}") from e
    reader = csv.DictReader(io.StringIO(text))
    columns = set(reader.fieldnames or ())
    # The page saves the builder's own format; the candidates list keeps its label column.
    label_column = "label" if columns == set(CORRECTED_COLUMNS) else "corrected_label"
    missing = {"filename", label_column} - columns
    if missing:
        raise cli.ArgumentError(
            f"{corrections_csv} has no column {sorted(missing)}: pass the {CANDIDATES_CSV} "
            "written by `python -m marco_jax.relabel --workdir ...` with corrected_label filled "
            f"in, or the {relabel_page.CORRECTIONS_NAME} its labelling page saved."
        )
    corrections: dict[str, str] = {}
    for row in reader:
        where = f"{corrections_csv}:{reader.line_num}"
        label = (row[label_column] or "").strip().lower()
        if not label:
            continue
        if label not in CLASS_NAMES:
            raise cli.ArgumentError(
                f"{where}: {label_column} {row[label_column]!r} is not one of "
                f"{', '.join(CLASS_NAMES)}."
            )
        filename = row["filename"].strip()
        if corrections.get(filename, label) != label:
            raise cli.ArgumentError(
                f"{where}: {filename} is corrected to both {corrections[filename]!r} and "
                f"{label!r}; keep one."
            )
        corrections[filename] = label
    merged = _read_corrected(out) if os.path.exists(out) else {}
    merged.update(corrections)
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CORRECTED_COLUMNS)
        writer.writerows(sorted(merged.items()))
    return len(corrections)
