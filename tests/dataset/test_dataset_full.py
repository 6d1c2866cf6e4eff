"""The `full` config on real and hand-made manual directories: labels, corrections, bad input."""

from __future__ import annotations

import collections
import io
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath
from helpers import REPO, SHARED
from PIL import Image

from marco_jax.labels import CLASS_NAMES
from tfds_marco.marco import MarcoConfig, build, manual_sources
from tfds_marco.marco.marco_dataset_builder import LABEL_MAP_PATH, SKIPPED_FILES_NAME, Builder

GSK = SHARED / "real_drops" / "marco_gsk"
DUMMY_FOLDERS = Builder.code_path.parent / "dummy_data" / "folders"


def _examples(builder) -> dict[str, dict]:
    """filename -> example, over every split, read the way grain reads (array_record)."""
    out = {}
    for split in builder.info.splits:
        for ex in builder.as_data_source(split=split):
            out[ex["filename"].decode()] = ex
    return out


def _jpeg(color=(200, 180, 190), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (16, 16), color if mode == "RGB" else color[0]).save(buf, "JPEG")
    return buf.getvalue()


def _build_with_the_stock_cli(data_dir: pathlib.Path, manual_dir: pathlib.Path):
    """`tfds build tfds_marco/marco ...` as a user types it, read back from its directory."""
    tfds_cli = pathlib.Path(sys.executable).with_name("tfds")
    command = [str(tfds_cli), "build", "tfds_marco/marco", "--config=full"]
    command += [f"--manual_dir={manual_dir}", f"--data_dir={data_dir}"]
    subprocess.run([*command, "--file_format=array_record"], cwd=REPO, check=True)
    return tfds.builder_from_directory(str(data_dir / "marco" / "full" / str(Builder.VERSION)))


@pytest.mark.skipif(not GSK.is_dir(), reason=f"real photographs not found at {GSK}")
@pytest.mark.parametrize("how", ["python", "stock_cli"])
def test_full_builds_from_the_real_gsk_folders_as_they_are(tmp_path, how):
    if how == "python":
        builder = build("full", data_dir=str(tmp_path), manual_dir=str(GSK))
    else:
        builder = _build_with_the_stock_cli(tmp_path, GSK)
    examples = _examples(builder)
    assert len(examples) == 12
    for name, ex in examples.items():  # the folder a photograph sits in is its label
        assert CLASS_NAMES[ex["label"]] == name.split("/")[0]
        assert ex["image"].shape == (960, 1280, 3)
    counts = collections.Counter(CLASS_NAMES[ex["label"]] for ex in examples.values())
    assert counts == {"crystals": 4, "clear": 2, "precipitate": 3, "other": 3}
    assert examples["crystals/6488.jpeg"]["image"].dtype == np.uint8
    report = (builder.data_path / SKIPPED_FILES_NAME).read_text()
    assert "LICENSE-collection\t" in report  # not an image of any label: reported, not dropped


def test_unknown_label_stops_the_build_naming_file_and_label(tmp_path):
    manual = tmp_path / "manual"
    (manual / "crystals").mkdir(parents=True)
    (manual / "crystals" / "a.jpg").write_bytes(_jpeg())
    (manual / "Bananas").mkdir()
    (manual / "Bananas" / "b.jpg").write_bytes(_jpeg())
    with pytest.raises(manual_sources.UnknownLabelError) as error:
        build("full", data_dir=str(tmp_path / "data"), manual_dir=str(manual))
    message = str(error.value)
    assert "Bananas/b.jpg" in message and "'Bananas'" in message and "label_map.tsv" in message


def test_corrected_labels_override_the_source_label(tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(DUMMY_FOLDERS, manual)
    (manual / "corrected_labels.csv").write_text("filename,label\na.jpg,Clear\n")
    examples = _examples(build("full", data_dir=str(tmp_path / "data"), manual_dir=str(manual)))
    assert CLASS_NAMES[examples["train/crystals/a.jpg"]["label"]] == "clear"
    assert examples["train/crystals/a.jpg"]["original_label"] == b"crystals"
    assert CLASS_NAMES[examples["test/crystals/e.jpg"]["label"]] == "crystals"  # not corrected
    grey = examples["train/Heavy_Precipitate/b.jpg"]  # score mapped, grey JPEG given 3 channels
    assert CLASS_NAMES[grey["label"]] == "precipitate" and grey["image"].shape == (32, 32, 3)


def test_corrected_labels_can_live_outside_the_manual_directory(tmp_path):
    corrections = tmp_path / "relabeled.csv"
    corrections.write_text("train/clear/c.png,other\n")  # matched on the full relative name
    config = MarcoConfig(name="full_relabeled", corrected_labels=str(corrections))
    builder = build(config, data_dir=str(tmp_path / "data"), manual_dir=str(DUMMY_FOLDERS))
    assert CLASS_NAMES[_examples(builder)["train/clear/c.png"]["label"]] == "other"


def test_corrections_with_an_unknown_label_are_refused(tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(DUMMY_FOLDERS, manual)
    (manual / "corrected_labels.csv").write_text("a.jpg,maybe crystals\n")
    with pytest.raises(manual_sources.UnknownLabelError, match="a.jpg.*'maybe crystals'"):
        build("full", data_dir=str(tmp_path / "data"), manual_dir=str(manual))


def _tfrecord(path, records: list[dict]) -> None:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for r in records:
            feature = {
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[r["image"]]))
            }
            if "text" in r:
                feature["image/class/text"] = tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[r["text"].encode()])
                )
            feature["image/class/label"] = tf.train.Feature(
                int64_list=tf.train.Int64List(value=[r["int"]])
            )
            feature["image/filename"] = tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[r["name"].encode()])
            )
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


def test_tfrecord_labels_prefer_text_and_name_ints_only_when_told(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    _tfrecord(
        manual / "train-00000-of-00001",
        [
            {"image": _jpeg(), "text": "Light Precipitate", "int": 3, "name": "t.jpg"},
            {"image": _jpeg(), "int": 2, "name": "n.jpg"},  # no text: the int must be named
        ],
    )
    with pytest.raises(
        manual_sources.UnknownLabelError, match=r"#1 \(n.jpg\).*tfrecord_int_labels"
    ):
        build("full", data_dir=str(tmp_path / "a"), manual_dir=str(manual))
    names = ("background", "Crystals", "Clear", "Precipitate", "Other")
    builder = build(
        "full", data_dir=str(tmp_path / "b"), manual_dir=str(manual), tfrecord_int_labels=names
    )
    examples = _examples(builder)
    assert CLASS_NAMES[examples["t.jpg"]["label"]] == "precipitate"  # text wins over int 3
    assert CLASS_NAMES[examples["n.jpg"]["label"]] == "clear"
    assert examples["n.jpg"]["original_label"] == b"Clear"


def test_label_map_matching_ignores_case_underscores_and_blanks():
    table = manual_sources.load_label_map(LABEL_MAP_PATH)
    for score in ("Heavy_Precipitate", "  heavy   PRECIPITATE ", "heavy-precipitate"):
        assert manual_sources.map_label(score, table, "x", LABEL_MAP_PATH) == "precipitate"
    assert set(table.values()) == set(CLASS_NAMES)


def test_label_map_errors_name_the_line(tmp_path):
    bad = epath.Path(tmp_path / "map.tsv")
    bad.write_text("# comment\nCrystals\tcrystals\nNeedles\tneedle-ish\n")
    with pytest.raises(ValueError, match=r"map.tsv:3"):
        manual_sources.load_label_map(bad)


def test_hash_split_is_stable_and_near_the_fraction():
    names = [f"{i}.jpeg" for i in range(20_000)]
    test = [n for n in names if manual_sources.hash_split(n, 0.1) == manual_sources.TEST]
    assert 0.09 < len(test) / len(names) < 0.11
    # Moving a file to another label folder (relabeling) keeps its split.
    assert manual_sources.hash_split("clear/17.jpeg", 0.5) == manual_sources.hash_split(
        "crystals/17.jpeg", 0.5
    )


def test_prepare_image_keeps_jpeg_and_png_bytes_and_reencodes_the_rest():
    jpeg = _jpeg()
    assert manual_sources.prepare_image(jpeg) == (jpeg, "")
    grey = _jpeg(mode="L")
    assert manual_sources.prepare_image(grey) == (grey, "")
    buf = io.BytesIO()
    Image.new("RGBA", (8, 8), (1, 2, 3, 4)).save(buf, "PNG")
    data, _ = manual_sources.prepare_image(buf.getvalue())
    with Image.open(io.BytesIO(data)) as img:
        assert (img.format, img.mode) == ("PNG", "RGB")
    assert manual_sources.prepare_image(b"") == (None, "empty file")
    data, reason = manual_sources.prepare_image(jpeg[: len(jpeg) * 2 // 3])
    assert data is None and "truncated" in reason.lower()


def test_build_overrides_get_their_own_config_name(tmp_path):
    builder = build("synthetic", data_dir=str(tmp_path), num_train=6, num_test=2, image_size=32)
    assert builder.builder_config.name.startswith("synthetic_")
    assert builder.builder_config.name != "synthetic"
    train = builder.as_data_source(split="train")
    assert len(train) == 6 and train[0]["image"].shape == (32, 32, 3)
    assert train[0]["source"] == b"synthetic"
