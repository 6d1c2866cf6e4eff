"""Host-side image preprocessing shared by training, evaluation and inference (numpy/PIL, no jax).

Bruno et al. 2018, section 3 "Data Preprocessing and Augmentation": training takes "random
599x599 patches of the input images", flipped left-right and up-down with 50 % probability each;
"the test images are center cropped and resized to 599x599". The photometric distortions run on
the accelerator (`marco_jax.augment`); only what needs the encoded bytes or the full-size image
stays here, so the host ships fixed-size uint8 patches.

Both paths share one geometry so that a model sees the same pixel scale in training and at test
time: evaluation maps a centred square of side `central_fraction * shorter side` onto `size`
pixels; training scales the image by that same factor and cuts a random `size` x `size` patch.
Crops and scaling are one resampling step from the source image (PIL's `resize(box=...)`), which
costs in proportion to the output, not to the (often much larger) source photograph.
"""

import io
import math

import numpy as np
from PIL import Image, ImageOps

from marco_jax import image_io

# Antialiased bilinear (PIL scales the kernel when shrinking), so downscaled drops keep their fine
# crystal edges without aliasing; used identically by the train and eval paths.
_RESAMPLE = Image.Resampling.BILINEAR
_BORDER_TOLERANCE = 1e-6  # source pixels

# A decoded image: uint8 RGB [H, W, 3], or the PIL image `decode` returns. The pipelines keep the
# PIL image so that a full-size photograph is never copied into numpy and back (at 299 px that
# copying cost more than the JPEG decoding).
ImageLike = np.ndarray | Image.Image


def decode(data: bytes) -> Image.Image:
    """Decodes encoded image bytes (JPEG, PNG, BMP, TIFF, ...) to an RGB PIL image.

    Modes (grayscale, palette, RGBA, 16-bit, ...) and the EXIF orientation are handled by
    `image_io`'s rules, so that a photograph gives the same pixels in training, evaluation and
    `classify`; plain RGB, the common case, skips the conversion copy.
    """
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        if image.mode == "RGB" and not image.has_transparency_data:
            return image
        return Image.fromarray(image_io.to_rgb8(image))
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, ...).
        head = bytes(data[:8])
        raise ValueError(
            f"Cannot decode an image from {len(data)} bytes starting with {head!r}: {e}. "
            "Expected an encoded JPEG/PNG/BMP/TIFF; rebuild the dataset or remove the record."
        ) from e


def decode_image(data: bytes) -> np.ndarray:
    """Decodes encoded image bytes to RGB uint8 [H, W, 3] (see `decode`)."""
    return np.asarray(decode(data))


def eval_scale(height: int, width: int, size: int, central_fraction: float) -> float:
    """Output pixels per source pixel of the evaluation transform, reused by training."""
    if central_fraction <= 0:
        raise ValueError(f"central_fraction must be > 0, got {central_fraction}.")
    if height < 1 or width < 1:
        raise ValueError(f"Cannot preprocess an empty image of shape {height}x{width}.")
    return size / (central_fraction * min(height, width))


def _height_width(image: ImageLike) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.height, image.width
    return image.shape[0], image.shape[1]


def _resample_box(image: ImageLike, top: float, left: float, side: float, size: int) -> np.ndarray:
    """Resamples the source square [top, top+side) x [left, left+side) to size x size pixels.

    Parts of the square outside the image are filled by reflecting the image at its borders.
    """
    height, width = _height_width(image)
    # Overshoots within float rounding of a border are not worth padding (copying) the image.
    pad_top = max(0, math.ceil(-top - _BORDER_TOLERANCE))
    pad_left = max(0, math.ceil(-left - _BORDER_TOLERANCE))
    pad_bottom = max(0, math.ceil(top + side - height - _BORDER_TOLERANCE))
    pad_right = max(0, math.ceil(left + side - width - _BORDER_TOLERANCE))
    if pad_top or pad_left or pad_bottom or pad_right:
        image = np.pad(
            np.asarray(image),
            ((pad_top, pad_bottom), (pad_left, pad_right), (0, 0)),
            mode="reflect",
        )
        top, left = top + pad_top, left + pad_left
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    box = (left, top, left + side, top + side)
    return np.asarray(image.resize((size, size), _RESAMPLE, box=box))


def center_crop_and_resize(image: ImageLike, size: int, central_fraction: float) -> np.ndarray:
    """The evaluation transform: the centred square of side central_fraction * shorter side,
    resized to size x size (paper section 3; TF-slim's Inception evaluation uses 0.875)."""
    height, width = _height_width(image)
    side = size / eval_scale(height, width, size, central_fraction)
    return _resample_box(image, (height - side) / 2, (width - side) / 2, side, size)


def _random_offset(rng: np.random.Generator, extent: float, size: int) -> int:
    """A uniform integer offset (in output pixels) of a size-long window inside `extent` pixels;
    when the scaled image is shorter than the window, where it sits inside the window instead."""
    low, high = sorted((0.0, extent - size))
    return int(rng.integers(math.ceil(low), math.floor(high) + 1))


def random_crop(
    image: ImageLike, rng: np.random.Generator, size: int, central_fraction: float
) -> np.ndarray:
    """A random size x size patch of the image scaled by the evaluation scale; reflection fills
    the patch where the scaled image is smaller than it (only when central_fraction > 1)."""
    height, width = _height_width(image)
    scale = eval_scale(height, width, size, central_fraction)
    top = _random_offset(rng, height * scale, size)
    left = _random_offset(rng, width * scale, size)
    return _resample_box(image, top / scale, left / scale, size / scale, size)


def random_flips_and_rotation(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    flip_left_right_prob: float,
    flip_up_down_prob: float,
    random_rot90: bool,
) -> np.ndarray:
    """Flips (and optionally rotates by a multiple of 90 degrees) a square patch.

    Drops have no preferred orientation, hence flips on both axes (paper section 3).
    """
    if rng.random() < flip_left_right_prob:
        image = image[:, ::-1]
    if rng.random() < flip_up_down_prob:
        image = image[::-1]
    if random_rot90:
        image = np.rot90(image, k=int(rng.integers(4)))
    return np.ascontiguousarray(image)


def train_transform(
    image: ImageLike,
    rng: np.random.Generator,
    *,
    size: int,
    central_fraction: float,
    flip_left_right_prob: float,
    flip_up_down_prob: float,
    random_rot90: bool,
) -> np.ndarray:
    """The host part of training augmentation: random patch at the eval scale, then flips."""
    patch = random_crop(image, rng, size, central_fraction)
    return random_flips_and_rotation(
        patch,
        rng,
        flip_left_right_prob=flip_left_right_prob,
        flip_up_down_prob=flip_up_down_prob,
        random_rot90=random_rot90,
    )
