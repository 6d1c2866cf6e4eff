"""Reading lab image files and scoring them: every format/mode `classify` promises, every fault
it must name, the CSV rows and the exit code (issue 5, item 2)."""

import csv
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from marco_jax import classify_io, image_io, preprocess
from marco_jax.labels import CLASS_NAMES, CRYSTALS, NUM_CLASSES

REAL_DROPS = Path(__file__).resolve().parents[2] / "shared" / "real_drops"
# 16-bit samples and the 8-bit values they must read as (high byte).
SAMPLES_16 = np.array([[0, 255, 256, 32768, 65279, 65280, 65535, 1000]], np.uint16)
EXPECTED_8 = np.array([[0, 0, 1, 128, 254, 255, 255, 3]], np.uint8)


def _checkerboard(height: int = 24, width: int = 32) -> np.ndarray:
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
    Image.fromarray(_checkerboard()).save(path, quality=100)


def _jpeg_gray(path):
    Image.fromarray(_checkerboard()[..., 0]).save(path, quality=100)


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
    Image.fromarray(_checkerboard()).save(path)
    return _checkerboard()


def _bmp_rgb(path):
    Image.fromarray(_checkerboard()).save(path)
    return _checkerboard()


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
    Image.fromarray(_checkerboard(64, 64)).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _png_prefix(path, length):
    buffer = io.BytesIO()
    Image.fromarray(_checkerboard()).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[:length])


def _empty(path):
    path.write_bytes(b"")


def _text(path):
    path.write_text("plate 7, well A1: see notes\n")


def _directory(path):
    path.mkdir()


def _gif(path):
    Image.fromarray(_checkerboard()).save(path, format="GIF")


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


@pytest.fixture
def lab_folder(tmp_path: Path) -> tuple[Path, dict]:
    """A folder of every good format and every fault, as a lab might hand it over."""
    folder = tmp_path / "plate"
    folder.mkdir()
    expected = {name: build(folder / name) for name, build in GOOD_FILES.items()}
    for name, (build, _) in BAD_FILES.items():
        build(folder / name)
    return folder, expected


def test_load_image_good_files(lab_folder):
    folder, expected = lab_folder
    for name, pixels in expected.items():
        image = image_io.load_image(str(folder / name))
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
        if pixels is not None:
            np.testing.assert_array_equal(image, pixels, err_msg=name)
    checker = _checkerboard().astype(int)
    jpeg_rgb = image_io.load_image(str(folder / "rgb.jpg")).astype(int)
    assert np.abs(jpeg_rgb - checker).mean() < 8
    gray = image_io.load_image(str(folder / "gray.JPEG")).astype(int)
    assert gray.shape == (24, 32, 3) and (gray == gray[..., :1]).all()
    assert np.abs(gray[..., 0] - checker[..., 0]).mean() < 8
    # Pillow writes CMYK JPEGs Adobe-inverted; read back they must be the orange written.
    cmyk = image_io.load_image(str(folder / "cmyk.jpg")).astype(int)
    assert np.abs(cmyk - (255, 50, 0)).max() <= 3


def test_exif_orientation_is_applied(lab_folder):
    folder, _ = lab_folder
    image = image_io.load_image(str(folder / "rotated.jpg")).astype(int)
    assert image.shape == (40, 20, 3)  # stored 40 wide, shown 20 wide
    # Rotating the stored picture 90 degrees clockwise takes its top-left quarter to the top
    # right: red there (away from JPEG's blurred block edges), black elsewhere.
    assert np.abs(image[2:18, 12:18] - (255, 0, 0)).max() < 40
    assert image[2:18, 2:8].max() < 40 and image[22:38].max() < 40


def test_sixteen_bit_layouts_agree(lab_folder):
    """One 16-bit picture gives the same pixels as gray or RGB, PNG or TIFF, either byte order."""
    folder, _ = lab_folder
    gray = image_io.load_image(str(folder / "gray16.png"))
    for name in ("gray16_le.tif", "gray16_be.TIFF"):
        np.testing.assert_array_equal(image_io.load_image(str(folder / name)), gray)
    np.testing.assert_array_equal(
        image_io.load_image(str(folder / "rgb16.png"))[..., 0], gray[..., 0]
    )
    np.testing.assert_array_equal(
        image_io.load_image(str(folder / "rgb16.tiff"))[..., 1], gray[..., 1]
    )


def test_load_image_bad_files_name_their_fault(lab_folder):
    folder, _ = lab_folder
    for name, (_, words) in BAD_FILES.items():
        path = str(folder / name)
        with pytest.raises(image_io.ImageReadError) as raised:
            image_io.load_image(path)
        assert words in raised.value.reason, (name, raised.value.reason)
        assert raised.value.path == path and str(raised.value).startswith(path)
    with pytest.raises(image_io.ImageReadError, match="no such file"):
        image_io.load_image(str(folder / "missing.jpg"))


def test_truncated_image_stays_an_error_even_if_missing_only_its_end(tmp_path):
    """Pillow would pad a truncated JPEG with grey if LOAD_TRUNCATED_IMAGES were set."""
    buffer = io.BytesIO()
    Image.fromarray(_checkerboard(64, 64)).save(buffer, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[:-2])  # only the end-of-image marker missing
    with pytest.raises(image_io.ImageReadError, match="truncated image data"):
        image_io.load_image(str(path))


def test_image_too_large_is_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(_checkerboard(24, 32)).save(path)
    assert image_io.load_image(str(path), max_pixels=24 * 32).shape == (24, 32, 3)
    with pytest.raises(image_io.ImageReadError, match=r"image too large: 32x24"):
        image_io.load_image(str(path), max_pixels=24 * 32 - 1)


def test_out_of_range_integer_pixels_are_refused(tmp_path):
    path = tmp_path / "signed.tif"
    Image.fromarray(np.array([[-5, 100]], np.int32)).save(path)
    with pytest.raises(image_io.ImageReadError, match="outside 0..65535"):
        image_io.load_image(str(path))


def test_background_is_configurable(lab_folder):
    folder, _ = lab_folder
    image = image_io.load_image(str(folder / "palette.png"), background=(0, 0, 0))
    np.testing.assert_array_equal(image[0, 1], (0, 0, 0))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_says_permission_denied(tmp_path):
    path = tmp_path / "locked.png"
    Image.fromarray(_checkerboard()).save(path)
    path.chmod(0)
    with pytest.raises(image_io.ImageReadError, match="permission denied"):
        image_io.load_image(str(path))
    locked = tmp_path / "locked_folder"
    locked.mkdir()
    (locked / "a.jpg").write_bytes(b"x")
    locked.chmod(0)
    try:  # a scan keeps the folder it could not list, so that its row says why
        assert image_io.collect_inputs([str(tmp_path)]) == [str(path), str(locked)]
        with pytest.raises(image_io.ImageReadError, match="cannot be listed"):
            image_io.load_image(str(locked))
    finally:
        locked.chmod(0o755)


# ----------------------------------------------------------------------------- collect_inputs
def test_collect_inputs_scans_folders_recursively_and_sorted(tmp_path):
    root = tmp_path / "plates"
    for name in ["b/2.PNG", "b/1.jpg", "a.Tif", "c/d/e.bmp", "c/x.jpeg", ".hidden/h.jpg"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    (root / "notes.csv").write_text("not an image")
    (root / "._a.jpg").write_bytes(b"macOS resource fork")
    (root / "odd.jpg").mkdir()  # a folder named like an image: an input, to be reported
    (root / "empty").mkdir()
    found = image_io.collect_inputs([str(root)])
    relative = [os.path.relpath(p, root) for p in found]
    assert relative == ["a.Tif", "b/1.jpg", "b/2.PNG", "c/d/e.bmp", "c/x.jpeg", "odd.jpg"]
    reason = "is a directory with no image files in it"
    with pytest.raises(image_io.ImageReadError, match=reason):
        image_io.load_image(found[-1])
    # A folder the user named that holds no images is kept, so its row can say so.
    assert image_io.collect_inputs([str(root / "empty")]) == [str(root / "empty")]
    with pytest.raises(image_io.ImageReadError, match=reason):
        image_io.load_image(str(root / "empty"))


def test_collect_inputs_follows_symbolic_links_without_looping(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.jpg").write_bytes(b"x")
    (tmp_path / "top").mkdir()
    (tmp_path / "top" / "linked").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "back").symlink_to(tmp_path / "real")  # a cycle
    assert image_io.collect_inputs([str(tmp_path / "top")]) == [
        str(tmp_path / "top" / "linked" / "a.jpg")
    ]


def test_collect_inputs_reads_list_files(tmp_path, monkeypatch):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for name in ["a.jpg", "b.png", "sub/c.tif"]:
        (images / name).write_bytes(b"x")
    lists = tmp_path / "lists"
    lists.mkdir()
    absolute = str(images / "b.png")
    (lists / "run.txt").write_text(
        "# plate 7\n"
        "\n"
        "../images/a.jpg\n"
        f"  {absolute}  \n"
        "../images/sub\n"  # a folder entry is scanned
        "../images/./a.jpg\n"  # the same file again: kept once
        "../images/missing.jpg\r\n"  # kept: its row will say "no such file"
    )
    monkeypatch.chdir(tmp_path)
    # "images/a.jpg" here and "../images/a.jpg" in the list are one file: kept once, as first seen.
    found = image_io.collect_inputs([absolute, "images/a.jpg", str(lists / "run.txt")])
    assert found == [
        absolute,
        "images/a.jpg",
        str(images / "sub" / "c.tif"),
        str(images / "missing.jpg"),
    ]


def test_collect_inputs_rejects_unreadable_or_circular_lists(tmp_path):
    with pytest.raises(image_io.InputListError, match="no such file"):
        image_io.collect_inputs([str(tmp_path / "nothing.lst")])
    (tmp_path / "a.list").write_text("b.txt\n")
    (tmp_path / "b.txt").write_text("a.list\n")
    with pytest.raises(image_io.InputListError, match="lists itself"):
        image_io.collect_inputs([str(tmp_path / "a.list")])
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(image_io.InputListError, match="not a UTF-8 text file"):
        image_io.collect_inputs([str(tmp_path / "binary.txt")])


# ----------------------------------------------------------------------------- score_files
IMAGE_SIZE = 16
CENTRAL_FRACTION = 0.875


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _features(images: np.ndarray) -> np.ndarray:
    """4 numbers per image: its channel means and its overall spread, scaled."""
    x = images.astype(np.float64) / 255.0
    return np.concatenate([x.mean((1, 2)), x.std((1, 2, 3))[:, None]], axis=1) * 4


def _fake_predict(batch_size: int):
    """A deterministic stand-in for the model that checks the batch contract on every call."""
    calls = []

    def predict(images: np.ndarray) -> np.ndarray:
        assert images.dtype == np.uint8
        assert images.shape == (batch_size, IMAGE_SIZE, IMAGE_SIZE, 3)
        calls.append(len(images))
        return _softmax(_features(images))

    return predict, calls


def _expected_probs(path: str) -> np.ndarray:
    crop = preprocess.center_crop_and_resize(
        image_io.load_image(path), IMAGE_SIZE, CENTRAL_FRACTION
    )
    return _softmax(_features(crop[None]))[0]


def test_score_files_one_row_per_input_in_order(lab_folder):
    folder, expected = lab_folder
    paths = image_io.collect_inputs([str(folder)])
    assert len(paths) == len(GOOD_FILES) + len(BAD_FILES)
    predict, calls = _fake_predict(batch_size=4)
    rows = classify_io.score_files(
        paths,
        predict,
        image_size=IMAGE_SIZE,
        central_fraction=CENTRAL_FRACTION,
        batch_size=4,
        num_workers=3,
        progress=False,
    )
    assert [row.path for row in rows] == paths
    assert len(calls) == -(-len(GOOD_FILES) // 4)  # full batches, the last one padded
    by_name = {os.path.basename(row.path): row for row in rows}
    for name in GOOD_FILES:
        row = by_name[name]
        assert row.error == "" and row.probs is not None, (name, row.error)
        # Scored as if alone: batching and padding mix nothing between images.
        np.testing.assert_allclose(row.probs, _expected_probs(row.path), atol=1e-12)
        assert row.prediction == CLASS_NAMES[int(np.argmax(row.probs))]
    for name, (_, words) in BAD_FILES.items():
        row = by_name[name]
        assert row.probs is None and row.prediction == "" and words in row.error, name
    assert classify_io.exit_code(rows) == classify_io.EXIT_SOME_FAILED
    assert classify_io.summary_line(rows) == f"scored {len(GOOD_FILES)}, failed {len(BAD_FILES)}"


def test_csv_has_one_line_per_row_and_names_faults(lab_folder):
    folder, _ = lab_folder
    paths = image_io.collect_inputs([str(folder)])
    predict, _ = _fake_predict(batch_size=8)
    rows = classify_io.score_files(
        paths,
        predict,
        image_size=IMAGE_SIZE,
        central_fraction=CENTRAL_FRACTION,
        batch_size=8,
        progress=False,
    )
    threshold = float(np.median([row.probs[CRYSTALS] for row in rows if row.probs]))
    out = io.StringIO()
    classify_io.write_csv(rows, out, crystal_threshold=threshold)
    lines = list(csv.DictReader(io.StringIO(out.getvalue())))
    header = out.getvalue().splitlines()[0]
    assert header == ("path,prediction,p_crystals,p_precipitate,p_clear,p_other,crystal_flag,error")
    assert [line["path"] for line in lines] == paths
    flags = []
    for line, row in zip(lines, rows, strict=True):
        if row.error:
            assert line["error"] == row.error and line["prediction"] == ""
            assert all(line[f"p_{c}"] == "" for c in CLASS_NAMES) and line["crystal_flag"] == ""
        else:
            probs = [float(line[f"p_{c}"]) for c in CLASS_NAMES]
            np.testing.assert_allclose(probs, row.probs, atol=1e-6)
            assert line["prediction"] == row.prediction
            assert line["error"] == ""
            flags.append(int(line["crystal_flag"]))
            assert flags[-1] == int(row.probs[CRYSTALS] >= threshold)
    assert 0 < sum(flags) < len(flags)  # the median splits them: both values occur
    plain = io.StringIO()
    classify_io.write_csv(rows, plain)
    assert plain.getvalue().splitlines()[0] == (
        "path,prediction,p_crystals,p_precipitate,p_clear,p_other,error"
    )


def test_all_scored_exits_zero_and_progress_goes_to_stderr(lab_folder, capsys):
    folder, _ = lab_folder
    paths = [str(folder / name) for name in GOOD_FILES]
    predict, _ = _fake_predict(batch_size=32)  # larger than the input: one padded batch
    rows = classify_io.score_files(
        paths, predict, image_size=IMAGE_SIZE, central_fraction=CENTRAL_FRACTION, batch_size=32
    )
    assert classify_io.exit_code(rows) == classify_io.EXIT_ALL_SCORED == 0
    assert classify_io.summary_line(rows) == f"scored {len(GOOD_FILES)}, failed 0"
    captured = capsys.readouterr()
    assert captured.out == "" and f"{len(GOOD_FILES)}/{len(GOOD_FILES)}" in captured.err


def _top_left_quadrant_predict(images: np.ndarray) -> np.ndarray:
    """Orientation-sensitive: looks only at the top-left quarter of each image."""
    half = IMAGE_SIZE // 2
    return _softmax(_features(images[:, :half, :half]))


def test_tta_averages_over_the_eight_symmetries(lab_folder):
    folder, _ = lab_folder
    path = str(folder / "rgb.tif")
    rows = classify_io.score_files(
        [path],
        _top_left_quadrant_predict,
        image_size=IMAGE_SIZE,
        central_fraction=CENTRAL_FRACTION,
        batch_size=3,  # 8 views: batches of 3, 3 and a padded 2
        tta=classify_io.ALL_TTA,
        progress=False,
    )
    # The 8 symmetries bring each quarter of the crop to the top left twice (once mirrored,
    # which leaves its means and spread unchanged): the average is over the four quarters.
    crop = preprocess.center_crop_and_resize(
        image_io.load_image(path), IMAGE_SIZE, CENTRAL_FRACTION
    )
    half = IMAGE_SIZE // 2
    quarters = np.stack(
        [crop[:half, :half], crop[:half, half:], crop[half:, :half], crop[half:, half:]]
    )
    np.testing.assert_allclose(rows[0].probs, _softmax(_features(quarters)).mean(0), atol=1e-12)
    untransformed = classify_io.score_files(
        [path],
        _top_left_quadrant_predict,
        image_size=IMAGE_SIZE,
        central_fraction=CENTRAL_FRACTION,
        batch_size=3,
        progress=False,
    )
    np.testing.assert_allclose(
        untransformed[0].probs, _softmax(_features(quarters[:1]))[0], atol=1e-12
    )
    assert not np.allclose(rows[0].probs, untransformed[0].probs)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="Unknown test-time transforms"):
        classify_io.score_files(
            [], _top_left_quadrant_predict, image_size=8, central_fraction=1.0, batch_size=1,
            tta=["rot45"],
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"crystal_threshold must be in \[0, 1\]"):
        classify_io.write_csv([], io.StringIO(), crystal_threshold=1.5)


def test_wrong_predictor_output_is_an_error(lab_folder):
    folder, _ = lab_folder
    with pytest.raises(ValueError, match=rf"expected \(2, {NUM_CLASSES}\)"):
        classify_io.score_files(
            [str(folder / "rgb.bmp")],
            lambda images: np.ones((len(images), 3)),
            image_size=IMAGE_SIZE,
            central_fraction=CENTRAL_FRACTION,
            batch_size=2,
            progress=False,
        )


@pytest.mark.skipif(not REAL_DROPS.is_dir(), reason=f"{REAL_DROPS} absent (shared data)")
def test_real_drop_photographs():
    paths = image_io.collect_inputs([str(REAL_DROPS / "marco_gsk" / "crystals")])
    assert len(paths) >= 3
    paths = paths[:3]
    for path in paths:
        # The same pixels as the dataset pipeline decodes for evaluation.
        reference = preprocess.decode_image(Path(path).read_bytes())
        np.testing.assert_array_equal(image_io.load_image(path), reference)
    predict, _ = _fake_predict(batch_size=2)
    rows = classify_io.score_files(
        paths,
        predict,
        image_size=IMAGE_SIZE,
        central_fraction=CENTRAL_FRACTION,
        batch_size=2,
        progress=False,
    )
    assert classify_io.exit_code(rows) == 0
    for row in rows:
        np.testing.assert_allclose(row.probs, _expected_probs(row.path), atol=1e-12)
