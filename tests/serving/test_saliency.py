"""SmoothGrad maps (paper section 4, Fig 4) on hand-built networks whose evidence lies in known
places; the heat over the grayscale image, mapped back onto the photograph's own pixels, beside
it, with a colour bar."""

import io

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from marco_jax.data import preprocess
from marco_jax.serving import saliency, saliency_figure, smoothgrad

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


def test_blend_is_heat_over_the_grayscale_image():
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[..., 0] = 200  # a red picture with a blue stripe: nothing gray about it
    image[:, :4, 2] = 255
    saliency_map = np.zeros((SIZE, SIZE), np.float32)
    saliency_map[HALF:, HALF:] = np.linspace(1, 2, HALF * HALF).reshape(HALF, HALF)
    heat = saliency.relative_heat(saliency_map)
    # 1 at the 99th percentile and above, in proportion below it.
    assert heat.max() == 1.0 and heat[HALF, HALF] == pytest.approx(
        1 / np.percentile(saliency_map, 99)
    )
    pixels = saliency.blend(image, heat)
    assert pixels.dtype == np.uint8 and pixels.shape == image.shape
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
    assert np.all(saliency.relative_heat(np.zeros((4, 4))) == 0)  # a flat map: no heat


def test_heat_goes_back_onto_the_models_square_of_the_original():
    """A 40 x 60 photograph, central_fraction 0.5: the model saw the 20 px square at rows
    10..29, columns 20..39, resampled to 8 px. A map hot in its top-left quarter heats rows
    10..19, columns 20..29 of the original, and nothing outside the square."""
    preprocessing = preprocess.Preprocessing(image_size=8, central_fraction=0.5)
    square = preprocessing.eval_square(40, 60)
    assert square == (10.0, 20.0, 20.0)
    heat_map = np.zeros((8, 8))
    heat_map[:4, :4] = 1.0
    heat, inside = saliency_figure.heat_on_original(heat_map, 40, 60, square)
    assert heat.shape == (40, 60) and inside.sum() == 20 * 20
    assert inside[10:30, 20:40].all()
    assert np.all(heat[~inside] == 0)
    # Each map pixel covers 2.5 original pixels; bilinear between pixel centres: original row
    # y sits at (y + 0.5 - 10) * 0.4 - 0.5 in the map, so rows 10..18 (map -0.3..2.9) are fully
    # hot, rows 19 and 20 (map 3.3 and 3.7) between map rows 3 (hot) and 4 (cold); the same
    # along columns, from column 20.
    np.testing.assert_allclose(heat[10:19, 20:29], 1.0)
    assert heat[19, 20] == pytest.approx(0.7) and heat[20, 20] == pytest.approx(0.3)
    assert heat[19, 29] == pytest.approx(0.7 * 0.7) and heat[19, 19] == 0.0
    assert np.all(heat[21:30, 31:40] == 0.0)
    # The release's integer square (tf1_bilinear) is the same geometry, in whole pixels.
    release = preprocess.Preprocessing(8, 1.0, "tf1_bilinear")
    assert release.eval_square(41, 60) == (0, 9, 41)


def test_figure_shows_the_photograph_beside_the_heat_with_a_colour_bar(tmp_path):
    rng = np.random.default_rng(0)
    photograph = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)  # its own 400 x 300 px
    square = preprocess.Preprocessing(image_size=SIZE, central_fraction=1.0).eval_square(300, 400)
    heat_map = np.zeros((SIZE, SIZE))
    heat_map[:HALF, :HALF] = 1.0  # the top-left of the central square
    path = tmp_path / "maps" / "drop.jpg.png"
    saliency_figure.write_figure_png(path, photograph, heat_map, square, title="SmoothGrad")
    with Image.open(path) as written:
        assert written.format == "PNG"
        figure = np.asarray(written.convert("RGB"))
    top = saliency_figure.PANEL_TOP
    # Left: the photograph itself, pixel for pixel, at its own resolution.
    np.testing.assert_array_equal(figure[top : top + 300, :400], photograph)
    # Right (after a gap): the heat over it; hot in the square's top-left, dimmed outside the
    # square (columns 0..49 and 350..399 of the photograph), gray elsewhere.
    right = next(x for x in range(400, 500) if (figure[top : top + 300, x] != 255).any())
    overlay = figure[top : top + 300, right : right + 400].astype(int)
    gray = np.asarray(Image.fromarray(photograph).convert("L"), int)
    np.testing.assert_array_equal(overlay[250:290, 100:340, 0], gray[250:290, 100:340])
    hot = overlay[20:120, 70:180]
    assert np.mean(hot.max(axis=-1) - hot.min(axis=-1)) > 40  # coloured
    assert np.all(overlay[:, 10:40].max(axis=-1) <= 0.55 * 255 + 1)  # outside: dimmed
    # The colour bar: inferno from black (0) at the bottom to pale yellow (1) at the top.
    bar_x = right + 400 + 16 + 9
    top_color, bottom_color = figure[top + 3, bar_x], figure[top + 296, bar_x]
    assert top_color[0] > 200 and top_color[1] > 200 and bottom_color.max() < 40


def test_a_small_image_is_enlarged_by_a_whole_factor():
    photograph = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    png = saliency_figure.figure_png(
        photograph, np.ones((SIZE, SIZE)), (-4.0, 0.0, 32.0), title="t"
    )
    with Image.open(io.BytesIO(png)) as written:
        figure = np.asarray(written.convert("RGB"))
    top = saliency_figure.PANEL_TOP
    # 8 x 8 blocks (256 / 32): every 8th pixel is the photograph.
    np.testing.assert_array_equal(figure[top : top + 192 : 8, 0:256:8], photograph)
    np.testing.assert_array_equal(figure[top + 7 : top + 192 : 8, 7:256:8], photograph)
    # A 1 x 8 px image (16-bit PNGs in the lab folder): its square is under a pixel wide.
    strip = photograph[:1, :8]
    square = preprocess.Preprocessing(SIZE, 0.875).eval_square(1, 8)
    png = saliency_figure.figure_png(strip, np.ones((SIZE, SIZE)), square, title="t")
    with Image.open(io.BytesIO(png)) as written:
        figure = np.asarray(written.convert("RGB"))
    np.testing.assert_array_equal(figure[top : top + 32 : 32, 0:256:32], strip)
