"""Reading the drop photographs a lab hands to `classify`: which files, and their pixels.

Imagers and the people exporting from them produce every flavour of JPEG, PNG, TIFF and BMP:
8- or 16-bit, grayscale, palette, RGBA, CMYK, rotated by an EXIF tag. `load_image` turns each
into the uint8 RGB array the evaluation transform expects, or raises `ImageReadError` with a
reason a lab user can act on, so that one bad file becomes one CSV row with an error instead of
a traceback halfway through a plate.

Decisions (the CLI documentation repeats them):
- Only JPEG, PNG, TIFF and BMP are decoded, whatever the extension says; another format that
  Pillow recognises is named in the error ("unsupported image format: GIF") so the user can
  convert it. Keeping to these four keeps Pillow's rarer decoders away from unvetted files.
- 16-bit samples keep their high byte (v >> 8): Pillow itself reduces 16-bit RGB, RGBA and
  gray+alpha PNG/TIFF that way while decoding, so 16-bit grayscale is reduced the same way and
  one picture gives the same pixels in every 16-bit layout. 0 -> 0, 65535 -> 255, and every
  value is within 1 of the exact rescaling v * 255 / 65535. Data from 10- to 14-bit cameras
  stored in 16-bit containers is not stretched: the model saw unstretched photographs.
- Transparency (RGBA, LA, palette or colour-key transparency) is composited onto a white
  background: fully transparent pixels have no defined colour, and white is what an empty
  region of a back-lit drop photograph looks like.
- CMYK (including Adobe's inverted CMYK JPEGs, which Pillow detects) is converted with Pillow's
  formula; embedded ICC profiles are ignored, as the training pipeline's decoders ignore them.
- The EXIF orientation is applied; a multi-page TIFF contributes its first page.
- A truncated file is an error (Pillow's LOAD_TRUNCATED_IMAGES stays False and every image is
  fully decoded here), never an image padded with grey. JPEGs are decoded by `decode_jpeg`
  (libjpeg-turbo through simplejpeg, strict), which also refuses damaged scan data that ends
  with an EOI marker, which Pillow decodes as grey padding without a word.
- Images over `max_pixels` are refused from their header before decoding (decompression bombs).
"""

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from marco_jax.data import tiff
from marco_jax.data.image_inputs import (  # noqa: F401  (re-exported: the reading API in one place)
    IMAGE_EXTENSIONS,
    LIST_EXTENSIONS,
    InputListError,
    Inputs,
    collect_inputs,
    is_list_name,
    scan_folder,
    scan_inputs,
)
from marco_jax.data.jpeg import JpegDecodeError, decode_jpeg  # noqa: F401  (re-exported)

SUPPORTED_FORMATS = ("JPEG", "PNG", "TIFF", "BMP")
# Pillow's own default guard (Image.MAX_IMAGE_PIXELS, about a 1 GiB 24-bit image); drop
# photographs are 1 to 20 megapixels.
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_BACKGROUND = (255, 255, 255)

# Pillow modes holding one unsigned 16-bit channel ("I" is Pillow's 32-bit integer mode, used
# for signed 16-bit and 32-bit TIFFs; a signed 16-bit one is accepted when its values fit in
# 0..65535, a 32-bit one is refused: its 8-bit scale would be a guess).
_SIXTEEN_BIT_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# File signatures of the supported formats: a file that starts like one but that Pillow cannot
# open is damaged, not "not an image".
_SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"II+\x00": "TIFF",  # BigTIFF
    b"MM\x00+": "TIFF",
    b"BM": "BMP",
}
_SNIFF_BYTES = 512
EXIF_ORIENTATION = 0x0112


class ImageReadError(Exception):
    """A file that cannot be scored, with the reason in a lab user's words."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def load_image(
    path: str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
    fast_dct: bool = False,
) -> np.ndarray:
    """Reads an image file as uint8 RGB [H, W, 3], EXIF orientation applied.

    fast_dct: decode a JPEG as the released MARCO graph does (see `decode_jpeg`).

    Raises:
      ImageReadError: for anything that keeps the file from being scored.
    """
    _check_file(path)
    try:
        image = _open(path)
    except ImageReadError as e:
        if _signature(path) != "TIFF" or e.reason.startswith(("cannot read", "permission")):
            raise
        return _read_with_tifffile(path, max_pixels, background, e)
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageReadError(path, _too_large(width, height, max_pixels))
        if image.format == "JPEG":
            return _read_jpeg(path, image, fast_dct)
        _refuse_sixteen_bit_colour_key(path, image)
        try:
            _decode(path, image)
        except ImageReadError as e:
            if image.format != "TIFF":
                raise
            return _read_with_tifffile(path, max_pixels, background, e)
        ImageOps.exif_transpose(image, in_place=True)
        try:
            return to_rgb8(image, background)
        except ValueError as e:
            raise ImageReadError(path, str(e)) from e


def decode_cost(path: str) -> int:
    """The bytes `load_image(path)` and a crop of it hold at their peak, estimated from the
    header alone: three uint8 RGB copies of the picture plus the file (measured: 2.4 copies
    for an 81-megapixel JPEG read and cropped to 599 px). 0 when the header cannot be read
    (the read then fails at once)."""
    try:
        with Image.open(path, formats=SUPPORTED_FORMATS) as image:
            width, height = image.size
        return 3 * 3 * width * height + os.path.getsize(path)
    except Exception:  # any failure: load_image will name it, holding nothing
        return 0


def _read_jpeg(path: str, image: Image.Image, fast_dct: bool) -> np.ndarray:
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    try:
        with open(path, "rb") as f:
            pixels = decode_jpeg(f.read(), fast_dct=fast_dct)
    except OSError as e:
        raise ImageReadError(path, f"cannot read file: {e.strerror}") from e
    except JpegDecodeError as e:
        raise ImageReadError(path, e.reason) from e
    return apply_orientation(pixels, orientation)


def _read_with_tifffile(
    path: str, max_pixels: int, background: tuple[int, int, int], pillow_error: ImageReadError
) -> np.ndarray:
    """A TIFF Pillow could not open or decode: tifffile reads it, or says what is unsupported;
    if tifffile cannot parse it either, Pillow's reason stands (the file is damaged)."""
    try:
        pixels, orientation = tiff.read_tiff(path, max_pixels=max_pixels, background=background)
    except tiff.TiffUnsupportedError as e:
        raise ImageReadError(path, str(e)) from e
    except tiff.TiffDamagedError as e:
        raise ImageReadError(path, f"{pillow_error.reason}; {e}") from e
    except ValueError as e:  # over max_pixels
        raise ImageReadError(path, _too_large_tiff(str(e), max_pixels)) from e
    return np.ascontiguousarray(apply_orientation(pixels, orientation))


def _refuse_sixteen_bit_colour_key(path: str, image: Image.Image) -> None:
    """Pillow reduces 16-bit RGB PNGs to 8 bits while decoding but keeps their transparent
    colour (tRNS) in 16 bits, so it would match no pixel, or the wrong ones: refused."""
    if image.format != "PNG" or "transparency" not in image.info or not image.tile:
        return
    args = image.tile[0].args
    rawmode = args if isinstance(args, str) else (args[0] if args else "")
    if image.mode in ("RGB", "RGBA") and "16" in str(rawmode):
        raise ImageReadError(
            path,
            "unsupported: a 16-bit RGB PNG with a transparent colour key (tRNS); save it "
            "without transparency, with an alpha channel, or as 8-bit",
        )


def apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """The picture [H, W, C] as shown under EXIF orientation 1-8 (as ImageOps.exif_transpose);
    any other value leaves it as stored."""
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1]
    if orientation == 5:
        return pixels.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(pixels, -1)
    if orientation == 7:
        return np.rot90(pixels, 2).transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(pixels, 1)
    return pixels


def to_rgb8(
    image: Image.Image, background: tuple[int, int, int] = DEFAULT_BACKGROUND
) -> np.ndarray:
    """Converts a decoded Pillow image of any mode to uint8 RGB [H, W, 3] (see module docstring).

    Public so that every decoder in the project can map modes the same way.

    Raises:
      ValueError: pixels with no 8-bit RGB meaning here (float, signed or 32-bit samples, a mode
        Pillow cannot convert), with the reason in words.
    """
    if image.mode == "I" and _tiff_bits(image) == 32:
        values = np.asarray(image)
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        raise ValueError(
            f"unsupported pixel type: 32-bit integer samples (values {low}..{high}), whose "
            "8-bit scale is unknown; save it as 8- or 16-bit unsigned"
        )
    if image.mode in _SIXTEEN_BIT_GRAY_MODES:
        gray = np.asarray(image)
        rgb = _gray16_to_rgb8(gray)
        key = image.info.get("transparency")  # a 16-bit gray PNG's colour key (tRNS)
        if isinstance(key, int) and not isinstance(key, bool):
            rgb[gray == key] = background
        return rgb
    if image.mode == "F":
        raise ValueError("unsupported pixel type: 32-bit floating point; save it as 8- or 16-bit")
    if image.has_transparency_data:
        backdrop = Image.new("RGBA", image.size, (*background, 255))
        image = Image.alpha_composite(backdrop, image.convert("RGBA"))
    try:
        return np.asarray(image.convert("RGB"))
    except ValueError as e:
        raise ValueError(f"unsupported colour mode {image.mode!r}") from e


def _tiff_bits(image: Image.Image) -> int | None:
    bits = getattr(image, "tag_v2", {}).get(258)  # BitsPerSample
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return None if bits is None else int(bits)


def _gray16_to_rgb8(gray: np.ndarray) -> np.ndarray:
    if gray.size and (gray.min() < 0 or gray.max() > 0xFFFF):
        raise ValueError(
            "unsupported pixel values: integer samples outside 0..65535 (signed or 32-bit "
            "data); save it as 8- or 16-bit unsigned",
        )
    high_byte = (gray.astype(np.uint32) >> 8).astype(np.uint8)
    return np.repeat(high_byte[:, :, None], 3, axis=2)


def _check_file(path: str) -> None:
    """The failures that can be named without opening the file."""
    if os.path.isdir(path):
        raise ImageReadError(path, _directory_reason(path))
    if is_list_name(path) and os.path.isfile(path):  # `scan_inputs` keeps only empty lists
        raise ImageReadError(path, "is a list file with no paths in it (only blank or # lines)")
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot read file: {e.strerror}") from e
    if size == 0:
        raise ImageReadError(path, "empty file")


def _directory_reason(path: str) -> str:
    if not os.access(path, os.R_OK | os.X_OK):
        return "is a directory that cannot be listed (permission denied)"
    if not scan_folder(path):
        return "is a directory with no image files in it"
    return "is a directory"


def _open(path: str) -> Image.Image:
    """Image.open (header only) with its failures translated."""
    try:
        return Image.open(path, formats=SUPPORTED_FORMATS)
    except PermissionError:
        raise ImageReadError(path, "permission denied") from None
    except Image.DecompressionBombError as e:  # Pillow's own guard, at twice its limit
        raise ImageReadError(path, f"image too large: {e}") from e
    except UnidentifiedImageError:
        raise ImageReadError(path, _identify_failure(path)) from None
    except OSError as e:
        if e.errno is not None:  # the operating system's failure, not the file's content
            raise ImageReadError(path, f"cannot read file: {e.strerror}") from e
        raise ImageReadError(path, _damage_reason(e)) from e


def _decode(path: str, image: Image.Image) -> None:
    try:
        image.load()
    except Exception as e:
        # Pillow's decoders report damaged data as OSError, SyntaxError, ValueError,
        # struct.error, EOFError, ... depending on the format and where the damage is.
        raise ImageReadError(path, _damage_reason(e)) from e


def _damage_reason(error: Exception) -> str:
    if "truncated" in str(error).lower():
        return "truncated image data (the file is incomplete)"
    return f"corrupt image data ({type(error).__name__}: {error})"


def _identify_failure(path: str) -> str:
    """Why Pillow found no supported image in the file, in words."""
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as e:
        return f"cannot read file: {e.strerror}"
    for signature, name in _SIGNATURES.items():
        if head.startswith(signature):
            return f"damaged {name} file: its header is truncated or corrupt"
    if _looks_like_text(head):
        return "not an image (looks like text)"
    try:
        with Image.open(path) as other:  # header only: just to name the format
            found = other.format
    except Exception:  # any failure means Pillow knows no format for it
        return "not an image (unrecognised file content)"
    return f"unsupported image format: {found} (supported: {', '.join(SUPPORTED_FORMATS)})"


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut at the end of the sample
            return False
        text = head[: e.start].decode("utf-8")
    return all(c.isprintable() or c.isspace() for c in text)


def _too_large(width: int, height: int, max_pixels: int) -> str:
    return (
        f"image too large: {width}x{height} = {width * height / 1e6:.1f} megapixels, over the "
        f"limit of {max_pixels / 1e6:.1f}; if the file is trusted, raise the limit "
        "(classify --max_megapixels)"
    )


def _too_large_tiff(message: str, max_pixels: int) -> str:
    width, height = (int(v) for v in message.rsplit(" ", 1)[1].split("x"))
    return _too_large(width, height, max_pixels)


def _signature(path: str) -> str | None:
    """The supported format the file's first bytes announce, if any."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    return next((name for sig, name in _SIGNATURES.items() if head.startswith(sig)), None)
