"""Reading the MARCO release (or a lab's own images) from the TFDS manual directory.

Kept apart from the builder so that each piece (label mapping, corrections, the three accepted
layouts, image checks, the hash split) is a small function that can be tested on its own. Only
etils.epath touches files, so the builder stays usable on any filesystem TFDS supports and
within the TFDS test harness (which forbids `os` and `open` in builder code).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import re
from collections.abc import Iterable, Iterator

from etils import epath
from PIL import Image

from marco_jax.data import image_io
from marco_jax.labels import CLASS_NAMES

TRAIN, TEST = "train", "test"
CORRECTED_LABELS_FILENAME = "corrected_labels.csv"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Names that put a shard, CSV or folder in a split; anything else is split by hash.
_SPLIT_NAMES = {"train": TRAIN, "training": TRAIN, "test": TEST, "validation": TEST, "val": TEST}
# TFRecord shards as TF's classic scripts name them (`train-00000-of-01024`) or by suffix.
_SHARD_RE = re.compile(r"(-\d{5}-of-\d{5}|\.tfrecords?(-\d{5}-of-\d{5})?|\.tfrec)$")
_HEADER_WORDS = ("path", "filename", "file", "image")
_KEEP_AS_IS = {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L")}


class UnknownLabelError(ValueError):
    """A score that label_map.tsv does not know: the build stops rather than guess."""


@dataclasses.dataclass(frozen=True)
class Item:
    """One image file of the manual directory, listed before it is read."""

    path: epath.Path
    filename: str  # relative to the manual directory, "/"-separated: the example's key
    original_label: str
    source: str = ""
    split: str | None = None  # from the layout; None: decided by hash_split


@dataclasses.dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def normalize_label(text: str) -> str:
    """Case, underscores, hyphens and runs of blanks do not distinguish two scores."""
    return " ".join(re.sub(r"[_\-]", " ", text).lower().split())


def load_label_map(path: epath.Path) -> dict[str, str]:
    """Reads `score<TAB>class` lines (# comments) into {normalized score: class name}."""
    table: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) != 2 or fields[1] not in CLASS_NAMES:
            raise ValueError(
                f"{path}:{number}: expected '<original score>\\t<class>' with class one of "
                f"{CLASS_NAMES}, got {line!r}"
            )
        key = normalize_label(fields[0])
        if table.get(key, fields[1]) != fields[1]:
            raise ValueError(f"{path}:{number}: {fields[0]!r} is already mapped to {table[key]}")
        table[key] = fields[1]
    return table


def map_label(label: str, table: dict[str, str], where: str, map_path: epath.Path) -> str:
    """The MARCO class of an original score; stops the build on a score nobody mapped."""
    try:
        return table[normalize_label(label)]
    except KeyError:
        raise UnknownLabelError(
            f"{where}: unknown label {label!r}. Add a line '{label}<TAB><class>' (class one of "
            f"{', '.join(CLASS_NAMES)}) to {map_path}, or pass your own label map with "
            "MarcoConfig(label_map=...), then build again."
        ) from None


def _csv_rows(path: epath.Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, stripped cells) of a CSV, without blank rows or a header row."""
    for number, row in enumerate(csv.reader(io.StringIO(path.read_text())), start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells) or (number == 1 and cells[0].lower() in _HEADER_WORDS):
            continue
        yield number, cells


def load_corrected_labels(
    path: epath.Path, table: dict[str, str], map_path: epath.Path
) -> dict[str, str]:
    """Reads `filename,label` rows (relabeling, paper section 2) into {filename: class}."""
    corrected: dict[str, str] = {}
    for number, row in _csv_rows(path):
        if len(row) < 2:
            raise ValueError(f"{path}:{number}: expected 'filename,label', got {row}")
        corrected[row[0]] = map_label(row[1], table, f"{path}:{number} ({row[0]})", map_path)
    return corrected


def hash_split(filename: str, test_fraction: float) -> str:
    """Train or test from a hash of the file's base name: stable across runs, machines and
    relabeling moves (a file moved to another label folder keeps its split)."""
    base = filename.rsplit("/", 1)[-1].encode()
    position = int.from_bytes(hashlib.sha256(base).digest()[:8], "big") / 2.0**64
    return TEST if position < test_fraction else TRAIN


def split_of_name(name: str) -> str | None:
    """The split a shard, CSV or folder name announces (`train-00003-of-00010` -> train)."""
    head = re.split(r"[-_.]", name.lower(), maxsplit=1)[0]
    return _SPLIT_NAMES.get(head)


def prepare_image(data: bytes) -> tuple[bytes | None, str]:
    """The bytes to store for an image, or (None, why it is unusable).

    A JPEG is decoded strictly (`image_io.decode_jpeg`: damaged scan data that Pillow would
    pad with grey is refused); anything else is decoded fully (`load()`), which catches
    truncated files. JPEG and PNG in RGB or grey are stored untouched (no recompression loss);
    anything else is converted by `image_io.to_rgb8` (16-bit samples keep their high byte, as
    in classify, instead of Pillow's saturating conversion; transparency onto white) and
    re-encoded as RGB PNG, so that every stored image decodes to 3 channels.
    """
    if not data:
        return None, "empty file"
    try:
        if data.startswith(b"\xff\xd8\xff"):
            pixels = image_io.decode_jpeg(data)
            with Image.open(io.BytesIO(data)) as img:
                if (img.format, img.mode) in _KEEP_AS_IS:
                    return data, ""
        else:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                if (img.format, img.mode) in _KEEP_AS_IS:
                    return data, ""
                pixels = image_io.to_rgb8(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = e.reason if isinstance(e, image_io.JpegDecodeError) else f"{type(e).__name__}: {e}"
        return None, f"not a decodable image: {reason}"
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue(), ""


def why_no_items(manual_dir: epath.Path, layout: str) -> str:
    """Why a csv or folders layout listed no image, in words."""
    if layout == "csv":
        return "its CSV files list no existing image"
    tops = sorted(p for p in manual_dir.iterdir() if p.is_dir())
    roots = [p for p in tops if p.name.lower() in _SPLIT_NAMES] or [manual_dir]
    labels = [p for root in roots for p in sorted(root.iterdir()) if p.is_dir()]
    if not labels:
        return "there is no <label>/ folder (one folder per label, images inside)"
    names = ", ".join(_relative(p, manual_dir) + "/" for p in labels[:8])
    return f"the label folders ({names}) hold no files"


def files_under(root: epath.Path) -> list[epath.Path]:
    """Every file below root, sorted (epath's rglob refuses remote filesystems)."""
    found, stack = [], [root]
    while stack:
        for path in stack.pop().iterdir():
            (stack if path.is_dir() else found).append(path)
    return sorted(found)


def detect_layout(manual_dir: epath.Path) -> str:
    """'tfrecord' if there are shards, else 'csv' if there is a CSV list, else 'folders'."""
    files = files_under(manual_dir)
    if any(_SHARD_RE.search(p.name) for p in files):
        return "tfrecord"
    if any(_is_list_csv(p, manual_dir) for p in files):
        return "csv"
    return "folders"


def _is_list_csv(path: epath.Path, manual_dir: epath.Path) -> bool:
    return (
        path.parent == manual_dir
        and path.suffix.lower() == ".csv"
        and path.name != CORRECTED_LABELS_FILENAME
    )


def _relative(path: epath.Path, root: epath.Path) -> str:
    return path.relative_to(root).as_posix()


def _unused(files: Iterable[epath.Path], used: set[str], root: epath.Path, why: str):
    return [
        Skipped(_relative(p, root), why)
        for p in sorted(files)
        if _relative(p, root) not in used and p.name != CORRECTED_LABELS_FILENAME
    ]


def list_tfrecord_shards(
    manual_dir: epath.Path,
) -> tuple[dict[str | None, list[epath.Path]], list[Skipped]]:
    """Shards per split (None: split each record by hash) and the other files, reported."""
    shards: dict[str | None, list[epath.Path]] = {}
    files = files_under(manual_dir)
    for path in files:
        if _SHARD_RE.search(path.name):
            shards.setdefault(split_of_name(path.name), []).append(path)
    used = {_relative(p, manual_dir) for paths in shards.values() for p in paths}
    return shards, _unused(files, used, manual_dir, "not a TFRecord shard")


def list_folder_items(manual_dir: epath.Path) -> tuple[list[Item], list[Skipped]]:
    """`[train|test/]<label>/**/<image>`: the first folder level under the split is the label."""
    tops = sorted(p for p in manual_dir.iterdir() if p.is_dir())
    roots = [(p, _SPLIT_NAMES[p.name.lower()]) for p in tops if p.name.lower() in _SPLIT_NAMES]
    roots = roots or [(manual_dir, None)]
    items = []
    for root, split in roots:
        for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for path in files_under(label_dir):
                name = _relative(path, manual_dir)
                items.append(Item(path, name, label_dir.name, split=split))
    files = files_under(manual_dir)
    used = {it.filename for it in items}
    return items, _unused(files, used, manual_dir, "not inside a [train|test/]<label>/ folder")


def list_csv_items(manual_dir: epath.Path) -> tuple[list[Item], list[Skipped]]:
    """Top-level CSVs of `path,label[,source]` (header optional; paths relative to the CSV).

    A CSV named train*.csv or test*.csv puts its images in that split.
    """
    items, skipped = [], []
    first_seen: dict[str, tuple[str, str | None]] = {}  # filename -> (where, split)
    for csv_path in sorted(p for p in manual_dir.iterdir() if _is_list_csv(p, manual_dir)):
        for number, row in _csv_rows(csv_path):
            if len(row) < 2:
                raise ValueError(f"{csv_path}:{number}: expected 'path,label[,source]', got {row}")
            path = csv_path.parent / row[0]
            if not path.is_file():
                skipped.append(Skipped(f"{csv_path.name}:{number}: {row[0]}", "file not found"))
                continue
            source = row[2] if len(row) > 2 else ""
            split = split_of_name(csv_path.stem)
            filename = _relative(path, manual_dir)
            where = f"{csv_path}:{number}"
            if filename in first_seen:
                _refuse_listed_twice(filename, first_seen[filename], (where, split))
            first_seen[filename] = (where, split)
            items.append(Item(path, filename, row[1], source, split))
    files = [p for p in files_under(manual_dir) if not _is_list_csv(p, manual_dir)]
    used = {it.filename for it in items}
    return items, skipped + _unused(files, used, manual_dir, "not listed in any CSV")


def _refuse_listed_twice(
    filename: str, first: tuple[str, str | None], again: tuple[str, str | None]
) -> None:
    """One image on two CSV rows: in two splits the test set would leak into training; in one
    split TFDS would stop on a duplicated key without naming the file."""
    (where_a, split_a), (where_b, split_b) = first, again
    if split_a and split_b and split_a != split_b:
        raise ValueError(
            f"{filename} is listed in both {where_a} ({split_a}) and {where_b} ({split_b}): the "
            "test set would leak into training. Keep it in one split's CSV."
        )
    raise ValueError(
        f"{filename} is listed twice, at {where_a} and at {where_b}: remove one of the rows."
    )


def read_tfrecord_shard(path: epath.Path) -> Iterator[tuple[int, dict | None, str]]:
    """(index, {encoded, label_text, label_int, filename, source}, error) per record.

    A shard that is cut short yields one final (index, None, reason) instead of raising.
    """
    import tensorflow as tf  # Only the TFRecord layout needs TensorFlow.

    index = 0
    try:
        for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            feature = tf.train.Example.FromString(raw).features.feature

            def first(key, kind="bytes_list", feature=feature):
                values = getattr(feature[key], kind).value if key in feature else []
                return values[0] if values else None

            text = first("image/class/text")
            yield (
                index,
                dict(
                    encoded=first("image/encoded") or b"",
                    label_text=text.decode() if text else "",
                    label_int=first("image/class/label", "int64_list"),
                    filename=(first("image/filename") or b"").decode(),
                    source=(first("image/source") or b"").decode(),
                ),
                "",
            )
            index += 1
    except tf.errors.OpError as e:
        yield index, None, f"corrupt TFRecord after {index} records: {e.message}"
