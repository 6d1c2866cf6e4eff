"""Dataset builds: 16-bit PNGs not saturated, an image in both splits refused or
reported, rebuilds after the inputs changed refused (or done when asked), empty folders and
classes named, a duplicated CSV row naming the file."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from image_fixtures import _png_chunk

from tfds_marco.marco import build, build_inputs
from tfds_marco.marco import marco_dataset_builder as mdb
from tfds_marco.marco.marco_dataset_builder import OVERLAPS_NAME


def _jpeg(color=(200, 180, 190)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, "JPEG")
    return buf.getvalue()


def _png16_gray(samples: np.ndarray) -> bytes:
    height, width = samples.shape
    rows = samples.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b"")
    )  # fmt: skip


def _images(builder) -> dict[str, dict]:
    out = {}
    for split in builder.info.splits:
        for ex in builder.as_data_source(split=split):
            out[ex["filename"].decode()] = ex
    return out


def _folders(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_sixteen_bit_gray_png_keeps_its_high_byte_not_saturated(tmp_path):
    dark = (np.arange(16 * 16).reshape(16, 16) * 15).astype(np.uint16)  # 0..3825: lowest 6 %
    manual = _folders(
        tmp_path / "m", {"clear/dark.png": _png16_gray(dark), "crystals/a.jpg": _jpeg()}
    )
    builder = build("full", data_dir=str(tmp_path / "d"), manual_dir=str(manual), test_fraction=0)
    image = _images(builder)["clear/dark.png"]["image"]
    np.testing.assert_array_equal(image[..., 0], (dark >> 8).astype(np.uint8))
    assert image.mean() < 8  # was 246.6 of 255


def test_image_in_both_train_and_test_csv_is_refused(tmp_path):
    manual = _folders(tmp_path / "m", {"a.jpg": _jpeg(), "b.jpg": _jpeg()})
    (manual / "train.csv").write_text("path,label\na.jpg,crystals\nb.jpg,clear\n")
    (manual / "test.csv").write_text("path,label\na.jpg,crystals\n")
    with pytest.raises(ValueError) as raised:
        build("full", data_dir=str(tmp_path / "d"), manual_dir=str(manual))
    assert str(raised.value) == (
        f"a.jpg is listed in both {manual}/test.csv:2 (test) and {manual}/train.csv:2 (train): "
        "the test set would leak into training. Keep it in one split's CSV."
    )


def test_duplicated_csv_row_names_the_file_and_both_lines(tmp_path):
    manual = _folders(tmp_path / "m", {"a.jpg": _jpeg()})
    (manual / "labels.csv").write_text("a.jpg,crystals\na.jpg,crystals\n")
    with pytest.raises(ValueError) as raised:
        build("full", data_dir=str(tmp_path / "d"), manual_dir=str(manual))
    assert str(raised.value) == (
        f"a.jpg is listed twice, at {manual}/labels.csv:1 and at {manual}/labels.csv:2: "
        "remove one of the rows."
    )


def test_identical_images_in_train_and_test_folders_are_reported(tmp_path):
    same = _jpeg((10, 200, 30))
    manual = _folders(
        tmp_path / "m",
        {"train/crystals/x.jpg": same, "test/crystals/y.jpg": same, "train/clear/z.jpg": _jpeg()},
    )
    builder = build("full", data_dir=str(tmp_path / "d"), manual_dir=str(manual))
    report = (builder.data_path / OVERLAPS_NAME).read_text()
    assert report == "train\ttest\ncrystals/x.jpg\tcrystals/y.jpg\n".replace(
        "crystals/x.jpg", "train/crystals/x.jpg"
    ).replace("crystals/y.jpg", "test/crystals/y.jpg")


def test_rebuild_after_the_inputs_changed_is_refused_then_done_when_asked(tmp_path):
    manual = _folders(tmp_path / "m", {"crystals/a.jpg": _jpeg(), "clear/b.jpg": _jpeg()})
    data_dir = str(tmp_path / "d")
    first = build("full", data_dir=data_dir, manual_dir=str(manual))
    assert len(_images(first)) == 2
    recorded = build_inputs.read(first.data_path / build_inputs.BUILD_INPUTS_NAME)
    assert sorted(recorded["files"]) == ["clear/b.jpg", "crystals/a.jpg"]
    assert len(_images(build("full", data_dir=data_dir, manual_dir=str(manual)))) == 2  # reused

    (manual / "other").mkdir()
    (manual / "other" / "c.jpg").write_bytes(_jpeg())
    (manual / "corrected_labels.csv").write_text("a.jpg,precipitate\n")
    os.utime(manual / "clear" / "b.jpg", (1, 1))
    with pytest.raises(build_inputs.BuildInputsChangedError) as raised:
        build("full", data_dir=data_dir, manual_dir=str(manual))
    message = str(raised.value)
    assert message.startswith(f"marco/full in {first.data_path} was built from other inputs")
    for words in [
        "2 files added (e.g. corrected_labels.csv, other/c.jpg)",
        "1 files changed (e.g. clear/b.jpg)",
        "the corrected labels changed",
        "build(..., rebuild=True)",
    ]:
        assert words in message, (words, message)

    again = build("full", data_dir=data_dir, manual_dir=str(manual), rebuild=True)
    images = _images(again)
    assert sorted(images) == ["clear/b.jpg", "crystals/a.jpg", "other/c.jpg"]
    assert images["crystals/a.jpg"]["label"] == mdb.CLASS_NAMES.index("precipitate")
    assert len(_images(build("full", data_dir=data_dir, manual_dir=str(manual)))) == 3


def test_all_empty_label_folders_fail_clearly(tmp_path):
    manual = tmp_path / "m"
    for label in ("crystals", "clear"):
        (manual / label).mkdir(parents=True)
    with pytest.raises(ValueError) as raised:
        build("full", data_dir=str(tmp_path / "d"), manual_dir=str(manual))
    assert str(raised.value) == (
        f"marco/full: no image found in {manual} (folders layout): the label folders "
        "(clear/, crystals/) hold no files. Nothing was built."
    )
    assert not (tmp_path / "d" / "marco" / "full").exists() or not any(
        (tmp_path / "d" / "marco" / "full").rglob("dataset_info.json")
    )


def test_an_empty_class_is_warned_about(tmp_path, monkeypatch):
    warnings = []
    monkeypatch.setattr(mdb.logging, "warning", lambda msg, *args: warnings.append(msg % args))
    manual = _folders(tmp_path / "m", {"crystals/a.jpg": _jpeg(), "clear/b.jpg": _jpeg()})
    (manual / "other").mkdir()  # an empty class folder
    build("full", data_dir=str(tmp_path / "d"), manual_dir=str(manual), test_fraction=0)
    expected = "split 'train' has no image of class 'precipitate', 'other' (2 images in the split)"
    assert any(expected in w for w in warnings), warnings


def test_identical_images_in_train_and_test_shards_are_reported(tmp_path):
    from test_dataset_full import _tfrecord

    manual = tmp_path / "m"
    manual.mkdir()
    same = _jpeg((5, 6, 7))
    _tfrecord(manual / "train-00000-of-00001", [{"image": same, "text": "Clear", "int": 0,
                                                   "name": "a.jpg"}])  # fmt: skip
    _tfrecord(manual / "test-00000-of-00001", [{"image": same, "text": "Clear", "int": 0,
                                                  "name": "b.jpg"}])  # fmt: skip
    builder = build("full", data_dir=str(tmp_path / "d"), manual_dir=str(manual))
    assert (builder.data_path / OVERLAPS_NAME).read_text() == (
        "train\ttest\ntrain-00000-of-00001#0 (a.jpg)\ttest-00000-of-00001#0 (b.jpg)\n"
    )
