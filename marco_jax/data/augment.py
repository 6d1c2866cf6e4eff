"""The paper's photometric distortions, in JAX, for the jitted training step (per image, on device).

Bruno et al. 2018, section 3 "Data Preprocessing and Augmentation": brightness +-32/255,
saturation 50-150 %, hue +-0.2 (of 0.5), contrast 50-150 %, "identical to the reference
implementation", i.e. TF-slim's `inception_preprocessing.distort_color` with `fast_mode=False`.
We reproduce it to float32 rounding (~1e-6):
  * each op uses the formula of its `tf.image` counterpart: brightness adds a delta; contrast
    scales around the per-image, per-channel mean; saturation and hue act in HSV with TensorFlow's
    conventions (saturation clipped to [0, 1], hue wrapped in [0, 1));
  * like slim, each image draws one of slim's four orderings of the ops at random
    (`SLIM_ORDERINGS`), intermediate results are not clipped, and the result is clipped to [0, 1].
The host pipeline ships uint8 patches; doing this work on the accelerator keeps the host light.

Applying a per-image ordering under `vmap` would evaluate every branch of a `lax.switch`. Instead,
every slim ordering is a sequence of at most four stages alternating RGB (brightness and contrast,
which commute) and HSV (saturation and hue, which commute), so each image runs one fixed chain
RGB -> HSV -> RGB -> HSV and its ordering only decides which op is active in which stage.
tests/test_augment.py checks this against slim's four orderings written out with `tf.image` ops,
and each op against its `tf.image` counterpart.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

BRIGHTNESS, SATURATION, HUE, CONTRAST = "brightness", "saturation", "hue", "contrast"
# TF-slim inception_preprocessing.distort_color, color_ordering 0..3 (fast_mode=False).
SLIM_ORDERINGS: tuple[tuple[str, ...], ...] = (
    (BRIGHTNESS, SATURATION, HUE, CONTRAST),
    (SATURATION, BRIGHTNESS, CONTRAST, HUE),
    (CONTRAST, HUE, BRIGHTNESS, SATURATION),
    (HUE, SATURATION, CONTRAST, BRIGHTNESS),
)
_SPACE = {BRIGHTNESS: "rgb", CONTRAST: "rgb", SATURATION: "hsv", HUE: "hsv"}
_STAGE_SPACES = ("rgb", "hsv", "rgb", "hsv")
_OPS = (BRIGHTNESS, SATURATION, HUE, CONTRAST)


def _stage_table(orderings: tuple[tuple[str, ...], ...]) -> np.ndarray:
    """[ordering, op] -> index of the stage of `_STAGE_SPACES` that applies the op.

    Consecutive ops of the same colour space share a stage; a change of space moves to the next.
    """
    table = np.zeros((len(orderings), len(_OPS)), np.int32)
    for row, ordering in enumerate(orderings):
        stage = 0
        for op in ordering:
            if _STAGE_SPACES[stage] != _SPACE[op]:
                stage += 1
            if stage >= len(_STAGE_SPACES):
                raise ValueError(f"Ordering {ordering} needs more than {_STAGE_SPACES} stages.")
            table[row, _OPS.index(op)] = stage
    return table


_STAGE_OF_OP = _stage_table(SLIM_ORDERINGS)


class DistortionParams(NamedTuple):
    """One random draw per image (each field has a leading batch axis when sampled for a batch)."""

    brightness_delta: jax.Array
    saturation_factor: jax.Array
    hue_delta: jax.Array
    contrast_factor: jax.Array
    ordering: jax.Array  # index into SLIM_ORDERINGS


def _checked_range(cfg: Any, name: str) -> tuple[float, float]:
    low, high = (float(v) for v in getattr(cfg, name))
    if not 0.0 <= low <= high:
        raise ValueError(f"config.input.{name}={(low, high)} must satisfy 0 <= low <= high.")
    return low, high


def _checked_delta(cfg: Any, name: str, upper: float) -> float:
    delta = float(getattr(cfg, name))
    if not 0.0 <= delta <= upper:
        raise ValueError(f"config.input.{name}={delta} must lie in [0, {upper}].")
    return delta


def sample_distortion_params(key: jax.Array, batch: int, cfg: Any) -> DistortionParams:
    """Draws each image's factors as slim does: uniform in the configured ranges.

    `cfg` is `config.input` (brightness_delta, saturation_range, hue_delta, contrast_range).
    """
    brightness = _checked_delta(cfg, "brightness_delta", 1.0)
    hue = _checked_delta(cfg, "hue_delta", 0.5)  # tf.image.random_hue's limit
    saturation = _checked_range(cfg, "saturation_range")
    contrast = _checked_range(cfg, "contrast_range")
    keys = jax.random.split(key, 5)
    return DistortionParams(
        brightness_delta=jax.random.uniform(
            keys[0], (batch,), minval=-brightness, maxval=brightness
        ),
        saturation_factor=jax.random.uniform(
            keys[1], (batch,), minval=saturation[0], maxval=saturation[1]
        ),
        hue_delta=jax.random.uniform(keys[2], (batch,), minval=-hue, maxval=hue),
        contrast_factor=jax.random.uniform(
            keys[3], (batch,), minval=contrast[0], maxval=contrast[1]
        ),
        ordering=jax.random.randint(keys[4], (batch,), 0, len(SLIM_ORDERINGS)),
    )


def adjust_brightness(image: jax.Array, delta: jax.Array) -> jax.Array:
    """tf.image.adjust_brightness for float images (no clipping)."""
    return image + delta


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
    """tf.image.adjust_contrast: scales each channel around its mean over one image [H, W, C]."""
    mean = jnp.mean(image, axis=(-3, -2), keepdims=True)
    return (image - mean) * factor + mean


def _wrap_unit(x: jax.Array) -> jax.Array:
    """x modulo 1. Not jnp.mod: XLA:CPU lowers its float remainder to a scalar libm call, which
    made the whole distortion 4x slower on the host; floor vectorises."""
    return x - jnp.floor(x)


def _to_hcv(image: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """RGB -> (hue in [0, 1), chroma = max - min, value = max), TensorFlow's hue formula.

    Chroma rather than saturation is kept so that a hue shift leaves the channel extremes intact
    even for negative intermediate values, exactly as tf.image.adjust_hue does.
    """
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    value = jnp.maximum(jnp.maximum(r, g), b)
    chroma = value - jnp.minimum(jnp.minimum(r, g), b)
    # The sector (red, green or blue maximum, in TF's order of precedence) and the position in it.
    difference = jnp.where(r == value, g - b, jnp.where(g == value, b - r, r - g))
    sector = jnp.where(r == value, 0.0, jnp.where(g == value, 2.0, 4.0))
    hue = (difference / jnp.where(chroma > 0, chroma, 1.0) + sector) / 6.0
    return jnp.where(chroma > 0, _wrap_unit(hue), 0.0), chroma, value


def _from_hcv(hue: jax.Array, chroma: jax.Array, value: jax.Array) -> jax.Array:
    """(hue in [0, 1], chroma, value) -> RGB, the branch-free form of TensorFlow's hsv_to_rgb."""
    channels = []
    for n in (5.0, 3.0, 1.0):  # red, green, blue
        k = n + hue * 6.0
        k = jnp.where(k >= 6.0, k - 6.0, k)
        channels.append(value - chroma * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0))
    return jnp.stack(channels, axis=-1)


def _saturated_chroma(chroma: jax.Array, value: jax.Array, factor: jax.Array) -> jax.Array:
    """tf.image.adjust_saturation on chroma: TF's clip(chroma / value * factor, 0, 1) * value
    (0 where value <= 0), written without the division."""
    return jnp.where(value > 0, jnp.minimum(chroma * factor, value), 0.0)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
    """tf.image.adjust_saturation for float images."""
    hue, chroma, value = _to_hcv(image)
    return _from_hcv(hue, _saturated_chroma(chroma, value, factor), value)


def adjust_hue(image: jax.Array, delta: jax.Array) -> jax.Array:
    """tf.image.adjust_hue for float images (delta in [-0.5, 0.5], hue wraps around)."""
    hue, chroma, value = _to_hcv(image)
    return _from_hcv(_wrap_unit(hue + delta), chroma, value)


def _rgb_stage(image, params, use_brightness, use_contrast):
    image = jnp.where(use_contrast, adjust_contrast(image, params.contrast_factor), image)
    return jnp.where(use_brightness, adjust_brightness(image, params.brightness_delta), image)


def _hsv_stage(image, params, use_saturation, use_hue):
    hue, chroma, value = _to_hcv(image)
    hue = jnp.where(use_hue, _wrap_unit(hue + params.hue_delta), hue)
    chroma = jnp.where(
        use_saturation, _saturated_chroma(chroma, value, params.saturation_factor), chroma
    )
    return jnp.where(use_saturation | use_hue, _from_hcv(hue, chroma, value), image)


def apply_distortions(image: jax.Array, params: DistortionParams) -> jax.Array:
    """slim's distort_color on one float image [H, W, 3] with the given (scalar) params."""
    stage_of = jnp.asarray(_STAGE_OF_OP)[params.ordering]
    active = {op: stage_of[i] for i, op in enumerate(_OPS)}
    for stage, space in enumerate(_STAGE_SPACES):
        if space == "rgb":
            image = _rgb_stage(
                image, params, active[BRIGHTNESS] == stage, active[CONTRAST] == stage
            )
        else:
            image = _hsv_stage(image, params, active[SATURATION] == stage, active[HUE] == stage)
    return jnp.clip(image, 0.0, 1.0)


def to_unit_float(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [0, 1]; float input is taken to be in [0, 1] already."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


def distort_color(key: jax.Array, images: jax.Array, cfg: Any) -> jax.Array:
    """Distorts a batch [B, H, W, 3] (uint8, or float in [0, 1]) with one draw per image.

    Returns float32 in [0, 1]. Call it inside the jitted step; `cfg` is `config.input`.
    """
    params = sample_distortion_params(key, images.shape[0], cfg)
    return jax.vmap(apply_distortions)(to_unit_float(images), params)
