"""SmoothGrad maps (paper section 4, Fig 4) on hand-built networks whose evidence lies in known
places, and the heat-map overlay over the grayscale image."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from marco_jax.serving import saliency, smoothgrad

SIZE = 16
HALF = SIZE // 2
# Per class: the rows and columns its logit looks at (classes 2 and 3 look at nothing).
REGIONS = {0: (slice(0, HALF), slice(0, HALF)), 1: (slice(HALF, SIZE), slice(HALF, SIZE))}


class RegionModel(nnx.Module):
    """logit_0 depends only on the top-left quarter, logit_1 only on the bottom-right one.

    linear: logit_c = sum over its quarter of x . w (per-channel weights w), so the gradient is w
    there and 0 elsewhere, whatever the noise; otherwise sum of tanh(x . w), whose gradient
    depends on the input, so that the noise matters.
    """

    def __init__(self, weights: tuple[float, float, float], linear: bool):
        self.weights = nnx.Param(jnp.asarray(weights, jnp.float32))
        self.linear = linear

    def __call__(self, images: jnp.ndarray, train: bool) -> jnp.ndarray:
        del train
        projected = images @ self.weights[...]
        evidence = projected if self.linear else jnp.tanh(projected)
        logits = [evidence[:, rows, cols].sum(axis=(1, 2)) for rows, cols in REGIONS.values()]
        zeros = jnp.zeros_like(logits[0])
        return jnp.stack([*logits, zeros, zeros], axis=-1)


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def _mask(class_index: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[REGIONS[class_index]] = True
    return mask


@pytest.mark.parametrize("class_index", [0, 1])
def test_heat_lies_where_the_class_evidence_is(class_index):
    model = RegionModel((0.5, -2.0, 1.0), linear=False)
    heat = smoothgrad.smoothgrad(model, _image(), class_index, num_samples=16)
    assert heat.shape == (SIZE, SIZE) and heat.dtype == np.float32
    inside, outside = heat[_mask(class_index)], heat[~_mask(class_index)]
    assert inside.min() > 0 and np.all(outside == 0)


@pytest.mark.parametrize(("mode", "expected"), [("squared", 4.0), ("abs", 2.0)])
def test_modes_and_the_maximum_over_channels(mode, expected):
    """A linear logit has the gradient w = (0.5, -2, 1) everywhere in its quarter: the map is the
    largest channel's |w| (abs) or w^2 (squared), however noisy the samples."""
    model = RegionModel((0.5, -2.0, 1.0), linear=True)
    heat = smoothgrad.smoothgrad(model, _image(), 0, num_samples=5, noise_fraction=0.5, mode=mode)
    np.testing.assert_allclose(heat[_mask(0)], expected, rtol=1e-6)
    assert np.all(heat[~_mask(0)] == 0)


def test_noise_is_added_and_seeded():
    model = RegionModel((0.5, -2.0, 1.0), linear=False)
    image = _image()
    kwargs = {"num_samples": 6, "sample_batch_size": 4}
    first = smoothgrad.smoothgrad(model, image, 0, seed=3, **kwargs)
    np.testing.assert_array_equal(first, smoothgrad.smoothgrad(model, image, 0, seed=3, **kwargs))
    assert not np.allclose(first, smoothgrad.smoothgrad(model, image, 0, seed=4, **kwargs))
    # Batching the samples differently draws the same noise: the same map.
    one_by_one = smoothgrad.smoothgrad(model, image, 0, seed=3, num_samples=6, sample_batch_size=1)
    np.testing.assert_allclose(one_by_one, first, rtol=1e-5)
    # Without noise it is the plain gradient: max over channels of (w (1 - tanh^2(x . w)))^2.
    x = image.astype(np.float32) / 255 * 2 - 1
    w = np.array([0.5, -2.0, 1.0], np.float32)
    plain = np.max((w * (1 - np.tanh(x @ w) ** 2)[..., None]) ** 2, axis=-1)
    noiseless = smoothgrad.smoothgrad(model, image, 0, num_samples=2, noise_fraction=0.0)
    np.testing.assert_allclose(noiseless[_mask(0)], plain[_mask(0)], rtol=1e-4)
    assert not np.allclose(first[_mask(0)], plain[_mask(0)], rtol=1e-2)


def test_bad_arguments_are_named():
    model = RegionModel((1.0, 1.0, 1.0), linear=True)
    with pytest.raises(ValueError, match=r"uint8 or float \[H, W, 3\], got int32"):
        smoothgrad.smoothgrad(model, _image().astype(np.int32), 0)
    with pytest.raises(ValueError, match="mode must be one of"):
        smoothgrad.smoothgrad(model, _image(), 0, mode="signed")
    with pytest.raises(ValueError, match="num_samples"):
        smoothgrad.smoothgrad(model, _image(), 0, num_samples=0)


def test_overlay_is_a_heat_map_over_the_grayscale_image(tmp_path):
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[..., 0] = 200  # a red picture with a blue stripe: nothing gray about it
    image[:, :4, 2] = 255
    heat = np.zeros((SIZE, SIZE), np.float32)
    heat[HALF:, HALF:] = np.linspace(1, 2, HALF * HALF).reshape(HALF, HALF)
    path = tmp_path / "maps" / "drop.jpg.png"
    saliency.overlay_png(path, image, heat)
    with Image.open(path) as written:
        assert written.format == "PNG" and written.mode == "RGB"
        pixels = np.asarray(written)
    np.testing.assert_array_equal(pixels, saliency.overlay(image, heat))
    # Where there is no heat: exactly the gray copy (ITU-R 601 luma, as Pillow's "L").
    gray = np.asarray(Image.fromarray(image).convert("L"))
    cold = heat == 0
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel][cold], gray[cold])
    # Where it is hot: coloured, and the hottest pixels furthest from the gray.
    hot = pixels[HALF:, HALF:].astype(int)
    assert np.all(hot.max(axis=-1) - hot.min(axis=-1) > 0)
    departure = np.abs(hot - gray[HALF:, HALF:, None]).sum(axis=-1)
    assert departure[-1, -1] > departure[0, 0]
