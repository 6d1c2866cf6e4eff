"""The per-image side of an evaluation: predictions.csv (one row per image) and the gallery of
the most confident mistakes of each confusion pair, which report.html shows.

A mistake's confidence is the probability the model gave to its wrong prediction: the images it
was surest about and wrong are the likeliest label errors (the paper's relabeling, section 2) or
the model's blind spots, and both are what a scientist wants to see first.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from marco_jax.data import preprocess

if TYPE_CHECKING:  # the type only: writing the files needs no JAX
    from marco_jax.evaluation import evaluator

DEFAULT_MISTAKES_PER_PAIR = 4
# Longest side of a gallery thumbnail: embedded in report.html (about 25 kB each as JPEG), shown
# smaller and enlarged on click.
DEFAULT_GALLERY_SIZE = 320
PREDICTIONS_CSV = "predictions.csv"


@dataclasses.dataclass(frozen=True)
class GalleryImage:
    """One mistake: the image's label, the wrong prediction and its probability, the picture."""

    label: str
    predicted: str
    p_predicted: float
    p_label: float
    filename: str
    source: str
    jpeg: bytes


def thumbnail_jpeg(encoded: bytes, size: int) -> bytes:
    """The whole photograph (not the model's crop: a person judges the drop), longest side
    `size`, upright as the dataset decodes it."""
    image = Image.fromarray(preprocess.decode_image(encoded))
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def confident_mistakes(
    labels: np.ndarray, probs: np.ndarray, per_pair: int
) -> dict[tuple[int, int], list[int]]:
    """{(label, predicted): indices of up to `per_pair` misclassified examples}, most confident
    (highest probability of the wrong prediction) first; ties by index. Pairs without a mistake
    are absent."""
    predicted = np.argmax(probs, axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probs[wrong, predicted[wrong]]
    order = wrong[np.lexsort((wrong, -confidence))]
    pairs: dict[tuple[int, int], list[int]] = {}
    for index in order.tolist():
        chosen = pairs.setdefault((int(labels[index]), int(predicted[index])), [])
        if len(chosen) < per_pair:
            chosen.append(index)
    return dict(sorted(pairs.items()))


def gallery(
    predictions: evaluator.Predictions,
    records: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    *,
    per_pair: int = DEFAULT_MISTAKES_PER_PAIR,
    size: int = DEFAULT_GALLERY_SIZE,
) -> list[GalleryImage]:
    """The most confident mistakes of each confusion pair, in pair order, with thumbnails of
    `records[i]["image"]` (the evaluated source, in the predictions' order). The predictions
    carry the text fields "filename" and "source" (`evaluator.predict_model`'s text_fields)."""
    texts = predictions.texts
    images = []
    for (label, predicted), indices in confident_mistakes(
        predictions.labels, predictions.probs, per_pair
    ).items():
        for index in indices:
            probs = predictions.probs[index]
            images.append(
                GalleryImage(
                    label=class_names[label],
                    predicted=class_names[predicted],
                    p_predicted=float(probs[predicted]),
                    p_label=float(probs[label]),
                    filename=str(texts["filename"][index]),
                    source=str(texts["source"][index]),
                    jpeg=thumbnail_jpeg(records[index]["image"], size),
                )
            )
    return images


def write_predictions_csv(
    path: str | os.PathLike[str], predictions: evaluator.Predictions, class_names: Sequence[str]
) -> None:
    """One row per image in the evaluated order: filename (the image's path relative to the
    dataset's manual directory, as the dataset records it), source, label, predicted and each
    class's probability (6 decimals). The predictions carry "filename" and "source"."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(
            ["filename", "source", "label", "predicted"] + [f"p_{name}" for name in class_names]
        )
        for filename, source, label, probs in zip(
            predictions.texts["filename"],
            predictions.texts["source"],
            predictions.labels,
            predictions.probs,
            strict=True,
        ):
            writer.writerow(
                [filename, source, class_names[label], class_names[int(np.argmax(probs))]]
                + [f"{p:.6f}" for p in probs]
            )
