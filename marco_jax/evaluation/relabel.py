"""Relabeling (paper section 2): rank a dataset's images by how much the trained model disagrees
with their labels, lay the most disputed out for an expert, and turn the expert's corrections
into the builder's corrected_labels.csv. The command and the workflow: `marco_jax.relabel`.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from PIL import Image

from marco_jax import cli
from marco_jax.data import input_pipeline, preprocess
from marco_jax.evaluation import evaluator
from marco_jax.labels import CLASS_NAMES
from marco_jax.runs import store

# Section 2, "Relabeling": "the 5% of the images that were most in disagreement with the
# classifier ... were relabeled by one expert".
DEFAULT_FRACTION = 0.05
DEFAULT_SPLITS = ("train", "test")
CANDIDATES_CSV = "relabel_candidates.csv"
CANDIDATES_HTML = "relabel_candidates.html"
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
DEFAULT_PAGE_SIZE = 500  # images per HTML page: ~5 MB of thumbnails, still quick to open
DEFAULT_THUMBNAIL_SIZE = 256  # longest side, pixels


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


def thumbnail_jpeg(encoded: bytes, size: int) -> bytes:
    """The whole photograph (not the model's crop: the expert judges the drop), longest side
    `size`, upright as the dataset decodes it."""
    image = Image.fromarray(preprocess.decode_image(encoded))
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


_STYLE = """
body{font-family:sans-serif;margin:1em}
.sheet{display:flex;flex-wrap:wrap;gap:12px}
.card{width:270px;border:1px solid #ccc;padding:6px;font-size:12px}
.card img{display:block;max-width:256px;max-height:256px;margin:auto}
.name{font-family:monospace;word-break:break-all}
table{border-collapse:collapse}td{padding:0 4px}
.bar{background:#4a7ebb;height:8px}
nav{margin:1em 0}
"""


def _card(rank: int, c: Candidate, jpeg: bytes) -> str:
    data = base64.b64encode(jpeg).decode("ascii")
    bars = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{100 * p:.1f} %</td>"
        f'<td style="width:100px"><div class="bar" style="width:{100 * p:.0f}%"></div></td></tr>'
        for name, p in zip(CLASS_NAMES, c.probs, strict=True)
    )
    return (
        f'<div class="card"><img src="data:image/jpeg;base64,{data}" alt="{rank}">'
        f'<div><b>#{rank}</b> <span class="name">{html.escape(c.filename)}</span></div>'
        f"<div>split {html.escape(c.split)}, source {html.escape(c.source)}</div>"
        f"<div>label <b>{CLASS_NAMES[c.label]}</b> ({html.escape(c.original_label)}), "
        f"predicted <b>{CLASS_NAMES[c.predicted]}</b></div>"
        f"<div>disagreement {c.disagreement:.3f}</div><table>{bars}</table></div>"
    )


def page_name(page: int) -> str:
    """relabel_candidates.html, then relabel_candidates_2.html, ..."""
    stem, ext = os.path.splitext(CANDIDATES_HTML)
    return CANDIDATES_HTML if page == 1 else f"{stem}_{page}{ext}"


def write_contact_sheets(
    candidates: Sequence[Candidate],
    sources: Mapping[str, Sequence[Mapping[str, Any]]],
    out_dir: str,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
    thumbnail_size: int = DEFAULT_THUMBNAIL_SIZE,
) -> list[str]:
    """Self-contained HTML pages (thumbnails embedded as data URIs) of the candidates in rank
    order, `page_size` a page, linked to each other; returns their paths."""
    _check_positive(page_size=page_size, thumbnail_size=thumbnail_size)
    num_pages = max(1, math.ceil(len(candidates) / page_size))
    paths = []
    for page in range(1, num_pages + 1):
        first = (page - 1) * page_size
        cards = [
            _card(rank, c, thumbnail_jpeg(sources[c.split][c.index]["image"], thumbnail_size))
            for rank, c in enumerate(candidates[first : first + page_size], start=first + 1)
        ]
        links = [f'<a href="{page_name(page - 1)}">previous</a>'] if page > 1 else []
        links += [f'<a href="{page_name(page + 1)}">next</a>'] if page < num_pages else []
        body = (
            f"<h1>Relabeling candidates, page {page} of {num_pages}</h1>"
            f"<p>{len(candidates)} images most in disagreement with the model (disagreement = "
            f"1 - p(label)), most disputed first. Enter corrections in the corrected_label "
            f"column of {CANDIDATES_CSV}.</p>"
            f'<nav>{" | ".join(links)}</nav><div class="sheet">{"".join(cards)}</div>'
        )
        paths.append(os.path.join(out_dir, page_name(page)))
        with open(paths[-1], "w", encoding="utf-8") as f:
            f.write(
                '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
                f"<title>Relabeling candidates {page}/{num_pages}</title>"
                f"<style>{_STYLE}</style></head><body>{body}</body></html>\n"
            )
    return paths


def find_candidates(
    workdir: str,
    *,
    fraction: float = DEFAULT_FRACTION,
    splits: Sequence[str] = DEFAULT_SPLITS,
    out: str | None = None,
    checkpoint: str = "best",
    use_ema: bool = True,
    data_dir: str | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    thumbnail_size: int = DEFAULT_THUMBNAIL_SIZE,
) -> dict[str, Any]:
    """Step 1 of the module docstring; returns {"csv": path, "html": page paths, "candidates",
    "num_scored"} (no files from the other processes of a multi-host job)."""
    _check_positive(fraction=fraction, page_size=page_size, thumbnail_size=thumbnail_size)
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
    result = {"csv": None, "html": [], "candidates": candidates, "num_scored": len(scored)}
    if jax.process_index() != 0:  # every process of a multi-host job predicts, one writes
        return result
    out = out or os.path.join(workdir, f"relabel_{loaded.step}")
    os.makedirs(out, exist_ok=True)
    csv_path = os.path.join(out, CANDIDATES_CSV)
    write_candidates_csv(candidates, csv_path)
    pages = write_contact_sheets(
        candidates, records.sources, out, page_size=page_size, thumbnail_size=thumbnail_size
    )
    logging.info("%d of %d images to review: %s", len(candidates), len(scored), csv_path)
    return result | {"csv": csv_path, "html": pages}


def _read_corrected(path: str) -> dict[str, str]:
    """An existing `filename,label` file, kept by a later export."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [row for row in csv.reader(f) if row]
    if rows and [cell.strip().lower() for cell in rows[0]] == list(CORRECTED_COLUMNS):
        rows = rows[1:]
    return {row[0].strip(): row[1].strip() for row in rows if len(row) >= 2}


def export_corrections(candidates_csv: str, out: str) -> int:
    """Step 3 of the module docstring; returns how many corrections the candidates added.

    Raises:
      cli.ArgumentError: a missing column, an unknown corrected_label, or one image given two
        different corrections, naming the line.
    """
    try:
        with open(candidates_csv, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except OSError as e:
        raise cli.ArgumentError(f"cannot read {candidates_csv}: {e.strerror}") from e
    reader = csv.DictReader(io.StringIO(text))
    missing = {"filename", "corrected_label"} - set(reader.fieldnames or ())
    if missing:
        raise cli.ArgumentError(
            f"{candidates_csv} has no column {sorted(missing)}: pass the "
            f"{CANDIDATES_CSV} written by `python -m marco_jax.relabel --workdir ...`."
        )
    corrections: dict[str, str] = {}
    for row in reader:
        where = f"{candidates_csv}:{reader.line_num}"
        label = (row["corrected_label"] or "").strip().lower()
        if not label:
            continue
        if label not in CLASS_NAMES:
            raise cli.ArgumentError(
                f"{where}: corrected_label {row['corrected_label']!r} is not one of "
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
