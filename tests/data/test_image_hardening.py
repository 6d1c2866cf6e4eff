"""Image reading for classify: silent wrong pixels, TIFFs Pillow
cannot decode, list files taken exactly, and every file a folder scan passes over counted."""

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from image_fixtures import _png_chunk, checkerboard
from PIL import Image

from marco_jax.data import image_io


def _png16(path: Path, samples: np.ndarray, color_type: int, trns: bytes) -> None:
    """A 16-bit PNG (0 gray, 2 RGB) with a tRNS colour key, which Pillow cannot write."""
    height, width = samples.shape[:2]
    rows = samples.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"tRNS", trns)
        + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b"")
    )  # fmt: skip


# ----------------------------------------------------------------------------- item 7
def test_sixteen_bit_gray_png_transparent_colour_is_composited_as_eight_bit_is(tmp_path):
    gray16 = np.array([[1000, 5000, 1000]], np.uint16)
    _png16(tmp_path / "g16.png", gray16, 0, struct.pack(">H", 5000))
    Image.fromarray(np.array([[3, 19, 3]], np.uint8)).save(tmp_path / "g8.png", transparency=19)
    expected = np.array([[(3, 3, 3), (255, 255, 255), (3, 3, 3)]], np.uint8)
    np.testing.assert_array_equal(image_io.load_image(str(tmp_path / "g16.png")), expected)
    np.testing.assert_array_equal(image_io.load_image(str(tmp_path / "g8.png")), expected)
    black = image_io.load_image(str(tmp_path / "g16.png"), background=(0, 0, 0))
    np.testing.assert_array_equal(black[0, 1], (0, 0, 0))


def test_sixteen_bit_rgb_png_colour_key_is_refused_not_ignored(tmp_path):
    rgb16 = np.repeat(np.array([[1000, 5000]], np.uint16)[..., None], 3, axis=-1)
    path = tmp_path / "rgb16_key.png"
    _png16(path, rgb16, 2, struct.pack(">HHH", 5000, 5000, 5000))
    with pytest.raises(image_io.ImageReadError, match="16-bit RGB PNG with a transparent colour"):
        image_io.load_image(str(path))


@pytest.mark.parametrize("dtype", [np.int32, np.uint32])
def test_thirty_two_bit_tiff_holding_eight_bit_values_is_refused_not_black(tmp_path, dtype):
    path = tmp_path / "int32.tif"
    values = checkerboard()[..., 0].astype(dtype)
    tifffile.imwrite(path, values)
    with pytest.raises(image_io.ImageReadError) as raised:
        image_io.load_image(str(path))
    reason = raised.value.reason
    assert reason.startswith("unsupported pixel type: 32-bit"), reason
    assert f"(values 0..{values.max()})" in reason and "save it as 8- or 16-bit" in reason


# ----------------------------------------------------------------------------- item 8: TIFF
def _rgb():
    return checkerboard(6, 8)


def test_tiffs_pillow_cannot_decode_are_read_with_tifffile(tmp_path):
    rgb = _rgb()
    ycbcr = np.asarray(Image.fromarray(rgb).convert("YCbCr"))
    tifffile.imwrite(tmp_path / "ycbcr.tif", ycbcr, photometric="ycbcr", subsampling=(1, 1))
    got = image_io.load_image(str(tmp_path / "ycbcr.tif"))
    np.testing.assert_array_equal(got, np.asarray(Image.fromarray(ycbcr, "YCbCr").convert("RGB")))
    gray = rgb[..., 0]
    planes = np.stack([gray, np.full_like(gray, 255)])  # gray + opaque alpha, separate planes
    tifffile.imwrite(
        tmp_path / "two.tif", planes, photometric="minisblack", planarconfig="separate",
        extrasamples=[2],
    )  # fmt: skip
    with pytest.raises(Exception):  # noqa: B017  (Pillow really cannot: the case is real)
        Image.open(tmp_path / "two.tif").load()
    np.testing.assert_array_equal(
        image_io.load_image(str(tmp_path / "two.tif")), np.repeat(gray[..., None], 3, -1)
    )
    half = np.stack([gray, np.zeros_like(gray)])  # fully transparent: the background
    tifffile.imwrite(
        tmp_path / "clear.tif", half, photometric="minisblack", planarconfig="separate",
        extrasamples=[2],
    )  # fmt: skip
    assert (image_io.load_image(str(tmp_path / "clear.tif")) == 255).all()


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("f16.tif", _rgb()[..., 0].astype(np.float16), "16-bit floating point"),
        ("f64.tif", _rgb()[..., 0].astype(np.float64), "64-bit floating point"),
        ("frgb.tif", _rgb().astype(np.float32), "32-bit floating point"),
    ],
)
def test_float_tiffs_are_unsupported_not_damaged(tmp_path, name, data, words):
    path = tmp_path / name
    tifffile.imwrite(path, data, photometric="rgb" if data.ndim == 3 else "minisblack")
    with pytest.raises(image_io.ImageReadError) as raised:
        image_io.load_image(str(path))
    assert raised.value.reason.startswith(f"unsupported pixel type: {words}")
    assert "damaged" not in raised.value.reason


def test_truncated_tiff_stays_damaged(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, checkerboard(64, 64), rowsperstrip=8)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(image_io.ImageReadError, match="truncated|damaged"):
        image_io.load_image(str(path))


# ----------------------------------------------------------------------------- item 8: inputs
def test_list_file_paths_keep_their_spaces(tmp_path):
    (tmp_path / " lead.jpg").write_bytes(b"x")
    (tmp_path / "trail.jpg ").write_bytes(b"x")
    (tmp_path / "run.txt").write_text(" lead.jpg\ntrail.jpg \n   \n# comment\r\n")
    assert image_io.collect_inputs([str(tmp_path / "run.txt")]) == [
        str(tmp_path / " lead.jpg"),
        str(tmp_path / "trail.jpg "),
    ]


def test_list_file_with_latin1_names_finds_the_files(tmp_path):
    name = os.fsdecode(b"caf\xe9.jpg")
    (tmp_path / name).write_bytes(b"x")
    (tmp_path / "run.lst").write_bytes(b"caf\xe9.jpg\n")
    assert image_io.collect_inputs([str(tmp_path / "run.lst")]) == [str(tmp_path / name)]


def test_empty_list_is_an_input_whose_row_says_so_like_an_empty_folder(tmp_path):
    (tmp_path / "empty.txt").write_text("# nothing yet\n\n")
    (tmp_path / "folder").mkdir()
    inputs = image_io.collect_inputs([str(tmp_path / "empty.txt"), str(tmp_path / "folder")])
    assert inputs == [str(tmp_path / "empty.txt"), str(tmp_path / "folder")]
    with pytest.raises(image_io.ImageReadError, match="is a list file with no paths in it"):
        image_io.load_image(inputs[0])
    with pytest.raises(image_io.ImageReadError, match="is a directory with no image files"):
        image_io.load_image(inputs[1])


def test_folder_scan_takes_every_jpeg_extension_and_counts_every_skip(tmp_path):
    jpeg = tmp_path / "a.jpg"
    Image.fromarray(checkerboard()).save(jpeg)
    for name in ["b.jfif", "c.JPE", "d.jif", "e.jpg "]:
        (tmp_path / name).write_bytes(jpeg.read_bytes())
    for name in ["notes.txt", "plate.csv", "README", ".hidden.jpg", "._a.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".thumbs").mkdir()
    inputs = image_io.scan_inputs([str(tmp_path), str(jpeg)])
    names = [os.path.basename(p) for p in inputs.paths]
    assert names == ["a.jpg", "b.jfif", "c.JPE", "d.jif", "e.jpg "]
    for path in inputs.paths:
        assert image_io.load_image(path).shape == (24, 32, 3), path
    assert dict(inputs.skipped) == {
        "hidden": 3,
        ".txt": 1,
        ".csv": 1,
        "no extension": 1,
        "listed twice": 1,
    }
    assert inputs.skipped_summary() == (
        "7 (3 hidden, 1 .csv, 1 .txt, 1 listed twice, 1 no extension)"
    )
    assert image_io.scan_inputs([str(jpeg)]).skipped_summary() == "0"


def test_decompression_bomb_message_names_the_flag(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(checkerboard(24, 32)).save(path)
    with pytest.raises(image_io.ImageReadError, match=r"raise the limit \(classify --max_megap"):
        image_io.load_image(str(path), max_pixels=100)
