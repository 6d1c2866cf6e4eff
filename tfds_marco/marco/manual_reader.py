"""The `full` config's reading of the manual directory, apart from the TFDS builder: examples
from the three layouts, what had to be skipped, the record of the inputs, and the checks that
an image does not sit in both splits and that no class is empty.
"""

from __future__ import annotations

import hashlib
from typing import Any

from absl import logging
from etils import epath

from marco_jax.labels import CLASS_NAMES
from tfds_marco.marco import build_inputs
from tfds_marco.marco import manual_sources as ms

LABEL_MAP_PATH = epath.Path(__file__).parent / "label_map.tsv"
SKIPPED_FILES_NAME = "skipped_files.tsv"
OVERLAPS_NAME = "train_test_overlaps.tsv"  # byte-identical images found in both splits


class ManualReader:
    """Turns the manual directory into examples, keeping the list of what it had to skip."""

    def __init__(self, config: Any, manual_dir: epath.Path):  # config: a MarcoConfig
        self.config, self.manual_dir = config, manual_dir
        self.map_path = epath.Path(config.label_map) if config.label_map else LABEL_MAP_PATH
        self.table = ms.load_label_map(self.map_path)
        corrections = epath.Path(
            config.corrected_labels or manual_dir / ms.CORRECTED_LABELS_FILENAME
        )
        if config.corrected_labels and not corrections.exists():
            raise FileNotFoundError(f"MarcoConfig.corrected_labels: no file {corrections}")
        self.corrected = (
            ms.load_corrected_labels(corrections, self.table, self.map_path)
            if corrections.exists()
            else {}
        )
        self.corrections_path = corrections if corrections.exists() else None
        self.corrections_used: set[str] = set()
        self.skipped: dict[str, ms.Skipped] = {}
        self.digests: dict[str, dict[str, str]] = {ms.TRAIN: {}, ms.TEST: {}}
        self.overlaps: list[tuple[str, str]] = []

    def manifest(self) -> dict:
        return build_inputs.manifest(self.manual_dir, self.map_path, self.corrections_path)

    def splits(self):
        """(split, examples) for every split that gets at least one image."""
        layout = self.config.layout
        if layout == "auto":
            layout = ms.detect_layout(self.manual_dir)
        logging.info("marco/%s: reading %s, %s layout", self.config.name, self.manual_dir, layout)
        if layout == "tfrecord":
            shards, skipped = ms.list_tfrecord_shards(self.manual_dir)
            self.note_skipped(skipped)
            unsplit = shards.get(None, [])
            for split in (ms.TRAIN, ms.TEST):
                if shards.get(split) or unsplit:
                    yield split, self._tfrecord_examples(split, shards.get(split, []), unsplit)
            return
        if layout not in ("csv", "folders"):
            raise ValueError(f"MarcoConfig.layout must be auto/tfrecord/csv/folders, got {layout}")
        lister = ms.list_csv_items if layout == "csv" else ms.list_folder_items
        items, skipped = lister(self.manual_dir)
        self.note_skipped(skipped)
        if not items:
            raise ValueError(
                f"marco/{self.config.name}: no image found in {self.manual_dir} ({layout} "
                f"layout): {ms.why_no_items(self.manual_dir, layout)}. Nothing was built."
            )
        by_split: dict[str, list] = {ms.TRAIN: [], ms.TEST: []}
        for item in items:  # Map every label before decoding anything: fail fast.
            label = ms.map_label(item.original_label, self.table, item.filename, self.map_path)
            split = item.split or ms.hash_split(item.filename, self.config.test_fraction)
            by_split[split].append((item, label))
        for split, entries in by_split.items():
            self._warn_empty_classes(split, entries)
            if entries:
                yield split, self._file_examples(split, entries)
            else:
                logging.warning(
                    "marco/%s: no image falls in split %r (%d images, test_fraction=%s): the "
                    "split is not created.",
                    self.config.name,
                    split,
                    len(items),
                    self.config.test_fraction,
                )

    def _warn_empty_classes(self, split: str, entries) -> None:
        """A class with no image in a split (after corrections) is named: a model trained
        without it, or a test set without it, is rarely what was meant."""
        present = {self._corrected(item.filename, label) for item, label in entries}
        missing = [name for name in CLASS_NAMES if name not in present]
        if entries and missing:
            logging.warning(
                "marco/%s: split %r has no image of class %s (%d images in the split).",
                self.config.name,
                split,
                ", ".join(repr(m) for m in missing),
                len(entries),
            )

    def _corrected(self, filename: str, label: str) -> str:
        for key in (filename, filename.rsplit("/", 1)[-1]):
            if key in self.corrected:
                return self.corrected[key]
        return label

    def _file_examples(self, split: str, entries):
        for item, label in entries:
            raw = item.path.read_bytes()
            self._note_digest(split, raw, item.filename)
            data, reason = ms.prepare_image(raw)
            if data is None:
                self.note_skipped([ms.Skipped(item.filename, reason)])
                continue
            yield (
                item.filename,
                self._example(data, label, item.original_label, item.source, item.filename),
            )

    def _note_digest(self, split: str, data: bytes, name: str) -> None:
        """Remembers the image's bytes; the same bytes in the other split are an overlap (the
        test set leaking into training), reported at the end as (train name, test name)."""
        digest = hashlib.sha256(data).hexdigest()
        other = self.digests[ms.TEST if split == ms.TRAIN else ms.TRAIN]
        if digest in other:
            pair = (other[digest], name) if split == ms.TEST else (name, other[digest])
            self.overlaps.append(pair)
        self.digests[split].setdefault(digest, name)

    def _tfrecord_examples(self, split, shards, unsplit):
        for shard in shards + unsplit:
            shard_name = shard.relative_to(self.manual_dir).as_posix()
            for index, record, error in ms.read_tfrecord_shard(shard):
                key = f"{shard_name}#{index}"
                if record is None:
                    self.note_skipped([ms.Skipped(shard_name, error)])
                    continue
                filename = record["filename"] or key
                test_fraction = self.config.test_fraction
                if shard in unsplit and ms.hash_split(filename, test_fraction) != split:
                    continue
                where = f"{key} ({filename})"
                self._note_digest(split, record["encoded"], where)
                data, reason = ms.prepare_image(record["encoded"])
                if data is None:
                    self.note_skipped([ms.Skipped(where, reason)])
                    continue
                original = record["label_text"] or self._int_label(record["label_int"], where)
                label = ms.map_label(original, self.table, where, self.map_path)
                yield key, self._example(data, label, original, record["source"], filename)

    def _int_label(self, value: int | None, where: str) -> str:
        """The release's shards carry image/class/text; this serves shards that do not."""
        names = self.config.tfrecord_int_labels
        if names is None or value is None or not 0 <= value < len(names):
            raise ms.UnknownLabelError(
                f"{where}: the record has no image/class/text and image/class/label={value} "
                f"cannot be named; set MarcoConfig(tfrecord_int_labels=(...)) to the label names "
                f"in index order (got {names})."
            )
        return names[value]

    def _example(self, image: bytes, label: str, original: str, source: str, filename: str):
        """A corrected label, matched on the full filename or else its base name, wins."""
        for key in (filename, filename.rsplit("/", 1)[-1]):
            if key in self.corrected:
                self.corrections_used.add(key)
                label = self.corrected[key]
                break
        return {
            "image": image,
            "label": label,
            "source": source,
            "original_label": original,
            "filename": filename,
        }

    def note_skipped(self, skipped: list[ms.Skipped]) -> None:
        for s in skipped:
            if s.path not in self.skipped:
                logging.warning("marco/%s: skipped %s: %s", self.config.name, s.path, s.reason)
                self.skipped[s.path] = s

    def write_report(self, path: epath.Path) -> None:
        rows = ["path\treason"] + [f"{s.path}\t{s.reason}" for s in self.skipped.values()]
        path.write_text("\n".join(rows) + "\n")

    def log_totals(self, report: epath.Path) -> None:
        name = self.config.name
        if not report.exists():
            self.write_report(report)
        logging.warning("marco/%s: %d files skipped, listed in %s", name, len(self.skipped), report)
        if self.overlaps:
            pairs = "; ".join(f"{a} = {b}" for a, b in self.overlaps[:5])
            logging.warning(
                "marco/%s: %d images of the test split are byte-identical to training images "
                "(the test set leaks into training), e.g. %s; they are listed in %s.",
                name,
                len(self.overlaps),
                pairs,
                report.parent / OVERLAPS_NAME,
            )
            rows = ["train\ttest"] + [f"{a}\t{b}" for a, b in self.overlaps]
            (report.parent / OVERLAPS_NAME).write_text("\n".join(rows) + "\n")
        unused = sorted(set(self.corrected) - self.corrections_used)
        if unused:
            logging.warning(
                "marco/%s: %d corrected labels matched no image, e.g. %s",
                name,
                len(unused),
                unused[:5],
            )
