"""marco_jax.data.augment against its specification: TF-slim's distort_color (paper section 3),
op by op against tf.image, the four orderings against slim's code, and the sampled ranges against
config.input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO

from marco_jax.config_utils import load_config
from marco_jax.data import augment

# float32 HSV round trips in TF and here differ by a few ulps.
ATOL = 1e-5


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def input_config():
    return load_config(REPO / "configs" / "default.py").input


def _images(seed: int, low: float = 0.0, high: float = 1.0, shape=(3, 12, 10, 3)) -> np.ndarray:
    """Random images, plus gray, two-equal-channel and out-of-range pixels (slim does not clip
    between ops, so later ops see values outside [0, 1])."""
    images = np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)
    images[0, 0, :4] = [[0.5, 0.5, 0.5], [0.2, 0.7, 0.7], [0.7, 0.7, 0.2], [0.0, 0.0, 0.0]]
    return images


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (-0.3, 1.3)])
@pytest.mark.parametrize("factor", [0.5, 0.77, 1.0, 1.5])
def test_adjust_saturation_matches_tf(tf, low, high, factor):
    images = _images(1, low, high)
    expected = tf.image.adjust_saturation(images, factor).numpy()
    np.testing.assert_allclose(augment.adjust_saturation(images, factor), expected, atol=ATOL)


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (-0.3, 1.3)])
@pytest.mark.parametrize("delta", [-0.2, -0.05, 0.0, 0.13, 0.2, 0.5])
def test_adjust_hue_matches_tf(tf, low, high, delta):
    images = _images(2, low, high)
    expected = tf.image.adjust_hue(images, delta).numpy()
    np.testing.assert_allclose(augment.adjust_hue(images, delta), expected, atol=ATOL)


@pytest.mark.parametrize("factor", [0.5, 1.2, 1.5])
def test_adjust_contrast_matches_tf_per_image_and_channel(tf, factor):
    image = _images(3)[1]
    expected = tf.image.adjust_contrast(image, factor).numpy()
    np.testing.assert_allclose(augment.adjust_contrast(image, factor), expected, atol=ATOL)


def test_adjust_brightness_matches_tf(tf):
    image = _images(4)[0]
    expected = tf.image.adjust_brightness(image, -32 / 255).numpy()
    np.testing.assert_allclose(augment.adjust_brightness(image, -32 / 255), expected, atol=ATOL)


def _slim_distort_color(tf, image, color_ordering, brightness, saturation, hue, contrast):
    """TF-slim inception_preprocessing.distort_color (fast_mode=False) with its random draws
    replaced by the given values."""
    if color_ordering == 0:
        image = tf.image.adjust_brightness(image, brightness)
        image = tf.image.adjust_saturation(image, saturation)
        image = tf.image.adjust_hue(image, hue)
        image = tf.image.adjust_contrast(image, contrast)
    elif color_ordering == 1:
        image = tf.image.adjust_saturation(image, saturation)
        image = tf.image.adjust_brightness(image, brightness)
        image = tf.image.adjust_contrast(image, contrast)
        image = tf.image.adjust_hue(image, hue)
    elif color_ordering == 2:
        image = tf.image.adjust_contrast(image, contrast)
        image = tf.image.adjust_hue(image, hue)
        image = tf.image.adjust_brightness(image, brightness)
        image = tf.image.adjust_saturation(image, saturation)
    elif color_ordering == 3:
        image = tf.image.adjust_hue(image, hue)
        image = tf.image.adjust_saturation(image, saturation)
        image = tf.image.adjust_contrast(image, contrast)
        image = tf.image.adjust_brightness(image, brightness)
    return tf.clip_by_value(image, 0.0, 1.0).numpy()


@pytest.mark.parametrize("ordering", range(4))
@pytest.mark.parametrize(
    "brightness, saturation, hue, contrast",
    [(32 / 255, 1.5, 0.2, 1.5), (-32 / 255, 0.5, -0.2, 0.5), (0.05, 0.8, 0.11, 1.3)],
)
def test_apply_distortions_is_slims_distort_color(
    tf, ordering, brightness, saturation, hue, contrast
):
    image = _images(5)[2]
    params = augment.DistortionParams(
        brightness_delta=jnp.float32(brightness),
        saturation_factor=jnp.float32(saturation),
        hue_delta=jnp.float32(hue),
        contrast_factor=jnp.float32(contrast),
        ordering=jnp.int32(ordering),
    )
    expected = _slim_distort_color(tf, image, ordering, brightness, saturation, hue, contrast)
    np.testing.assert_allclose(augment.apply_distortions(image, params), expected, atol=ATOL)


def test_sampled_params_hit_and_never_leave_the_paper_ranges(input_config):
    n = 4096
    params = jax.device_get(augment.sample_distortion_params(jax.random.key(0), n, input_config))
    specs = {
        "brightness_delta": (-32 / 255, 32 / 255),  # +-32 out of 255
        "saturation_factor": (0.5, 1.5),  # 50 % to 150 %
        "hue_delta": (-0.2, 0.2),  # +-0.2
        "contrast_factor": (0.5, 1.5),  # 50 % to 150 %
    }
    for name, (low, high) in specs.items():
        values = getattr(params, name)
        assert values.shape == (n,)
        assert values.min() >= low and values.max() <= high, name
        # Uniform draws: the extreme 2 % at each end are reached (miss probability 0.98**4096).
        assert values.min() < low + 0.02 * (high - low), name
        assert values.max() > high - 0.02 * (high - low), name
    counts = np.bincount(params.ordering, minlength=4)
    assert counts.sum() == n and len(counts) == 4
    # Each of slim's orderings with probability 1/4, within 5 binomial standard deviations.
    assert np.all(np.abs(counts - n / 4) <= 5 * np.sqrt(n * 0.25 * 0.75)), counts


def test_sampled_params_follow_the_config_fields(input_config):
    cfg = input_config.copy_and_resolve_references()
    cfg.brightness_delta = 0.01
    cfg.saturation_range = (0.9, 0.95)
    cfg.hue_delta = 0.02
    cfg.contrast_range = (1.1, 1.2)
    params = jax.device_get(augment.sample_distortion_params(jax.random.key(1), 512, cfg))
    assert np.abs(params.brightness_delta).max() <= 0.01
    assert params.saturation_factor.min() >= 0.9 and params.saturation_factor.max() <= 0.95
    assert np.abs(params.hue_delta).max() <= 0.02
    assert params.contrast_factor.min() >= 1.1 and params.contrast_factor.max() <= 1.2


@pytest.mark.parametrize(
    "field, value",
    [("hue_delta", 0.6), ("brightness_delta", -0.1), ("saturation_range", (1.5, 0.5))],
)
def test_invalid_ranges_are_refused_by_name(input_config, field, value):
    cfg = input_config.copy_and_resolve_references()
    cfg[field] = value
    with pytest.raises(ValueError, match=field):
        augment.sample_distortion_params(jax.random.key(0), 2, cfg)


def test_distort_color_draws_per_image_is_jittable_deterministic_and_clipped(input_config):
    # One image repeated: different outputs show each image gets its own draw.
    image = np.random.default_rng(6).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    batch = np.repeat(image, 8, axis=0)
    distort = jax.jit(lambda key, images: augment.distort_color(key, images, input_config))
    out = np.asarray(distort(jax.random.key(3), batch))
    assert out.shape == batch.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert len({o.tobytes() for o in out}) == 8
    np.testing.assert_array_equal(out, distort(jax.random.key(3), batch))
    assert not np.array_equal(out, distort(jax.random.key(4), batch))
    # Each image is slim's distortion of the input with that image's own sampled draw.
    params = augment.sample_distortion_params(jax.random.key(3), 8, input_config)
    expected = jax.jit(jax.vmap(augment.apply_distortions))(augment.to_unit_float(batch), params)
    np.testing.assert_allclose(out, expected, atol=ATOL)
