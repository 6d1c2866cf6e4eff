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

import io
import os
from collections.abc import Iterator, Sequence

import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

# Lower-case; matched case-insensitively against file names when a folder is scanned.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
# A PATH with one of these extensions is a text file listing paths, one per line.
LIST_EXTENSIONS = (".txt", ".lst", ".list")
SUPPORTED_FORMATS = ("JPEG", "PNG", "TIFF", "BMP")
# Pillow's own default guard (Image.MAX_IMAGE_PIXELS, about a 1 GiB 24-bit image); drop
# photographs are 1 to 20 megapixels.
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_BACKGROUND = (255, 255, 255)

# Pillow modes holding one unsigned 16-bit channel ("I" is Pillow's 32-bit integer mode, used
# for signed 16-bit and 32-bit TIFFs; accepted when its values fit in 16 bits).
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
_EXIF_ORIENTATION = 0x0112


class ImageReadError(Exception):
    """A file that cannot be scored, with the reason in a lab user's words."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class JpegDecodeError(ValueError):
    """JPEG data that libjpeg-turbo reports as damaged (even only as a warning) or cannot decode;
    `reason` is in a lab user's words, `libjpeg_message` is libjpeg's own."""

    def __init__(self, reason: str, libjpeg_message: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.libjpeg_message = libjpeg_message


def decode_jpeg(data: bytes, *, fast_dct: bool = False) -> np.ndarray:
    """Decodes JPEG bytes to uint8 RGB [H, W, 3] with libjpeg-turbo (simplejpeg), strictly.

    Why simplejpeg: libjpeg-turbo reports damaged scan data (a file cut short, then closed
    with an EOI marker; a header claiming more rows than the data holds) only as a *warning*,
    and Pillow drops warnings, so it returns the missing part as flat grey. simplejpeg's strict
    mode raises on them. Its pixels equal Pillow's (same library, accurate DCT, fancy
    upsampling), and it decodes faster.

    fast_dct: libjpeg's IFAST integer DCT, TensorFlow's DecodeJpeg default (the released MARCO
      graph decodes that way); False is the accurate ISLOW DCT, as Pillow decodes.

    Accepted on purpose: a baseline (sequential) JPEG whose data is complete and only the final
    EOI marker is missing (the pixels are all there), and junk bytes after the last scan
    ("extraneous bytes before marker 0xd9"). A progressive JPEG missing its EOI is refused: its
    last scans may be missing without any other sign.

    CMYK/YCCK JPEGs are decoded (strictly) by simplejpeg to CMYK and converted to RGB with
    Pillow's formula, Adobe-inverted as Pillow assumes, so they read as Pillow reads them. Only
    what libjpeg-turbo calls unsupported ("Unsupported JPEG process/precision ...") is handed to
    Pillow, whose libjpeg build may know it.

    Raises:
      JpegDecodeError: damaged or undecodable data, with the reason in words.
    """
    try:
        _, _, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as e:
        raise _jpeg_error(str(e)) from None
    cmyk = colorspace in ("CMYK", "YCCK")

    def decode(buffer: bytes) -> np.ndarray:
        return simplejpeg.decode_jpeg(
            buffer,
            colorspace="CMYK" if cmyk else "RGB",
            fastdct=fast_dct,
            fastupsample=False,
            strict=True,
        )

    try:
        pixels = decode(data)
    except ValueError as e:
        message = str(e)
        if message.startswith("Unsupported"):
            return _decode_jpeg_with_pillow(data, message)
        if "Premature end of JPEG file" in message and not _is_progressive(data):
            try:  # complete data with only the EOI marker missing decodes cleanly with one
                pixels = decode(data + b"\xff\xd9")
            except ValueError:
                raise _jpeg_error(message) from None
        elif "extraneous bytes before marker 0xd9" in message:
            pixels = simplejpeg.decode_jpeg(  # every scan was read before the junk
                data, colorspace="CMYK" if cmyk else "RGB", fastdct=fast_dct,
                fastupsample=False, strict=False,
            )  # fmt: skip
        else:
            raise _jpeg_error(message) from None
    if cmyk:  # Pillow's CMYK -> RGB, on the inverted samples Pillow's JPEG reader would give
        return np.asarray(Image.fromarray(255 - pixels, mode="CMYK").convert("RGB"))
    return pixels


def _jpeg_error(message: str) -> JpegDecodeError:
    lowered = message.lower()
    if "premature end of jpeg file" in lowered:
        reason = "truncated image data (the file is incomplete)"
    elif "premature end of data segment" in lowered:
        reason = "incomplete image data (the picture's data ends early: a cut or damaged file)"
    elif "unsupported" in lowered:
        reason = f"unsupported JPEG variant ({message})"
    else:
        reason = "corrupt image data"
    return JpegDecodeError(f"{reason}: libjpeg: {message}", message)


def _decode_jpeg_with_pillow(data: bytes, message: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
            image.load()
            return to_rgb8(image)
    except Exception as e:  # Pillow's libjpeg does not know it either
        raise _jpeg_error(message) from e


def _is_progressive(data: bytes) -> bool:
    """Whether the frame header before the first scan is SOF2/6/10/14 (progressive)."""
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return False
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in (0xC2, 0xC6, 0xCA, 0xCE):
            return True
        if marker in (0xC0, 0xC1, 0xC3, 0xC5, 0xC7, 0xC9, 0xCB, 0xCD, 0xCF, 0xDA):
            return False
        offset += 2 + int.from_bytes(data[offset + 2 : offset + 4], "big")
    return False


class InputListError(ValueError):
    """A list file (PATH ending in .txt/.lst/.list) that cannot be read: the user's invocation
    is wrong, so the run stops instead of guessing which images were meant."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"list file {path}: {reason}")
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
    image = _open(path)
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageReadError(path, _too_large(width, height, max_pixels))
        if image.format == "JPEG":
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            try:
                with open(path, "rb") as f:
                    pixels = decode_jpeg(f.read(), fast_dct=fast_dct)
            except OSError as e:
                raise ImageReadError(path, f"cannot read file: {e.strerror}") from e
            except JpegDecodeError as e:
                raise ImageReadError(path, e.reason) from e
            return apply_orientation(pixels, orientation)
        _decode(path, image)
        ImageOps.exif_transpose(image, in_place=True)
        try:
            return to_rgb8(image, background)
        except ValueError as e:
            raise ImageReadError(path, str(e)) from e


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
    if image.mode in _SIXTEEN_BIT_GRAY_MODES:
        return _gray16_to_rgb8(np.asarray(image))
    if image.mode == "F":
        raise ValueError("unsupported pixel type: 32-bit floating point; save it as 8- or 16-bit")
    if image.has_transparency_data:
        backdrop = Image.new("RGBA", image.size, (*background, 255))
        image = Image.alpha_composite(backdrop, image.convert("RGBA"))
    try:
        return np.asarray(image.convert("RGB"))
    except ValueError as e:
        raise ValueError(f"unsupported colour mode {image.mode!r}") from e


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
    if not _scan_folder(path):
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
        f"limit of {max_pixels / 1e6:.1f}; raise the limit if the file is trusted"
    )


def collect_inputs(paths: Sequence[str]) -> list[str]:
    """Expands command-line PATHs into the image files to score, in order, each once.

    - A folder is scanned recursively (symbolic links followed, each real folder once) for
      names ending in IMAGE_EXTENSIONS, any case, sorted; names starting with "." (hidden
      files, macOS "._x.jpg" resource forks) are skipped. An entry with an image extension
      that is a directory, and a folder that cannot be listed, are kept as inputs so their
      rows say what is wrong; a folder with no image files at all is itself kept likewise.
    - A file ending in LIST_EXTENSIONS lists paths, one a line; blank lines and lines starting
      with "#" are ignored, "~" is expanded, relative paths are relative to the list's folder.
      Each entry is expanded like a PATH (an image, a folder or another list).
    - Anything else is taken as an image file as given, even if missing or oddly named: its
      row will say what is wrong.
    Paths naming the same file the same way after normalisation are kept once, at first sight.

    Raises:
      InputListError: a list file that cannot be read or that lists itself.
    """
    unique: dict[str, str] = {}
    for path in paths:
        for found in _expand(path, lists_open=frozenset()):
            unique.setdefault(os.path.abspath(found), found)
    return list(unique.values())


def _expand(path: str, lists_open: frozenset[str]) -> Iterator[str]:
    if os.path.isdir(path):
        images = sorted(_scan_folder(path))
        yield from images or [path]
    elif path.lower().endswith(LIST_EXTENSIONS):
        key = os.path.realpath(path)
        if key in lists_open:
            raise InputListError(path, "lists itself (directly or through another list)")
        for entry in _read_list(path):
            yield from _expand(entry, lists_open | {key})
    else:
        yield path


def _read_list(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise InputListError(path, "no such file") from None
    except UnicodeDecodeError:
        raise InputListError(path, "not a UTF-8 text file of paths, one per line") from None
    except OSError as e:
        raise InputListError(path, f"cannot read it: {e.strerror}") from e
    folder = os.path.dirname(path)
    entries = (line.strip() for line in lines)
    return [
        os.path.normpath(os.path.join(folder, os.path.expanduser(entry)))
        for entry in entries
        if entry and not entry.startswith("#")
    ]


def _scan_folder(folder: str) -> list[str]:
    """Image-named entries under `folder`, and its sub-folders that cannot be listed, unsorted."""
    found: list[str] = []
    seen: set[str] = set()
    for root, dirs, files in os.walk(
        folder, followlinks=True, onerror=lambda e: found.append(e.filename)
    ):
        real = os.path.realpath(root)
        if real in seen:  # a symbolic link back into a folder already scanned
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        found.extend(
            os.path.join(root, name)
            for name in dirs + files
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        )
    return found
