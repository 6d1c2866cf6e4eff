"""marco_jax.data.preprocess against its specification (paper section 3, "Data Preprocessing and
Augmentation"): exact eval crops, patches at the eval scale, flip rates, rot90 off by default."""

import io
import math

import numpy as np
import pytest
from helpers import REPO
from PIL import Image, ImageOps

from marco_jax.config_utils import load_config
from marco_jax.data import preprocess

# A binomial count stays within this many standard deviations of its mean except with
# probability < 1e-6: the rate tests below cannot flake.
SIGMAS = 5.0


def _encode(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, fmt)
    return buffer.getvalue()


def _unique_pixels(height: int, width: int) -> np.ndarray:
    """An image whose pixels are all different (up to 250 pixels), so any crop or flip of it is
    identifiable: pixel k is (3k, 3k + 1, 3k + 2) modulo the prime 251."""
    assert height * width < 251
    values = np.arange(height * width * 3).reshape(height, width, 3)
    return (values % 251).astype(np.uint8)


def _coordinate_ramp(height: int, width: int) -> np.ndarray:
    """Red = column, green = row: linear, so antialiased bilinear resampling keeps it linear and
    the output tells which source coordinates each output pixel came from."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([cols, rows, np.zeros_like(rows)], axis=-1).astype(np.uint8)


def _within_binomial(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= SIGMAS * math.sqrt(n * p * (1 - p))


def test_decode_image_gives_rgb_uint8_for_every_mode():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (7, 9), dtype=np.uint8)

    np.testing.assert_array_equal(preprocess.decode_image(_encode(rgb, "PNG")), rgb)
    decoded_gray = preprocess.decode_image(_encode(gray, "PNG"))
    assert decoded_gray.shape == (7, 9, 3) and decoded_gray.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(decoded_gray[..., channel], gray)
    jpeg = preprocess.decode_image(_encode(rgb, "JPEG"))
    assert jpeg.shape == (7, 9, 3) and jpeg.dtype == np.uint8


def test_pil_and_numpy_inputs_give_identical_crops():
    """The pipelines pass `decode`'s PIL image (formats other than JPEG), tests and `classify`
    pass arrays: same pixels."""
    rng = np.random.default_rng(5)
    data = _encode(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8), "PNG")
    pil, array = preprocess.decode(data), preprocess.decode_image(data)
    assert pil.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(pil), array)
    np.testing.assert_array_equal(
        preprocess.center_crop_and_resize(pil, 24, 0.875),
        preprocess.center_crop_and_resize(array, 24, 0.875),
    )
    kwargs = dict(
        size=24,
        central_fraction=0.875,
        flip_left_right_prob=0.5,
        flip_up_down_prob=0.5,
        random_rot90=True,
    )
    np.testing.assert_array_equal(
        preprocess.train_transform(pil, np.random.default_rng(1), **kwargs),
        preprocess.train_transform(array, np.random.default_rng(1), **kwargs),
    )


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_decoding_gives_pillows_pixels_and_orientation(mode, orientation):
    """JPEGs are decoded by libjpeg-turbo (simplejpeg), not Pillow: the same pixels, turned by
    the EXIF orientation as Pillow's exif_transpose turns them."""
    rng = np.random.default_rng(orientation)
    shape = (36, 52, 3) if mode == "RGB" else (36, 52)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
        buffer, "JPEG", quality=90, exif=exif
    )
    with Image.open(buffer) as pillow:
        expected = np.asarray(ImageOps.exif_transpose(pillow).convert("RGB"))
    decoded = preprocess.decode_image(buffer.getvalue())
    assert decoded.shape == expected.shape
    np.testing.assert_array_equal(decoded, expected)


def test_decode_drops_alpha_the_way_image_io_does():
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0  # fully transparent: composited onto image_io's white background
    decoded = preprocess.decode_image(_encode(rgba, "PNG"))
    assert decoded.shape == (4, 5, 3)
    np.testing.assert_array_equal(decoded, 255)


def test_decode_image_names_the_problem_for_non_images():
    with pytest.raises(ValueError, match="Cannot decode an image from 11 bytes"):
        preprocess.decode_image(b"not a jpeg!")
    truncated = _encode(np.zeros((64, 64, 3), np.uint8), "JPEG")[:100]
    with pytest.raises(ValueError, match="Cannot decode"):
        preprocess.decode_image(truncated)


def test_center_crop_is_the_exact_central_square_when_no_resize_is_needed():
    image = _unique_pixels(8, 12)
    # Shorter side 8, fraction 0.5 -> a 4x4 square at rows 2..5, columns 4..7, already 4 px.
    out = preprocess.center_crop_and_resize(image, size=4, central_fraction=0.5)
    np.testing.assert_array_equal(out, image[2:6, 4:8])


def test_center_crop_and_resize_samples_the_right_region_at_the_right_scale():
    image = _coordinate_ramp(120, 200)
    # Shorter side 120, fraction 0.5 -> side 60 at top 30, left 70; 60 px -> 20 px is 3:1, so
    # output pixel (i, j) is centred on source column 70 + 3 j + 1 and row 30 + 3 i + 1.
    out = preprocess.center_crop_and_resize(image, size=20, central_fraction=0.5).astype(int)
    j = np.arange(20)
    np.testing.assert_allclose(out[:, :, 0], np.broadcast_to(71 + 3 * j, (20, 20)), atol=1)
    np.testing.assert_allclose(out[:, :, 1], np.broadcast_to(31 + 3 * j[:, None], (20, 20)), atol=1)


def test_center_crop_beyond_the_image_reflects_its_borders():
    image = _unique_pixels(4, 4)
    out = preprocess.center_crop_and_resize(image, size=8, central_fraction=2.0)
    np.testing.assert_array_equal(out, np.pad(image, ((2, 2), (2, 2), (0, 0)), mode="reflect"))


def test_center_crop_is_deterministic_and_rejects_bad_fractions():
    image = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    first = preprocess.center_crop_and_resize(image, 16, 0.875)
    np.testing.assert_array_equal(first, preprocess.center_crop_and_resize(image, 16, 0.875))
    with pytest.raises(ValueError, match="central_fraction"):
        preprocess.center_crop_and_resize(image, 16, 0.0)


def test_random_crop_uses_the_eval_scale_and_covers_every_offset():
    # Shorter side 60 at fraction 1 -> scale 20/60 = 1/3, scaled image 20 x 30: the patch row is
    # fixed, the column offset is uniform over 0..10 (output pixel (0, 0) sits on 3 * offset + 1).
    image = _coordinate_ramp(60, 90)
    offsets = []
    for seed in range(400):
        patch = preprocess.random_crop(image, np.random.default_rng(seed), 20, 1.0).astype(int)
        np.testing.assert_allclose(np.diff(patch[:, :, 0], axis=1), 3, atol=1)  # eval scale
        np.testing.assert_allclose(patch[:, 0, 1], 1 + 3 * np.arange(20), atol=1)  # row fixed
        offsets.append((patch[0, 0, 0] - 1) / 3)
    np.testing.assert_allclose(offsets, np.round(offsets), atol=0.34)
    assert set(np.round(offsets).astype(int)) == set(range(11))


def test_random_crop_pads_by_reflection_when_the_scaled_image_is_smaller():
    image = _unique_pixels(6, 6)
    padded = np.pad(image, ((6, 6), (6, 6), (0, 0)), mode="reflect")
    seen = set()
    for seed in range(50):
        # Fraction 2 -> scale 1, a 12 px patch around a 6 px image: it sits at an offset in 0..6.
        patch = preprocess.random_crop(image, np.random.default_rng(seed), 12, 2.0)
        matches = [
            (top, left)
            for top in range(7)
            for left in range(7)
            if np.array_equal(patch, padded[top : top + 12, left : left + 12])
        ]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 5


def _orientations(image: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "identity": image,
        "left_right": image[:, ::-1],
        "up_down": image[::-1],
        "both": image[::-1, ::-1],
        "rot90": np.rot90(image, 1),
        "rot270": np.rot90(image, 3),
        "transpose": np.transpose(image, (1, 0, 2)),
        "anti_transpose": np.rot90(image, 2).transpose(1, 0, 2),
    }


def _count_orientations(n: int, **kwargs) -> dict[str, int]:
    """train_transform on an image that the crop leaves as is (scale 1, patch = image)."""
    image = _unique_pixels(8, 8)
    views = _orientations(image)
    counts = dict.fromkeys(views, 0)
    rng = np.random.default_rng(1234)
    for _ in range(n):
        out = preprocess.train_transform(image, rng, size=8, central_fraction=1.0, **kwargs)
        (name,) = [k for k, v in views.items() if np.array_equal(out, v)]
        counts[name] += 1
    return counts


@pytest.mark.parametrize(("p_left_right", "p_up_down"), [(0.5, 0.5), (0.2, 0.9)])
def test_flips_happen_at_the_configured_rates(p_left_right, p_up_down):
    n = 2000
    counts = _count_orientations(
        n,
        flip_left_right_prob=p_left_right,
        flip_up_down_prob=p_up_down,
        random_rot90=False,
    )
    assert counts["rot90"] + counts["rot270"] + counts["transpose"] + counts["anti_transpose"] == 0
    assert _within_binomial(counts["left_right"] + counts["both"], n, p_left_right)
    assert _within_binomial(counts["up_down"] + counts["both"], n, p_up_down)
    # Independent flips: "both" at the product rate.
    assert _within_binomial(counts["both"], n, p_left_right * p_up_down)


def test_flip_probabilities_zero_and_one_are_exact():
    never = _count_orientations(
        50, flip_left_right_prob=0.0, flip_up_down_prob=0.0, random_rot90=False
    )
    always = _count_orientations(
        50, flip_left_right_prob=1.0, flip_up_down_prob=1.0, random_rot90=False
    )
    assert never["identity"] == 50
    assert always["both"] == 50


def test_rot90_is_off_by_default_and_reaches_all_eight_orientations_when_on():
    config = load_config(REPO / "configs" / "default.py")
    assert config.input.random_rot90 is False
    n = 2000
    counts = _count_orientations(
        n, flip_left_right_prob=0.5, flip_up_down_prob=0.5, random_rot90=True
    )
    for name, count in counts.items():
        assert _within_binomial(count, n, 1 / 8), (name, counts)


def test_train_transform_is_deterministic_for_a_seed():
    image = np.random.default_rng(3).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    kwargs = dict(
        size=32,
        central_fraction=0.875,
        flip_left_right_prob=0.5,
        flip_up_down_prob=0.5,
        random_rot90=False,
    )
    first = preprocess.train_transform(image, np.random.default_rng(7), **kwargs)
    again = preprocess.train_transform(image, np.random.default_rng(7), **kwargs)
    np.testing.assert_array_equal(first, again)
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    others = [
        preprocess.train_transform(image, np.random.default_rng(s), **kwargs) for s in range(5)
    ]
    assert any(not np.array_equal(first, other) for other in others)
