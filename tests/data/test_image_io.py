"""Reading lab image files and scoring them: every format/mode `classify` promises, every fault
it must name, the CSV rows and the exit code."""

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import SHARED
from image_fixtures import BAD_FILES, GOOD_FILES, write_lab_folder
from image_fixtures import checkerboard as _checkerboard
from PIL import Image

from marco_jax.data import image_io, preprocess
from marco_jax.labels import CLASS_NAMES, CRYSTALS, NUM_CLASSES
from marco_jax.serving import engine

REAL_DROPS = SHARED / "real_drops"


@pytest.fixture
def lab_folder(tmp_path: Path) -> tuple[Path, dict]:
    """A folder of every good format and every fault, as a lab might hand it over."""
    folder = tmp_path / "plate"
    return folder, write_lab_folder(folder)


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


def _jpeg_bytes(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_cut_short_and_closed_with_eoi_is_refused(tmp_path, fraction, progressive):
    """libjpeg only warns about the missing scan data and Pillow would return
    grey padding; the strict decoder refuses it."""
    data = _jpeg_bytes(_checkerboard(256, 256), progressive=progressive)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: int(len(data) * fraction)] + b"\xff\xd9")
    with pytest.raises(image_io.ImageReadError, match="incomplete image data .* libjpeg: Corrupt"):
        image_io.load_image(str(path))
    path.write_bytes(data[: int(len(data) * fraction)])  # cut, no EOI
    with pytest.raises(image_io.ImageReadError, match="truncated image data"):
        image_io.load_image(str(path))


def test_jpeg_header_claiming_more_rows_than_its_data_is_refused(tmp_path):
    data = bytearray(_jpeg_bytes(_checkerboard(64, 80)))
    sof = data.index(b"\xff\xc0")
    assert data[sof + 5 : sof + 9] == bytes([0, 64, 0, 80])
    data[sof + 5 : sof + 7] = (900).to_bytes(2, "big")  # height 900 over 64 rows of data
    path = tmp_path / "tall.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(image_io.ImageReadError, match="incomplete image data"):
        image_io.load_image(str(path))


def test_complete_jpeg_missing_only_its_eoi_is_read(tmp_path):
    """Every scan is there, so it reads as the complete file does; a progressive one is refused
    (its last scans could be missing without another sign)."""
    for progressive in (False, True):
        data = _jpeg_bytes(_checkerboard(64, 64), progressive=progressive)
        path = tmp_path / f"no_eoi_{progressive}.jpg"
        path.write_bytes(data[:-2])
        if progressive:
            with pytest.raises(image_io.ImageReadError, match="truncated image data"):
                image_io.load_image(str(path))
        else:
            np.testing.assert_array_equal(
                image_io.load_image(str(path)), image_io.decode_jpeg(data)
            )


def test_decode_jpeg_equals_pillow_and_fast_dct_differs_slightly():
    data = _jpeg_bytes(_checkerboard(48, 64), quality=90)
    accurate = image_io.decode_jpeg(data)
    np.testing.assert_array_equal(accurate, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    fast = image_io.decode_jpeg(data, fast_dct=True)
    assert fast.shape == accurate.shape and np.abs(fast.astype(int) - accurate).max() <= 8
    with pytest.raises(image_io.JpegDecodeError, match="libjpeg"):
        image_io.decode_jpeg(data[: len(data) // 2] + b"\xff\xd9")
    with pytest.raises(image_io.JpegDecodeError):
        image_io.decode_jpeg(b"\xff\xd8\xff\xe0 not a jpeg")


def test_junk_after_the_last_scan_is_accepted_but_not_inside_it():
    """libjpeg's "extraneous bytes before marker 0xd9": every scan was read before the junk."""
    data = _jpeg_bytes(_checkerboard(32, 32))
    padded = data[:-2] + b"junkjunk" + data[-2:]
    np.testing.assert_array_equal(image_io.decode_jpeg(padded), image_io.decode_jpeg(data))
    middle = len(data) // 2
    with pytest.raises(image_io.JpegDecodeError):
        image_io.decode_jpeg(data[:middle] + b"\xff\xd9" + data[middle:])


def test_decode_jpeg_cmyk_reads_as_pillow_reads_it():
    cmyk = Image.fromarray(_checkerboard(16, 24)).convert("CMYK")
    buffer = io.BytesIO()
    cmyk.save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(image_io.decode_jpeg(data), expected)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    pixels = _checkerboard(16, 24)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    with Image.open(path) as image:
        from PIL import ImageOps

        expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    np.testing.assert_array_equal(image_io.load_image(str(path)), expected)


def test_image_too_large_is_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(_checkerboard(24, 32)).save(path)
    assert image_io.load_image(str(path), max_pixels=24 * 32).shape == (24, 32, 3)
    with pytest.raises(image_io.ImageReadError, match=r"image too large: 32x24"):
        image_io.load_image(str(path), max_pixels=24 * 32 - 1)


def test_out_of_range_integer_pixels_are_refused(tmp_path):
    path = tmp_path / "signed.tif"
    tifffile.imwrite(path, np.array([[-5, 100]], np.int16))  # Pillow writes int16 as int32
    with pytest.raises(image_io.ImageReadError, match="outside 0..65535"):
        image_io.load_image(str(path))
    Image.fromarray(np.array([[-5, 100]], np.int32)).save(path)
    with pytest.raises(image_io.ImageReadError, match=r"32-bit integer samples \(values -5..100"):
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
        # Spaces are part of a name: this entry is not b.png.
        str(lists / f"  {absolute}  "),
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
    with pytest.raises(image_io.InputListError, match="not a UTF-8 .or UTF-16. text file"):
        image_io.collect_inputs([str(tmp_path / "binary.txt")])


# ----------------------------------------------------------------------------- score_files
IMAGE_SIZE = 16
CENTRAL_FRACTION = 0.875
PREPROCESSING = preprocess.Preprocessing(IMAGE_SIZE, CENTRAL_FRACTION)


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
    rows = engine.score_files(
        paths,
        predict,
        preprocessing=PREPROCESSING,
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
    assert engine.exit_code(rows) == engine.EXIT_SOME_FAILED
    assert engine.summary_line(rows) == f"scored {len(GOOD_FILES)}, failed {len(BAD_FILES)}"


def test_csv_has_one_line_per_row_and_names_faults(lab_folder):
    folder, _ = lab_folder
    paths = image_io.collect_inputs([str(folder)])
    predict, _ = _fake_predict(batch_size=8)
    rows = engine.score_files(
        paths,
        predict,
        preprocessing=PREPROCESSING,
        batch_size=8,
        progress=False,
    )
    threshold = float(np.median([row.probs[CRYSTALS] for row in rows if row.probs]))
    out = io.StringIO()
    engine.write_csv(rows, out, crystal_threshold=threshold)
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
    engine.write_csv(rows, plain)
    assert plain.getvalue().splitlines()[0] == (
        "path,prediction,p_crystals,p_precipitate,p_clear,p_other,error"
    )


def test_all_scored_exits_zero_and_progress_goes_to_stderr(lab_folder, capsys):
    folder, _ = lab_folder
    paths = [str(folder / name) for name in GOOD_FILES]
    predict, _ = _fake_predict(batch_size=32)  # larger than the input: one padded batch
    rows = engine.score_files(paths, predict, preprocessing=PREPROCESSING, batch_size=32)
    assert engine.exit_code(rows) == engine.EXIT_ALL_SCORED == 0
    assert engine.summary_line(rows) == f"scored {len(GOOD_FILES)}, failed 0"
    captured = capsys.readouterr()
    assert captured.out == "" and f"{len(GOOD_FILES)}/{len(GOOD_FILES)}" in captured.err


def _top_left_quadrant_predict(images: np.ndarray) -> np.ndarray:
    """Orientation-sensitive: looks only at the top-left quarter of each image."""
    half = IMAGE_SIZE // 2
    return _softmax(_features(images[:, :half, :half]))


def test_tta_averages_over_the_eight_symmetries(lab_folder):
    folder, _ = lab_folder
    path = str(folder / "rgb.tif")
    rows = engine.score_files(
        [path],
        _top_left_quadrant_predict,
        preprocessing=PREPROCESSING,
        batch_size=3,  # 8 views: batches of 3, 3 and a padded 2
        tta=engine.ALL_TTA,
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
    untransformed = engine.score_files(
        [path],
        _top_left_quadrant_predict,
        preprocessing=PREPROCESSING,
        batch_size=3,
        progress=False,
    )
    np.testing.assert_allclose(
        untransformed[0].probs, _softmax(_features(quarters[:1]))[0], atol=1e-12
    )
    assert not np.allclose(rows[0].probs, untransformed[0].probs)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="Unknown test-time transforms"):
        engine.score_files(
            [], _top_left_quadrant_predict, preprocessing=PREPROCESSING, batch_size=1,
            tta=["rot45"],
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"crystal_threshold must be in \[0, 1\]"):
        engine.write_csv([], io.StringIO(), crystal_threshold=1.5)


def test_wrong_predictor_output_is_an_error(lab_folder):
    folder, _ = lab_folder
    with pytest.raises(ValueError, match=rf"expected \(2, {NUM_CLASSES}\)"):
        engine.score_files(
            [str(folder / "rgb.bmp")],
            lambda images: np.ones((len(images), 3)),
            preprocessing=PREPROCESSING,
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
    rows = engine.score_files(
        paths,
        predict,
        preprocessing=PREPROCESSING,
        batch_size=2,
        progress=False,
    )
    assert engine.exit_code(rows) == 0
    for row in rows:
        np.testing.assert_allclose(row.probs, _expected_probs(row.path), atol=1e-12)
