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

The samples are evaluated `sample_batch_size` at a time as one batch (`jax.lax.map` vmaps them),
inside one jitted function per model structure, so later images reuse the compiled code.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from flax import nnx
from PIL import Image

from marco_jax.data import augment

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


@functools.partial(
    jax.jit, static_argnames=("graphdef", "num_samples", "sample_batch_size", "mode")
)
def _smoothgrad(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    image: jax.Array,
    class_index: jax.Array,
    key: jax.Array,
    noise_fraction: jax.Array,
    *,
    num_samples: int,
    sample_batch_size: int,
    mode: str,
) -> jax.Array:
    model = nnx.merge(graphdef, state)
    x = augment.to_model_input(image)
    sigma = noise_fraction * (x.max() - x.min())

    def class_logit(z: jax.Array) -> jax.Array:
        return model(z[None], train=False)[0, class_index]

    def sample_gradient(sample_key: jax.Array) -> jax.Array:
        gradient = jax.grad(class_logit)(x + sigma * jax.random.normal(sample_key, x.shape))
        return gradient * gradient if mode == "squared" else gradient

    gradients = jax.lax.map(
        sample_gradient, jax.random.split(key, num_samples), batch_size=sample_batch_size
    )
    mean = gradients.mean(axis=0)
    return jnp.max(mean if mode == "squared" else jnp.abs(mean), axis=-1)


def smoothgrad(
    model: nnx.Module,
    image: np.ndarray,
    class_index: int,
    *,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    noise_fraction: float = DEFAULT_NOISE_FRACTION,
    seed: int = 0,
    mode: str = "squared",
    sample_batch_size: int = DEFAULT_SAMPLE_BATCH_SIZE,
) -> np.ndarray:
    """The SmoothGrad map [H, W] (float32, >= 0) of `class_index` for one image [H, W, 3] at the
    model's input size, uint8 or float in [0, 1] as the preprocessing made it (see the module
    docstring). The same seed gives the same map.

    `model` is any NNX module called as `model(images in [-1, 1], train=False) -> logits`.
    """
    image = np.asarray(image)
    usable = image.dtype == np.uint8 or np.issubdtype(image.dtype, np.floating)
    if not usable or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"image must be uint8 or float [H, W, 3], got {image.dtype} {image.shape}."
        )
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if num_samples < 1 or sample_batch_size < 1:
        raise ValueError(
            f"num_samples ({num_samples}) and sample_batch_size ({sample_batch_size}) must be >= 1."
        )
    if noise_fraction < 0:
        raise ValueError(f"noise_fraction must be >= 0, got {noise_fraction}.")
    graphdef, state = nnx.split(model)
    saliency = _smoothgrad(
        graphdef,
        state,
        jnp.asarray(image),
        jnp.int32(class_index),
        jax.random.key(seed),
        jnp.float32(noise_fraction),
        num_samples=num_samples,
        sample_batch_size=min(sample_batch_size, num_samples),
        mode=mode,
    )
    return np.asarray(saliency)


def overlay(
    image: np.ndarray,
    saliency: np.ndarray,
    *,
    clip_percentile: float = DEFAULT_CLIP_PERCENTILE,
    max_alpha: float = DEFAULT_MAX_ALPHA,
    colormap: str = DEFAULT_COLORMAP,
) -> np.ndarray:
    """The heat map of `saliency` [H, W] over a grayscale copy of `image` [H, W, 3] (Fig 4).

    Heat h = saliency / its `clip_percentile` percentile, clipped to [0, 1]; each pixel is
    (1 - a) * gray + a * colormap(h) with a = max_alpha * h, so pixels without saliency keep
    exactly their gray value. Returns uint8 RGB [H, W, 3].
    """
    image = np.asarray(image)
    saliency = np.asarray(saliency, np.float64)
    if image.shape[:2] != saliency.shape or image.ndim != 3:
        raise ValueError(
            f"saliency {saliency.shape} must match the image's height and width {image.shape}."
        )
    gray = np.asarray(Image.fromarray(image).convert("L"), np.float64)[..., None]
    top = np.percentile(saliency, clip_percentile)
    heat = np.clip(saliency / top, 0.0, 1.0) if top > 0 else np.zeros_like(saliency)
    color = matplotlib.colormaps[colormap](heat)[..., :3] * 255.0
    alpha = (max_alpha * heat)[..., None]
    return np.round((1.0 - alpha) * gray + alpha * color).astype(np.uint8)


def overlay_png(
    path: str | os.PathLike, image: np.ndarray, saliency: np.ndarray, **overlay_kwargs
) -> None:
    """Writes `overlay(image, saliency)` as a PNG file, creating its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(overlay(image, saliency, **overlay_kwargs)).save(path, format="PNG")
