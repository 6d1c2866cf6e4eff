"""Regenerates the dummy manual directories of the `full` config tests (one per layout).

    python tfds_marco/marco/dummy_data/make_dummy_data.py

Each layout holds tiny 32 px drops rendered by tfds_marco.marco.synthetic plus the bad inputs the
builder must skip and report (a truncated JPEG, an empty file, a text file, a record with a broken
image, a shard cut in the middle of a record). The expected counts in marco_dataset_builder_test.py
follow from what is written here; keep the two in step.
"""

from __future__ import annotations

import csv
import io
import pathlib
import shutil

import tensorflow as tf
from PIL import Image

from marco_jax.labels import CLASS_NAMES
from tfds_marco.marco.manual_sources import TEST, hash_split
from tfds_marco.marco.synthetic import render_drop

HERE = pathlib.Path(__file__).resolve().parent
SIZE = 32


def encoded(seed: int, label: str, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    img = Image.fromarray(render_drop(seed, CLASS_NAMES.index(label), SIZE)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, quality=85) if fmt == "JPEG" else img.save(buf, fmt)
    return buf.getvalue()


def truncated_jpeg() -> bytes:
    """Header intact (PIL opens it), scan data cut: only a full decode notices."""
    data = encoded(99, "clear")
    return data[: len(data) * 2 // 3]


def example(image: bytes, text: str, filename: str) -> bytes:
    def b(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    feature = {
        "image/encoded": b(image),
        "image/class/text": b(text.encode()),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[0])),
        "image/filename": b(filename.encode()),
        "image/format": b(b"JPEG"),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shard(path: pathlib.Path, records: list[bytes], cut_last: bool = False) -> None:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    if cut_last:  # the shard ends in the middle of its last record
        path.write_bytes(path.read_bytes()[: -len(records[-1]) // 2])


def make_tfrecord(root: pathlib.Path) -> None:
    """train: 4 good + 1 broken image, plus 1 good before a cut; test: 2 good."""
    root.mkdir()
    train = [
        example(encoded(1, "crystals"), "Crystals", "1001.jpeg"),
        example(encoded(2, "clear"), "Clear", "1002.jpeg"),
        example(encoded(3, "precipitate"), "Heavy Precipitate", "1003.jpeg"),
        example(truncated_jpeg(), "Clear", "1004_truncated.jpeg"),
        example(encoded(5, "other"), "Skin", "1005.jpeg"),
    ]
    write_shard(root / "train-00000-of-00002", train)
    cut = [example(encoded(6, "crystals"), "Needles", "1006.jpeg"), train[1]]
    write_shard(root / "train-00001-of-00002", cut, cut_last=True)
    test = [
        example(encoded(7, "crystals"), "Microcrystals", "2001.jpeg"),
        example(encoded(8, "other"), "phase_separation", "2002.jpeg"),
    ]
    write_shard(root / "test-00000-of-00001", test)
    (root / "README.txt").write_text("a file that is not a shard: reported, not read\n")


def make_csv(root: pathlib.Path) -> None:
    """labels.csv, hash split: 4 train + 2 test good rows, a truncated JPEG, a missing file;
    and one image that no row lists."""
    images = root / "images"
    images.mkdir(parents=True)
    names = [f"drop_{i:03d}.jpg" for i in range(200)]
    train = [n for n in names if hash_split(n, 0.1) != TEST][:4]
    test = [n for n in names if hash_split(n, 0.1) == TEST][:2]
    labels = ["crystals", "precipitate", "clear", "other", "crystals", "clear"]
    rows = [["path", "label", "source"]]
    for i, (name, label) in enumerate(zip(train + test, labels, strict=True)):
        (images / name).write_bytes(encoded(10 + i, label))
        rows.append([f"images/{name}", label.capitalize(), "GSK, Formulatrix"])
    (images / "truncated.jpg").write_bytes(truncated_jpeg())
    rows += [["images/truncated.jpg", "Clear", ""], ["images/missing.jpg", "Clear", ""]]
    (images / "unlisted.jpg").write_bytes(encoded(30, "clear"))
    with (root / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def make_folders(root: pathlib.Path) -> None:
    """train/<label>/: 4 good (grey JPEG and RGBA PNG among them) + truncated, empty, text;
    test/<label>/: 2 good."""
    files = {
        "train/crystals/a.jpg": encoded(20, "crystals"),
        "train/Heavy_Precipitate/b.jpg": encoded(21, "precipitate", mode="L"),
        "train/clear/c.png": encoded(22, "clear", "PNG"),
        "train/other/d.png": encoded(23, "other", "PNG", mode="RGBA"),
        "train/crystals/truncated.jpg": truncated_jpeg(),
        "train/clear/empty.png": b"",
        "train/other/notes.txt": b"not an image\n",
        "test/crystals/e.jpg": encoded(24, "crystals"),
        "test/precipitate/f.jpg": encoded(25, "precipitate"),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def main() -> None:
    for layout, make in (("tfrecord", make_tfrecord), ("csv", make_csv), ("folders", make_folders)):
        shutil.rmtree(HERE / layout, ignore_errors=True)
        make(HERE / layout)
    total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file())
    print(f"wrote {HERE} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
