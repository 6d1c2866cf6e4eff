"""SmoothGrad (Smilkov et al. 2017) of the JAX network: the method and its defaults are in
`marco_jax.serving.saliency`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from marco_jax.model import predict
from marco_jax.serving.saliency import (
    DEFAULT_NOISE_FRACTION,
    DEFAULT_NUM_SAMPLES,
    DEFAULT_SAMPLE_BATCH_SIZE,
    MODES,
)


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
    x = predict.to_model_input(image)
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
