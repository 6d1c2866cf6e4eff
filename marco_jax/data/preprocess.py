"""Host-side image preprocessing shared by training, evaluation and inference (numpy/PIL, no jax).

Bruno et al. 2018, section 3 "Data Preprocessing and Augmentation": training takes "random
599x599 patches of the input images", flipped left-right and up-down with 50 % probability each;
"the test images are center cropped and resized to 599x599". The photometric distortions run on
the accelerator (`data.augment`); only what needs the encoded bytes or the full-size image
stays here, so the host ships fixed-size uint8 patches.

Both paths share one geometry so that a model sees the same pixel scale in training and at test
time: evaluation maps a centred square of side `central_fraction * shorter side` onto `size`
pixels; training cuts random squares of that side. Two resamplers (`Preprocessing.resize_method`):
- "tf1_bilinear", the release's (its graph: `resize_image_with_crop_or_pad` to the central
  min(height, width) square, `ResizeBilinear` with align_corners=False and TF1's legacy pixel
  centres, no antialiasing, on float [0, 1] from `convert_image_dtype`). Evaluation returns
  float32 in [0, 1], unrounded, so an image scores as the release scores it. Written here in
  numpy (`tf1_resample`) because scoring must not need TensorFlow.
- "pil_antialias", Pillow's antialiased bilinear (the Table-3 configs): one resampling step from
  the source (PIL's `resize(box=...)`), costing in proportion to the output; uint8 output.
Training patches are uint8 with either resampler: the photometric distortions that follow dwarf
the rounding, and uint8 is a quarter of float32 on the host-device link.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from marco_jax.data import image_io, jpeg

RESIZE_METHODS = ("tf1_bilinear", "pil_antialias")
JPEG_DCT_METHODS = ("fast", "accurate")

# Antialiased bilinear (PIL scales the kernel when shrinking), so downscaled drops keep their fine
# crystal edges without aliasing; used identically by the train and eval paths.
_RESAMPLE = Image.Resampling.BILINEAR
_BORDER_TOLERANCE = 1e-6  # source pixels

# A decoded image: uint8 RGB [H, W, 3], or the PIL image `decode` returns for formats other than
# JPEG. The pipelines keep the PIL image so that a full-size photograph is never copied into
# numpy and back (at 299 px that copying cost more than the JPEG decoding).
ImageLike = np.ndarray | Image.Image


def decode(data: bytes, jpeg_dct: str = "accurate") -> ImageLike:
    """Decodes encoded image bytes (JPEG, PNG, BMP, TIFF, ...) to an RGB image.

    Modes (grayscale, palette, RGBA, 16-bit, ...) and the EXIF orientation are handled by
    `image_io`'s rules, so that a photograph gives the same pixels in training, evaluation and
    `classify`; plain RGB, the common case, skips the conversion copy. JPEGs are decoded by
    libjpeg-turbo through simplejpeg (`jpeg.decode_jpeg`, strict): with jpeg_dct="accurate" its
    pixels are Pillow's, and a training patch of a real drop costs 1.15x (599 px) to 1.4x
    (299 px) less than through Pillow (measured on shared/real_drops); jpeg_dct="fast" is
    libjpeg's fast integer DCT without the EXIF orientation, as the release's DecodeJpeg.
    """
    try:
        if bytes(data[:3]) == b"\xff\xd8\xff":  # a JPEG: libjpeg-turbo via simplejpeg
            pixels = jpeg.decode_jpeg(data, fast_dct=jpeg_dct == "fast")
            if jpeg_dct == "fast":  # as TensorFlow's DecodeJpeg, which ignores EXIF
                return pixels
            return image_io.apply_orientation(pixels, _exif_orientation(data))
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


def _exif_orientation(data: bytes) -> int:
    """A JPEG's EXIF orientation (1 = as stored), read from its header by Pillow; 1 without
    opening it when the bytes hold no EXIF header ("Exif\\0\\0"), since opening costs as much
    as decoding a small image."""
    if b"Exif\x00\x00" not in data:
        return 1
    with Image.open(io.BytesIO(data)) as image:
        return image.getexif().get(image_io.EXIF_ORIENTATION, 1)


def decode_image(data: bytes, jpeg_dct: str = "accurate") -> np.ndarray:
    """Decodes encoded image bytes to RGB uint8 [H, W, 3] (see `decode`)."""
    return np.asarray(decode(data, jpeg_dct))


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
    return pil_resize(image, size, size, (left, top, left + side, top + side))


def pil_resize(
    image: ImageLike, width: int, height: int, box: tuple[float, float, float, float]
) -> np.ndarray:
    """The source rectangle `box` (left, top, right, bottom; inside the image) resampled to
    width x height uint8 pixels by the "pil_antialias" resampler."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return np.asarray(image.resize((width, height), _RESAMPLE, box=box))


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

    The pixels are moved as whole items (a void dtype of the pixel's bytes): copying a mirrored
    patch then costs half as much as moving its bytes one by one (measured at 599 px, where
    that copy was a third of a pre-scaled image's host time).
    """
    channels = image.shape[2]
    pixels = image.view(np.dtype((np.void, channels * image.itemsize)))[..., 0]
    if rng.random() < flip_left_right_prob:
        pixels = pixels[:, ::-1]
    if rng.random() < flip_up_down_prob:
        pixels = pixels[::-1]
    if random_rot90:
        pixels = np.rot90(pixels, k=int(rng.integers(4)))
    pixels = np.ascontiguousarray(pixels)
    return pixels.view(image.dtype).reshape(*pixels.shape, channels)


def train_transform(
    image: ImageLike,
    rng: np.random.Generator,
    *,
    size: int,
    central_fraction: float,
    flip_left_right_prob: float,
    flip_up_down_prob: float,
    random_rot90: bool,
    resize_method: str = "pil_antialias",
) -> np.ndarray:
    """The host part of training augmentation: random patch at the eval scale, then flips.

    resize_method: as `Preprocessing.resize_method`, so the patches are resampled as the
    evaluation images are.
    """
    if resize_method == "tf1_bilinear":
        patch = tf1_random_crop(image, rng, size, central_fraction)
    else:
        patch = random_crop(image, rng, size, central_fraction)
    return random_flips_and_rotation(
        patch,
        rng,
        flip_left_right_prob=flip_left_right_prob,
        flip_up_down_prob=flip_up_down_prob,
        random_rot90=random_rot90,
    )


# ----------------------------------------------------------------------------- TF1's resampler


def _legacy_taps(
    out_size: int, in_size: int, scale: np.float32 | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TF1 ResizeBilinear's source taps along one axis (resize_bilinear_op.cc, LegacyScaler):
    in = i * scale in float32, lower = floor(in), upper = min(ceil(in), in_size - 1).

    scale: source pixels per output pixel; TF's float32(in_size) / float32(out_size) when None.
    """
    if scale is None:
        scale = np.float32(in_size) / np.float32(out_size)
    position = np.arange(out_size, dtype=np.float32) * np.float32(scale)
    lower = np.floor(position)
    upper = np.minimum(np.ceil(position), in_size - 1).astype(np.int64)
    return lower.astype(np.int64), upper, (position - lower).astype(np.float32)


def tf1_resample(
    pixels: np.ndarray,
    height: int,
    width: int,
    y_scale: np.float32 | None = None,
    x_scale: np.float32 | None = None,
) -> np.ndarray:
    """`tf.compat.v1.image.resize_bilinear(align_corners=False)` of one [H, W, C] image to
    height x width (float32), with TF's float32 arithmetic and order (top/bottom rows lerped
    along x, then y); y_scale/x_scale override TF's in/out ratios (`_legacy_taps`).

    uint8 pixels are taken as `convert_image_dtype` gives them (float [0, 1]); that conversion
    is elementwise, so it is done after gathering the taps: the same values, computed on four
    output-sized arrays instead of the whole photograph (measured: 2.5x less time at 599 px).
    """
    top, bottom, y_lerp = _legacy_taps(height, pixels.shape[0], y_scale)
    left, right, x_lerp = _legacy_taps(width, pixels.shape[1], x_scale)
    x_lerp = x_lerp[None, :, None]

    def unit(values: np.ndarray) -> np.ndarray:
        return _to_unit_float(values) if values.dtype == np.uint8 else values

    def along_x(rows: np.ndarray) -> np.ndarray:  # np.take: ~3x faster than rows[:, left]
        rows_left = unit(np.take(rows, left, axis=1))
        rows_right = unit(np.take(rows, right, axis=1))
        return rows_left + (rows_right - rows_left) * x_lerp

    upper, lower = along_x(np.take(pixels, top, axis=0)), along_x(np.take(pixels, bottom, axis=0))
    return upper + (lower - upper) * y_lerp[:, None, None]


def _to_unit_float(pixels: np.ndarray) -> np.ndarray:
    """`tf.image.convert_image_dtype(uint8 -> float32)`: a multiplication by float32(1 / 255)."""
    return pixels.astype(np.float32) * np.float32(1.0 / 255.0)


def _tf1_square_side(height: int, width: int, central_fraction: float) -> int:
    if not 0.0 < central_fraction <= 1.0:
        raise ValueError(
            f"central_fraction={central_fraction}: the tf1_bilinear resize crops integer squares "
            "inside the image, so it needs 0 < central_fraction <= 1 (the release uses 1.0)."
        )
    if height < 1 or width < 1:
        raise ValueError(f"Cannot preprocess an empty image of shape {height}x{width}.")
    return max(1, int(central_fraction * min(height, width)))


def tf1_crop_and_resize(image: ImageLike, top: int, left: int, side: int, size: int) -> np.ndarray:
    """The square [top, top+side) x [left, left+side) as float [0, 1], TF1-resized to size."""
    square = np.asarray(image)[top : top + side, left : left + side]
    if side == size:  # TF1's resize at scale 1 samples every pixel with weight 0: a copy
        return _to_unit_float(square)
    return tf1_resample(square, size, size)


def tf1_center_crop_and_resize(image: ImageLike, size: int, central_fraction: float) -> np.ndarray:
    """The release's evaluation transform: float32 [size, size, 3] in [0, 1].

    With central_fraction 1.0 this is the graph's `resize_image_with_crop_or_pad` to the central
    min(height, width) square (offsets (extent - side) // 2), then its `ResizeBilinear`.
    """
    height, width = _height_width(image)
    side = _tf1_square_side(height, width, central_fraction)
    return tf1_crop_and_resize(image, (height - side) // 2, (width - side) // 2, side, size)


def tf1_random_crop(
    image: ImageLike, rng: np.random.Generator, size: int, central_fraction: float
) -> np.ndarray:
    """A uniformly placed square of the evaluation side, TF1-resized, as uint8 for training."""
    height, width = _height_width(image)
    side = _tf1_square_side(height, width, central_fraction)
    top = int(rng.integers(height - side + 1))
    left = int(rng.integers(width - side + 1))
    if side == size:  # a pre-scaled image (data.prescale): the uint8 square is the patch
        return np.asarray(image)[top : top + side, left : left + side]
    patch = tf1_crop_and_resize(image, top, left, side, size)
    return np.clip(np.rint(patch * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- the choice


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input; recorded in exports so scoring repeats it.

    `eval_transform` returns what the model takes: float32 [S, S, 3] in [0, 1] for
    "tf1_bilinear", uint8 for "pil_antialias" (`predict.to_model_input` maps both to [-1, 1]).
    """

    image_size: int
    central_fraction: float
    resize_method: str = "pil_antialias"
    jpeg_dct: str = "accurate"

    def __post_init__(self):
        if self.resize_method not in RESIZE_METHODS:
            raise ValueError(
                f"resize_method={self.resize_method!r}: use one of {RESIZE_METHODS} "
                "(config.input.resize_method)."
            )
        if self.jpeg_dct not in JPEG_DCT_METHODS:
            raise ValueError(
                f"jpeg_dct={self.jpeg_dct!r}: use one of {JPEG_DCT_METHODS} "
                "(config.input.jpeg_dct)."
            )
        if self.resize_method == "tf1_bilinear":
            _tf1_square_side(1, 1, self.central_fraction)  # validates the fraction
        elif self.central_fraction <= 0:
            raise ValueError(f"central_fraction must be > 0, got {self.central_fraction}.")

    @classmethod
    def from_config(cls, config: Any) -> Preprocessing:
        """From a run's config; configs older than the choice used Pillow and the accurate DCT."""
        inp = config.input
        return cls(
            int(config.model.image_size),
            float(inp.central_fraction),
            inp.get("resize_method", "pil_antialias"),
            inp.get("jpeg_dct", "accurate"),
        )

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> Preprocessing:
        return cls(
            int(metadata["image_size"]),
            float(metadata["central_fraction"]),
            metadata.get("resize_method", "pil_antialias"),
            metadata.get("jpeg_dct", "accurate"),
        )

    def to_metadata(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(np.float32 if self.resize_method == "tf1_bilinear" else np.uint8)

    def decode(self, data: bytes) -> ImageLike:
        return decode(data, self.jpeg_dct)

    def eval_transform(self, image: ImageLike) -> np.ndarray:
        if self.resize_method == "tf1_bilinear":
            return tf1_center_crop_and_resize(image, self.image_size, self.central_fraction)
        return center_crop_and_resize(image, self.image_size, self.central_fraction)
