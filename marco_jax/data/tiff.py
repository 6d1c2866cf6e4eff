"""TIFFs that Pillow cannot decode, read with tifffile (`read_tiff`), for `image_io.load_image`.

Why: scientific cameras and image software write valid TIFFs Pillow does not know (separate
sample planes, two samples, YCbCr without JPEG, floating point); they used to be reported as
"damaged", which sent users looking for a broken disk. tifffile reads the file's structure, so
each one is either read, or named "unsupported" with what is unsupported about it, and only a
file whose structure tifffile cannot parse either is called damaged.

The pixel rules are image_io's (its module docstring): 16-bit samples keep their high byte,
transparency is composited onto the background, and samples whose 8-bit meaning would be a
guess (floating point, signed or 32-bit integers) are refused, never scaled.
"""

from __future__ import annotations

import numpy as np
import tifffile
from PIL import Image

# TIFF photometric interpretations (tag 262).
_MINISWHITE, _MINISBLACK, _RGB, _PALETTE, _SEPARATED, _YCBCR = 0, 1, 2, 3, 5, 6
# ExtraSamples (tag 338): 1 associated (premultiplied) alpha, 2 unassociated alpha.
_ASSOCIATED_ALPHA, _UNASSOCIATED_ALPHA = 1, 2


class TiffUnsupportedError(ValueError):
    """A well-formed TIFF whose pixels have no 8-bit RGB meaning here, or that need a codec
    that is not installed; the message says which."""


class TiffDamagedError(ValueError):
    """A file whose TIFF structure tifffile cannot parse."""


def read_tiff(
    path: str, *, max_pixels: int, background: tuple[int, int, int]
) -> tuple[np.ndarray, int]:
    """The first page of a TIFF as uint8 RGB [H, W, 3], and its orientation tag (1 if none).

    Raises:
      TiffUnsupportedError, TiffDamagedError: as their docstrings say.
      ValueError: an image over `max_pixels` ("image too large: ...").
    """
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            height, width = int(page.imagelength), int(page.imagewidth)
            if height * width > max_pixels:
                raise ValueError(f"image too large: {width}x{height}")
            try:
                pixels = page.asarray()
            except Exception as e:  # tifffile's decoders raise what their codecs raise
                if isinstance(e, NotImplementedError | KeyError) or "requires" in str(e):
                    raise TiffUnsupportedError(f"unsupported TIFF data ({_short(e)})") from e
                raise TiffDamagedError(f"damaged TIFF image data ({_short(e)})") from e
            orientation = page.tags.valueof(274, 1)  # Orientation
            return _to_rgb8(pixels, page, background), int(orientation)
    except tifffile.TiffFileError as e:
        raise TiffDamagedError(f"damaged TIFF file ({_short(e)})") from e


def _short(error: Exception) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


def _to_rgb8(pixels: np.ndarray, page, background: tuple[int, int, int]) -> np.ndarray:
    samples = _samples_last(pixels, page)
    samples = _to_uint8(samples, page)
    photometric = int(page.photometric)
    extras = tuple(int(e) for e in (page.extrasamples or ()))
    if photometric in (_MINISBLACK, _MINISWHITE):
        color, rest = samples[..., :1], samples[..., 1:]
        if photometric == _MINISWHITE:
            color = 255 - color
        color = np.repeat(color, 3, axis=-1)
    elif photometric == _RGB and samples.shape[-1] >= 3:
        color, rest = samples[..., :3], samples[..., 3:]
    elif photometric == _PALETTE and page.colormap is not None and samples.shape[-1] == 1:
        colormap = (np.asarray(page.colormap).T >> 8).astype(np.uint8)  # 16-bit entries
        color, rest = colormap[samples[..., 0]], samples[..., 1:]
    elif photometric == _SEPARATED and samples.shape[-1] >= 4:
        color = np.asarray(Image.fromarray(samples[..., :4].copy(), mode="CMYK").convert("RGB"))
        rest = samples[..., 4:]
    elif photometric == _YCBCR and samples.shape[-1] >= 3:
        if tuple(page.subsampling or (1, 1)) != (1, 1):
            raise TiffUnsupportedError(f"unsupported TIFF: YCbCr subsampled {page.subsampling}")
        color = np.asarray(Image.fromarray(samples[..., :3].copy(), mode="YCbCr").convert("RGB"))
        rest = samples[..., 3:]
    else:
        raise TiffUnsupportedError(
            f"unsupported TIFF colour layout: photometric {photometric} with "
            f"{samples.shape[-1]} samples"
        )
    if rest.shape[-1] and extras and extras[0] in (_ASSOCIATED_ALPHA, _UNASSOCIATED_ALPHA):
        return _composite(color, rest[..., 0], background, extras[0] == _ASSOCIATED_ALPHA)
    return np.ascontiguousarray(color)


def _samples_last(pixels: np.ndarray, page) -> np.ndarray:
    """[H, W, samples], whatever the planar configuration ("YX", "YXS", "SYX")."""
    axes = page.axes
    arranged = np.moveaxis(pixels, axes.index("S"), -1) if "S" in axes else pixels[..., None]
    return arranged.reshape(int(page.imagelength), int(page.imagewidth), -1)


def _to_uint8(samples: np.ndarray, page) -> np.ndarray:
    dtype = samples.dtype
    if dtype == np.bool_:
        return samples.astype(np.uint8) * 255
    if dtype.kind == "f":
        raise TiffUnsupportedError(
            f"unsupported pixel type: {8 * dtype.itemsize}-bit floating point; its 8-bit "
            "meaning is unknown: save it as 8- or 16-bit"
        )
    if dtype.kind == "i" or dtype.itemsize > 2:
        kind = "signed" if dtype.kind == "i" else "unsigned"
        low, high = (int(samples.min()), int(samples.max())) if samples.size else (0, 0)
        raise TiffUnsupportedError(
            f"unsupported pixel type: {8 * dtype.itemsize}-bit {kind} integer samples (values "
            f"{low}..{high}), whose 8-bit scale is unknown; save it as 8- or 16-bit unsigned"
        )
    if dtype == np.uint16:
        return (samples >> 8).astype(np.uint8)
    if dtype == np.uint8:
        bits = int(page.bitspersample)
        if page.photometric == _PALETTE or bits >= 8:
            return samples
        return (samples.astype(np.uint16) * 255 // ((1 << bits) - 1)).astype(np.uint8)
    raise TiffUnsupportedError(f"unsupported pixel type: {dtype}")


def _composite(
    color: np.ndarray, alpha: np.ndarray, background: tuple[int, int, int], associated: bool
) -> np.ndarray:
    a = alpha.astype(np.float32)[..., None] / 255.0
    c = color.astype(np.float32)
    backdrop = np.asarray(background, np.float32)
    out = c + backdrop * (1 - a) if associated else c * a + backdrop * (1 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
