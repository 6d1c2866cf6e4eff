"""Pre-scaled storage: training images stored at the scale the training crops are cut at.

Why: a training patch of a full-size drop photograph (1280x960 to 2532x2028) costs a core a
full-size JPEG decode plus a resample to the evaluation scale, which kept the host at a few dozen
images/s per core, far below what an accelerator consumes. Stored with the shorter side at
image_size / central_fraction (599 px for the release's preprocessing), an image decodes several
times faster, and for the release's TF1 resize the training patch is then a plain crop
(`preprocess.tf1_random_crop` at scale 1). `bench/input_pipeline.py` measures both.

What changes, stated plainly:
- The pixels: each image is resampled once, from the original, with the training config's own
  resampler at the uniform scale its training crops use, rounded to uint8 (as training patches
  are anyway), and stored as JPEG at `jpeg_quality` with full-resolution chroma (lossy: the
  accuracy cost on the synthetic set is measured in README.md) or as PNG (lossless: for
  "tf1_bilinear" with central_fraction 1 a patch at offset (0, 0) then equals the full-size
  patch exactly; tests/data/test_prescale.py).
- The crop positions: random offsets fall on whole pre-scaled pixels instead of whole source
  pixels (the same uniform placement on a coarser grid).
- Not evaluation: the builder pre-scales only the splits it is told to (the train split), and
  the test split keeps the originals, so the release's evaluation transform (central square and
  TF1 bilinear from the original photograph) and its 1e-4 agreement are unchanged.

The dataset's metadata records what the images were pre-scaled for (`Prescaled.to_metadata`);
`check` refuses a config that trains at another scale, in one line.
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
    """A dataset pre-scaled for another preprocessing than the config's; str() is one line."""


def short_side(preprocessing: preprocess.Preprocessing) -> int:
    """The stored shorter side: the smallest whole number of pixels whose evaluation square
    (central_fraction of it) still covers image_size pixels."""
    side = math.ceil(preprocessing.image_size / preprocessing.central_fraction - 1e-9)
    while int(preprocessing.central_fraction * side) < preprocessing.image_size:  # float error
        side += 1
    return side


def prescale(image: preprocess.ImageLike, preprocessing: preprocess.Preprocessing) -> np.ndarray:
    """The whole image at the training scale: uint8 RGB with its shorter side `short_side`.

    Both axes take the same scale (source pixels per stored pixel: shorter side / short_side),
    the one the training crop of the original would use for central_fraction 1, with the same
    resampler ("tf1_bilinear": TF1's legacy taps on float [0, 1], as `tf1_random_crop`;
    "pil_antialias": Pillow's antialiased bilinear over the exact source box).
    """
    if isinstance(image, Image.Image):
        height, width = image.height, image.width
    else:
        height, width = image.shape[:2]
    shorter, side = min(height, width), short_side(preprocessing)
    # Whole stored pixels whose source position stays inside the image on both axes.
    out_height, out_width = height * side // shorter, width * side // shorter
    if preprocessing.resize_method == "tf1_bilinear":
        scale = np.float32(shorter) / np.float32(side)  # = tf1_random_crop's side / size
        resampled = preprocess.tf1_resample(np.asarray(image), out_height, out_width, scale, scale)
        return np.clip(np.rint(resampled * 255.0), 0, 255).astype(np.uint8)
    box = (0.0, 0.0, out_width * shorter / side, out_height * shorter / side)
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

    def encoded(self, data: bytes) -> bytes:
        """Encoded image bytes (any format `preprocess.decode` reads) pre-scaled and encoded;
        decoded as the preprocessing decodes (its JPEG DCT)."""
        pixels = prescale(self.preprocessing.decode(data), self.preprocessing)
        return encode(pixels, self.image_format, self.jpeg_quality)

    def to_metadata(self) -> dict[str, Any]:
        return {
            "short_side": short_side(self.preprocessing),
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
    where: str,
) -> None:
    """Refuses (StorageMismatchError, one line) a split pre-scaled for another preprocessing.

    Every field counts: the image size and central fraction set the stored scale, and the
    resampler and JPEG DCT made its pixels; a config differing in any of them would train on
    images prepared for another run.
    """
    stored = Prescaled.from_metadata(metadata)
    if stored is None or split not in stored.splits or stored.preprocessing == preprocessing:
        return
    made = stored.preprocessing.to_metadata()
    wanted = preprocessing.to_metadata()
    differences = ", ".join(
        f"{field} {made[field]!r} (config: {wanted[field]!r})"
        for field in made
        if made[field] != wanted[field]
    )
    raise StorageMismatchError(
        f"{where}: its {split!r} split is stored pre-scaled (shorter side "
        f"{short_side(stored.preprocessing)} px) for other preprocessing: {differences}; train "
        "on a dataset stored at full size or pre-scaled for this config "
        "(config.dataset.prescale=jpeg builds one)."
    )
