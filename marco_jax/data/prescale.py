"""Pre-scaled storage: training images stored at the scale the training patches are cut at.

Why: a training patch of a full-size drop photograph (1280x960 to 2532x2028) costs a core a
full-size JPEG decode plus a resample to the evaluation scale, which kept the host at a few dozen
images/s per core, far below what an accelerator consumes. Stored at the training scale (the
shorter side image_size / central_fraction: 599 px for the release's preprocessing), an image
decodes several times faster, and its training patches are plain windows of it
(`preprocess.window_crop`, `train_transform(prescaled=True)`), never resampled a second time
(a second resampling blurred them: 12 % less high-frequency energy on the synthetic drops).
`bench/input_pipeline.py` measures the speed.

What changes, stated plainly:
- The pixels: each image is resampled once, from the original, by the training config's own
  resampler at the very scale its training patches take, rounded to uint8 (as training patches
  are anyway), and stored as JPEG at `jpeg_quality` with full-resolution chroma (lossy: the
  accuracy cost on the synthetic set is in tfds_marco/marco/README.md) or as PNG (lossless:
  a window is then the full-size patch: exactly at the origin for "tf1_bilinear", within 1
  level for "pil_antialias" at every offset; tests/data/test_prescale.py).
- The crop positions for "tf1_bilinear": random offsets fall on whole stored pixels instead of
  whole source pixels (the same uniform placement on another grid; "pil_antialias" draws output
  pixels in both cases).
- Not evaluation: the builder pre-scales only the train split, and the test split keeps the
  originals, so the release's evaluation transform (central square and TF1 bilinear from the
  original photograph) and its 1e-4 agreement are unchanged.

The dataset's metadata records what the images were pre-scaled for (`Prescaled.to_metadata`);
`check` refuses, in one line, a config that would train on them otherwise.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import simplejpeg
from PIL import Image

from marco_jax.data import preprocess

IMAGE_FORMATS = ("jpeg", "png")
METADATA_KEY = "prescaled"  # the key of the record in the dataset's metadata


class StorageMismatchError(ValueError):
    """A split stored otherwise than the config would train on it; str() is one line."""


def shorter_side(preprocessing: preprocess.Preprocessing) -> float:
    """The stored shorter side in pixels of content: image_size / central_fraction (the stored
    image has the whole pixels of it, e.g. 172 for 151 / 0.875 = 172.6)."""
    return preprocessing.image_size / preprocessing.central_fraction


def _tf1_extent(extent: int, scale: np.float32) -> int:
    """How many TF1 taps i * scale (float32) fall on the `extent` source pixels."""
    positions = np.arange(math.ceil(extent / float(scale)) + 2, dtype=np.float32) * scale
    return int(np.count_nonzero(np.floor(positions) <= extent - 1))


def prescale(image: preprocess.ImageLike, preprocessing: preprocess.Preprocessing) -> np.ndarray:
    """The whole image at its training crop's scale, uint8 RGB: every window of image_size
    pixels of it (`preprocess.window_crop`) is a training patch of the original.

    The scale is the one the training crop of this very image uses, with its resampler:
    "tf1_bilinear" takes TF1's taps at int(central_fraction * shorter side) / image_size source
    pixels per stored pixel on both axes (`tf1_random_crop`); "pil_antialias" Pillow's
    antialiased bilinear over the source box at `preprocess.eval_scale` (`random_crop`). The
    window at offset (0, 0) is therefore the full-size patch at (0, 0), rounded to uint8 as
    training patches are ("pil_antialias": at every offset, which both draw in output pixels).
    """
    height, width = preprocess.height_width(image)
    size = preprocessing.image_size
    if preprocessing.resize_method == "tf1_bilinear":
        side = preprocess.tf1_square_side(height, width, preprocessing.central_fraction)
        scale = np.float32(side) / np.float32(size)  # tf1_random_crop's, as TF computes it
        out_height, out_width = _tf1_extent(height, scale), _tf1_extent(width, scale)
        resampled = preprocess.tf1_resample(np.asarray(image), out_height, out_width, scale, scale)
        return np.clip(np.rint(resampled * 255.0), 0, 255).astype(np.uint8)
    scale = preprocess.eval_scale(height, width, size, preprocessing.central_fraction)
    # Whole stored pixels inside the image (the 1e-9: float error at an exact whole number).
    out_height, out_width = (math.floor(extent * scale + 1e-9) for extent in (height, width))
    box = (0.0, 0.0, out_width / scale, out_height / scale)
    return preprocess.pil_resize(image, out_width, out_height, box)


def encode(pixels: np.ndarray, image_format: str, jpeg_quality: int) -> bytes:
    """uint8 RGB pixels as JPEG (libjpeg-turbo via simplejpeg, 4:4:4 chroma: subsampling would
    halve the colour resolution at the very scale the model sees) or as PNG."""
    if image_format == "jpeg":
        return simplejpeg.encode_jpeg(
            np.ascontiguousarray(pixels), quality=jpeg_quality, colorspace="RGB",
            colorsubsampling="444",
        )  # fmt: skip
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class Prescaled:
    """How a dataset's images were pre-scaled: for which preprocessing, in which format, which
    splits (the others are stored as given)."""

    preprocessing: preprocess.Preprocessing
    image_format: str = "jpeg"
    jpeg_quality: int = 95
    splits: tuple[str, ...] = ("train",)

    def __post_init__(self):
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(
                f"image_format={self.image_format!r}: pre-scaled images are stored as one of "
                f"{IMAGE_FORMATS}."
            )
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality={self.jpeg_quality} must lie in [1, 100].")
        if self.preprocessing.central_fraction > 1:
            raise ValueError(
                f"central_fraction={self.preprocessing.central_fraction}: pre-scaling needs the "
                "training patches inside the image (central_fraction <= 1)."
            )

    def encoded(self, data: bytes) -> bytes:
        """Encoded image bytes (any format `preprocess.decode` reads) pre-scaled and encoded;
        decoded as the preprocessing decodes (its JPEG DCT)."""
        pixels = prescale(self.preprocessing.decode(data), self.preprocessing)
        return encode(pixels, self.image_format, self.jpeg_quality)

    def to_metadata(self) -> dict[str, Any]:
        return {
            "shorter_side": shorter_side(self.preprocessing),
            **self.preprocessing.to_metadata(),
            "image_format": self.image_format,
            "jpeg_quality": self.jpeg_quality,
            "splits": list(self.splits),
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> Prescaled | None:
        """From a dataset's metadata (a TFDS MetadataDict, a dict, or None for none); None:
        stored as given. Read through items(): TFDS's lazy dict loads on items(), but its
        len(), bool() and get() see it empty until then."""
        record = dict(metadata.items()).get(METADATA_KEY) if metadata is not None else None
        if not record:
            return None
        return cls(
            preprocess.Preprocessing.from_metadata(record),
            record["image_format"],
            int(record["jpeg_quality"]),
            tuple(record["splits"]),
        )


def check(
    metadata: Mapping[str, Any] | None,
    split: str,
    preprocessing: preprocess.Preprocessing,
    train_prescaled: bool | None,
    where: str,
) -> None:
    """Refuses (StorageMismatchError, one line) a split that cannot serve the config.

    train_prescaled: for the split training reads, whether the config cuts its patches as
      windows of pre-scaled images (config.dataset.prescale); the split must then be stored
      pre-scaled, and must not be otherwise (its patches would be resampled twice, or cut at
      the wrong scale). None for other splits.

    A pre-scaled split must be pre-scaled for the config's preprocessing, every field of it:
    the image size and central fraction set the stored scale, and the resampler and JPEG DCT
    made its pixels.
    """
    stored = Prescaled.from_metadata(metadata)
    is_prescaled = stored is not None and split in stored.splits
    if train_prescaled is not None and train_prescaled != is_prescaled:
        state = "stored pre-scaled for training" if is_prescaled else "stored as given"
        raise StorageMismatchError(
            f"{where}: its {split!r} split is {state}, but config.dataset.prescale is "
            f"{'set' if train_prescaled else 'empty'}; let config.dataset.prescale alone choose "
            "the storage (remove prescale_format from config.dataset.config_overrides)."
        )
    if not is_prescaled or stored.preprocessing == preprocessing:
        return
    made = stored.preprocessing.to_metadata()
    wanted = preprocessing.to_metadata()
    differences = ", ".join(
        f"{field} {made[field]!r} (config: {wanted[field]!r})"
        for field in made
        if made[field] != wanted[field]
    )
    raise StorageMismatchError(
        f"{where}: its {split!r} split is stored pre-scaled for other preprocessing (shorter "
        f"side {shorter_side(stored.preprocessing):.1f} px): {differences}; train on the "
        "variant pre-scaled for this config (config.dataset.prescale, without prescale_* "
        "fields in config.dataset.config_overrides) or on the images as given."
    )
