"""Image files of every kind a lab hands to `classify`, good and broken, shared by the tests of
`image_io`/`serving.engine` and of the `classify` command."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# 16-bit samples and the 8-bit values they must read as (high byte).
SAMPLES_16 = np.array([[0, 255, 256, 32768, 65279, 65280, 65535, 1000]], np.uint16)
EXPECTED_8 = np.array([[0, 0, 1, 128, 254, 255, 255, 3]], np.uint8)


def checkerboard(height: int = 24, width: int = 32) -> np.ndarray:
    """An RGB test picture whose every pixel differs from its neighbours and across channels."""
    y, x = np.mgrid[:height, :width]
    return np.stack([x * 7 % 256, y * 11 % 256, (x * y) % 256], axis=-1).astype(np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _write_png16(path: Path, samples: np.ndarray, color_type: int) -> None:
    """A 16-bit PNG (color_type 0 gray, 2 RGB), which Pillow cannot write for RGB."""
    height, width = samples.shape[:2]
    rows = samples.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every line
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def _write_tiff_rgb16(path: Path, rgb: np.ndarray) -> None:
    """An uncompressed little-endian 16-bit RGB TIFF, which Pillow cannot write."""
    height, width, _ = rgb.shape
    pixels = rgb.astype("<u2").tobytes()
    n_entries = 9
    bits_offset = 8 + 2 + 12 * n_entries + 4
    data_offset = bits_offset + 6
    short, long_ = 3, 4
    entries = [
        (256, short, 1, width),
        (257, short, 1, height),
        (258, short, 3, bits_offset),  # BitsPerSample 16,16,16 stored after the IFD
        (259, short, 1, 1),  # no compression
        (262, short, 1, 2),  # RGB
        (273, long_, 1, data_offset),
        (277, short, 1, 3),
        (278, short, 1, height),
        (279, long_, 1, len(pixels)),
    ]
    ifd = struct.pack("<H", n_entries) + b"".join(struct.pack("<HHII", *e) for e in entries)
    path.write_bytes(
        b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
        + struct.pack("<3H", 16, 16, 16) + pixels
    )  # fmt: skip


def _exif_rotated_jpeg(path: Path) -> None:
    """A 40x20 JPEG, red in its top-left quarter, tagged "rotate 90 degrees clockwise to view"."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:10, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif, quality=95)


# ----------------------------------------------------------------------------- good files
# Each builder writes one file and returns the pixels load_image must give back, or None where
# lossy JPEG compression only allows the approximate checks in test_load_image_good_files.
def _jpeg_rgb(path):
    Image.fromarray(checkerboard()).save(path, quality=100)


def _jpeg_gray(path):
    Image.fromarray(checkerboard()[..., 0]).save(path, quality=100)


def _jpeg_cmyk(path):
    Image.new("RGB", (32, 24), (255, 50, 0)).convert("CMYK").save(path, quality=100)


def _png_rgba(path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0] = [(255, 0, 0, 255), (0, 0, 255, 0), (0, 0, 0, 128)]
    rgba[1] = [(10, 20, 30, 255)] * 3
    Image.fromarray(rgba).save(path)
    # Opaque pixels unchanged, transparent -> white, half transparent black -> mid grey.
    return np.array([[(255, 0, 0), (255, 255, 255), (127, 127, 127)], [(10, 20, 30)] * 3], np.uint8)


def _png_palette_transparent(path):
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    image.putdata([0, 1, 2])
    image.save(path, transparency=1)
    return np.array([[(255, 0, 0), (255, 255, 255), (0, 0, 255)]], np.uint8)


def _png_gray16(path):
    Image.fromarray(SAMPLES_16).save(path)
    assert Image.open(path).mode == "I;16"  # really 16-bit on disk
    return np.repeat(EXPECTED_8[..., None], 3, axis=-1)


def _png_rgb16(path):
    _write_png16(path, np.stack([SAMPLES_16, SAMPLES_16[:, ::-1], SAMPLES_16], -1), 2)
    return np.stack([EXPECTED_8, EXPECTED_8[:, ::-1], EXPECTED_8], -1)


def _tiff_gray16_little(path):
    Image.fromarray(SAMPLES_16).save(path)
    return np.repeat(EXPECTED_8[..., None], 3, axis=-1)


def _tiff_gray16_big(path):
    Image.fromarray(SAMPLES_16.astype(">u2")).save(path)
    assert Image.open(path).mode == "I;16B"
    return np.repeat(EXPECTED_8[..., None], 3, axis=-1)


def _tiff_rgb16(path):
    _write_tiff_rgb16(path, np.stack([SAMPLES_16[:, ::-1], SAMPLES_16, SAMPLES_16], -1))
    return np.stack([EXPECTED_8[:, ::-1], EXPECTED_8, EXPECTED_8], -1)


def _tiff_rgb(path):
    Image.fromarray(checkerboard()).save(path)
    return checkerboard()


def _bmp_rgb(path):
    Image.fromarray(checkerboard()).save(path)
    return checkerboard()


def _png_gray_alpha(path):
    Image.fromarray(np.array([[[40, 255], [40, 0]]], np.uint8), mode="LA").save(path)
    return np.array([[(40, 40, 40), (255, 255, 255)]], np.uint8)


def _png_bilevel(path):
    Image.fromarray(np.array([[True, False]])).convert("1").save(path)
    return np.array([[(255, 255, 255), (0, 0, 0)]], np.uint8)


def _jpeg_exif_rotated(path):
    _exif_rotated_jpeg(path)


GOOD_FILES = {
    "rgb.jpg": _jpeg_rgb,
    "gray.JPEG": _jpeg_gray,
    "cmyk.jpg": _jpeg_cmyk,
    "rgba.png": _png_rgba,
    "palette.png": _png_palette_transparent,
    "gray16.png": _png_gray16,
    "rgb16.png": _png_rgb16,
    "gray16_le.tif": _tiff_gray16_little,
    "gray16_be.TIFF": _tiff_gray16_big,
    "rgb16.tiff": _tiff_rgb16,
    "rgb.tif": _tiff_rgb,
    "rgb.bmp": _bmp_rgb,
    "gray_alpha.png": _png_gray_alpha,
    "bilevel.png": _png_bilevel,
    "rotated.jpg": _jpeg_exif_rotated,
}


# ----------------------------------------------------------------------------- bad files
def _truncated_jpeg(path):
    buffer = io.BytesIO()
    Image.fromarray(checkerboard(64, 64)).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _png_prefix(path, length):
    buffer = io.BytesIO()
    Image.fromarray(checkerboard()).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[:length])


def _empty(path):
    path.write_bytes(b"")


def _text(path):
    path.write_text("plate 7, well A1: see notes\n")


def _directory(path):
    path.mkdir()


def _gif(path):
    Image.fromarray(checkerboard()).save(path, format="GIF")


def _float_tiff(path):
    Image.fromarray(np.ones((4, 4), np.float32)).save(path)


def _random_bytes(path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 300, np.uint8).tobytes())


BAD_FILES = {  # name: (builder, words the reason must contain)
    "truncated.jpg": (_truncated_jpeg, "truncated image data"),
    "cut_in_header.png": (lambda path: _png_prefix(path, 20), "truncated image data"),
    # Cut after the header chunk: Pillow cannot identify it, the signature says it was a PNG.
    "damaged_header.png": (lambda path: _png_prefix(path, 40), "damaged PNG file: its header"),
    "empty.jpg": (_empty, "empty file"),
    "notes.png": (_text, "not an image (looks like text)"),
    "folder.jpg": (_directory, "is a directory"),
    "animation.png": (_gif, "unsupported image format: GIF"),
    "float.tif": (_float_tiff, "unsupported pixel type: 32-bit floating point"),
    "noise.bmp": (_random_bytes, "not an image (unrecognised file content)"),
}


def write_lab_folder(folder: Path) -> dict:
    """Writes every GOOD_FILES and BAD_FILES entry into `folder` (created); returns the pixels
    each good file must read as (None where JPEG compression only allows approximate checks)."""
    folder.mkdir(parents=True)
    expected = {name: build(folder / name) for name, build in GOOD_FILES.items()}
    for name, (build, _) in BAD_FILES.items():
        build(folder / name)
    return expected
