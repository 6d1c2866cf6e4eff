"""Copies Keras `InceptionV3` weights onto our network.

Keras numbers its anonymous layers in creation order (`conv2d`, `conv2d_1`, ...,
`batch_normalization_93`), and creates them in TF-slim's order, so the n-th Keras Conv2D/BatchNorm
pair is our n-th `iter_conv_layers()` entry. This is how ImageNet weights saved from Keras become
a starting point, and how the structural equivalence test proves the network is Inception-v3.
"""

from __future__ import annotations

import re
from typing import Any

import jax.numpy as jnp
import numpy as np

from marco_jax.model.inception import InceptionV3


def _creation_index(layer: Any) -> int:
    match = re.search(r"_(\d+)$", layer.name)
    return int(match.group(1)) if match else 0


def _layers_of(keras_model: Any, class_name: str) -> list[Any]:
    layers = [layer for layer in keras_model.layers if type(layer).__name__ == class_name]
    return sorted(layers, key=_creation_index)


def load_keras_inception_v3(model: InceptionV3, keras_model: Any) -> None:
    """Copies a `keras.applications.InceptionV3` (with top) into `model` in place."""
    convs = _layers_of(keras_model, "Conv2D")
    norms = _layers_of(keras_model, "BatchNormalization")
    ours = list(model.iter_conv_layers())
    if not len(convs) == len(norms) == len(ours):
        raise ValueError(
            f"Keras model has {len(convs)} convs and {len(norms)} batch norms, ours has "
            f"{len(ours)} conv layers: it is not the same architecture."
        )
    for (name, layer), conv, norm in zip(ours, convs, norms, strict=True):
        kernel = np.asarray(conv.get_weights()[0])
        if kernel.shape != layer.conv.kernel.shape:
            raise ValueError(
                f"{name}: Keras {conv.name} has shape {kernel.shape}, "
                f"ours {layer.conv.kernel.shape}."
            )
        layer.conv.kernel.set_value(jnp.asarray(kernel))
        beta, mean, var = (jnp.asarray(w) for w in norm.get_weights())
        layer.bn.bias.set_value(beta)
        layer.bn.mean.set_value(mean)
        layer.bn.var.set_value(var)
    kernel, bias = keras_model.get_layer("predictions").get_weights()
    model.Logits.kernel.set_value(jnp.asarray(kernel)[None, None])
    model.Logits.bias.set_value(jnp.asarray(bias))
