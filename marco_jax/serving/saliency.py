"""SmoothGrad saliency maps and their heat-map overlays (paper section 4, Fig 4).

The paper shows what the classifier attends to by "aggregating noisy gradients of the image with
respect to its label on a per-pixel basis" with SmoothGrad (Smilkov et al. 2017), drawn as a heat
map over a grayscale copy of the image. Here, for one image x (the model's input in [-1, 1]) and
a class c:

  g_i = d logit_c(x + n_i) / dx,   n_i ~ N(0, sigma^2),   sigma = noise_fraction * (max x - min x)

- the class LOGIT (pre-softmax score), as SmoothGrad's class activation function S_c: the
  probability's gradient vanishes where the model is confident, which is where one most wants
  to see why;
- mode "squared" (default): mean over samples of g_i^2, the PAIR saliency library's default
  (`magnitude=True`); mode "abs": |mean of g_i|, SmoothGrad's eq. 3 shown as absolute values;
- then the maximum over the three colour channels (Simonyan et al. 2014), one value per pixel.
Defaults are SmoothGrad's: 15 % noise, 25 samples (PAIR's defaults; the paper finds 10-20 % best
and little change past ~50 samples).

The computation is `serving.smoothgrad` (JAX); this module holds its defaults and draws the
overlays, so that `classify` reads the defaults without loading JAX; `saliency_figure` lays a
map over the photograph at its own resolution, beside it, with a colour bar.

The samples are evaluated `sample_batch_size` at a time as one batch (`jax.lax.map` vmaps them),
inside one jitted function per model structure, so later images reuse the compiled code.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

DEFAULT_NUM_SAMPLES = 25
DEFAULT_NOISE_FRACTION = 0.15
# Samples per forward/backward batch: bounds memory (activations of the 599 px network are kept
# for the backward pass) without giving up batching.
DEFAULT_SAMPLE_BATCH_SIZE = 8
MODES = ("squared", "abs")
# Overlay: saliency above this percentile is shown at full heat (PAIR's visualisation clips at
# the 99th percentile so that a few extreme pixels do not leave the rest of the map dark).
DEFAULT_CLIP_PERCENTILE = 99.0
DEFAULT_MAX_ALPHA = 0.7  # opacity of the hottest pixels; the grayscale image shows through
DEFAULT_COLORMAP = "inferno"


def relative_heat(
    saliency: np.ndarray, clip_percentile: float = DEFAULT_CLIP_PERCENTILE
) -> np.ndarray:
    """saliency / its `clip_percentile` percentile, clipped to [0, 1] (all 0 for a flat map)."""
    saliency = np.asarray(saliency, np.float64)
    top = np.percentile(saliency, clip_percentile)
    return np.clip(saliency / top, 0.0, 1.0) if top > 0 else np.zeros_like(saliency)


def blend(
    image: np.ndarray,
    heat: np.ndarray,
    *,
    max_alpha: float = DEFAULT_MAX_ALPHA,
    colormap: str = DEFAULT_COLORMAP,
) -> np.ndarray:
    """Heat h in [0, 1] over a grayscale copy of `image`: each pixel is (1 - a) * gray +
    a * colormap(h) with a = max_alpha * h, so pixels without heat keep exactly their gray
    value. Returns uint8 RGB [H, W, 3]."""
    import matplotlib  # only where a map is drawn: scoring alone never loads it

    image = np.asarray(image)
    if image.shape[:2] != heat.shape or image.ndim != 3:
        raise ValueError(
            f"saliency {heat.shape} must match the image's height and width {image.shape}."
        )
    gray = np.asarray(Image.fromarray(image).convert("L"), np.float64)[..., None]
    color = matplotlib.colormaps[colormap](heat)[..., :3] * 255.0
    alpha = (max_alpha * heat)[..., None]
    return np.round((1.0 - alpha) * gray + alpha * color).astype(np.uint8)
