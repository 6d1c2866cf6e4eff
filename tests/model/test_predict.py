"""marco_jax.model.predict: the input convention and the eval-mode probabilities every caller
(evaluation, classify, benchmarks) predicts with."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from marco_jax.model import inception, predict


def test_to_model_input_maps_to_minus_one_one():
    as_uint8 = predict.to_model_input(jnp.array([0, 255, 51], jnp.uint8))
    np.testing.assert_allclose(as_uint8, [-1.0, 1.0, 51 / 255 * 2 - 1], atol=1e-6)
    assert as_uint8.dtype == jnp.float32
    np.testing.assert_allclose(predict.to_model_input(jnp.array([0.0, 0.5, 1.0])), [-1, 0, 1])


def test_uint8_and_unit_float_images_get_the_same_probabilities(tiny_config):
    """The two preprocessings hand the network uint8 (Pillow's) or float in [0, 1] (the
    release's); the same picture must score the same either way, in eval mode (no dropout:
    two calls agree)."""
    model = inception.create_model(tiny_config, rngs=0)
    size = tiny_config.model.image_size
    images = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    predict_fn = predict.predict_fn(model)
    from_uint8 = predict_fn(images)
    assert from_uint8.shape == (3, tiny_config.model.num_classes)
    np.testing.assert_allclose(from_uint8.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(predict_fn(images.astype(np.float32) / 255.0), from_uint8, atol=1e-6)
    np.testing.assert_array_equal(predict_fn(images), from_uint8)
