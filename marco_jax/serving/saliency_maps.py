"""SmoothGrad heat maps for the rows `classify` scored, one PNG per input, never overwriting:
the photograph beside the heat over it, at its own resolution, with a colour bar
(`saliency_figure`).

The image is read again with the reader and crop that scored it (`image_io`, the predictor's
preprocessing), so nothing is held for the whole plate while it is scored.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import tqdm
from flax import nnx

from marco_jax.data import image_io, preprocess
from marco_jax.labels import CLASS_NAMES
from marco_jax.serving import engine, saliency, saliency_figure, smoothgrad


def saliency_path(out_dir: str, path: str, root: str) -> str:
    """Where the heat map of input `path` goes: its path relative to `root` (the inputs' common
    folder), with ".png" appended, so that inputs of the same name in different folders, or
    A1.jpg beside A1.tif, never overwrite each other."""
    relative = os.path.relpath(os.path.abspath(path), root)
    return os.path.join(out_dir, relative + ".png")


def common_root(paths: Sequence[str]) -> str:
    """The deepest folder holding every path (a lone file's own folder)."""
    return os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])


def write_saliency_maps(
    rows: Sequence[engine.Row],
    model: nnx.Module,
    out_dir: str,
    *,
    preprocessing: preprocess.Preprocessing,
    num_samples: int = saliency.DEFAULT_NUM_SAMPLES,
    noise_fraction: float = saliency.DEFAULT_NOISE_FRACTION,
    seed: int = 0,
    progress: bool = True,
) -> list[str]:
    """A SmoothGrad figure PNG of the predicted class for every scored row; returns the paths.

    The image is read again (same reader and crop as scoring), so nothing is held for the whole
    plate while it is scored.
    """
    scored = [row for row in rows if row.probs is not None]
    if not scored:
        return []
    root = common_root([row.path for row in scored])
    written = []
    for row in tqdm.tqdm(scored, unit="map", file=sys.stderr, disable=not progress):
        original = image_io.load_image(row.path, fast_dct=preprocessing.jpeg_dct == "fast")
        predicted = CLASS_NAMES.index(row.prediction)
        heat = smoothgrad.smoothgrad(
            model,
            preprocessing.eval_transform(original),
            predicted,
            num_samples=num_samples,
            noise_fraction=noise_fraction,
            seed=seed,
        )
        written.append(saliency_path(out_dir, row.path, root))
        saliency_figure.write_figure_png(
            written[-1],
            original,
            heat,
            preprocessing.eval_square(*original.shape[:2]),
            title=f"SmoothGrad of {row.prediction} (p = {row.probs[predicted]:.3f})",
        )
    return written
