"""The network's input convention and its eval-mode probabilities: the one predict function.

Evaluation, scoring (`classify`), the benchmarks and the tests all predict through
`probabilities`, so a change to the input convention or the output head reaches all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from marco_jax.model import inception


def to_model_input(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] or float [0, 1] images -> float32 in [-1, 1], the Inception convention
    (TF-slim's inception_preprocessing: subtract 0.5, multiply by 2)."""
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    return x * 2.0 - 1.0


def probabilities(graphdef: nnx.GraphDef, weights: tuple[Any, ...], images: jax.Array) -> jax.Array:
    """Softmax over the classes of the eval-mode network (BatchNorm on its moving statistics,
    no dropout) rebuilt from `graphdef` and `weights` (e.g. params and batch_stats)."""
    logits = nnx.merge(graphdef, *weights)(to_model_input(images), train=False)
    return jax.nn.softmax(logits)


# One compiled function per network structure and batch shape, shared by every predict_fn.
_jitted_probabilities = jax.jit(probabilities, static_argnums=0)


def predict_fn(model: inception.InceptionV3) -> Callable[[np.ndarray], np.ndarray]:
    """Host images [N, S, S, 3] -> numpy probabilities [N, classes] with `model`'s current
    weights, jitted (one compilation per network structure and batch shape, whichever model)."""
    graphdef, *weights = inception.split_model(model)
    return lambda images: np.asarray(_jitted_probabilities(graphdef, tuple(weights), images))


def flops_per_image(graphdef: nnx.GraphDef, weights: tuple[Any, ...], image_size: int) -> float:
    """XLA's count of the floating-point operations of `probabilities` on one image of
    `image_size` pixels square, from the lowered program (nothing is compiled or run)."""
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), weights)
    image = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    cost = _jitted_probabilities.lower(graphdef, abstract, image).cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost["flops"])
