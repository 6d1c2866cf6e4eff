"""marco dataset: crystallization-drop images in the 4 MARCO classes (Bruno et al. 2018).

Configs: `full` reads the MARCO release (or a lab's own images) from the manual directory;
`synthetic` (the default) renders drops procedurally, so everything runs with no download.
See README.md next to this file for layouts, label mapping and examples.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io

import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from marco_jax.data import preprocess, prescale
from marco_jax.labels import CLASS_NAMES
from tfds_marco.marco import build_inputs, synthetic
from tfds_marco.marco import manual_sources as ms
from tfds_marco.marco.manual_reader import (  # noqa: F401  (LABEL_MAP_PATH: re-exported)
    LABEL_MAP_PATH,
    OVERLAPS_NAME,
    SKIPPED_FILES_NAME,
    ManualReader,
)

# Table 2 of the paper, training images per class (crystals, precipitate, clear, other): pass
# as `class_weights` to render synthetic data with the release's class imbalance.
PAPER_TRAIN_COUNTS = (56_672, 212_541, 148_861, 24_856)


@dataclasses.dataclass(eq=False)
class MarcoConfig(tfds.core.BuilderConfig):
    """What to build. Make your own: `MarcoConfig(name="synthetic_big", kind="synthetic", ...)`.

    Attributes:
      kind: "manual" (read `manual_dir`) or "synthetic" (render with tfds_marco.marco.synthetic).
      layout: manual only: "auto", "tfrecord", "csv" or "folders" (README.md, "Layouts").
      test_fraction: manual only: share of images hashed into `test` when the layout names no
        split. The paper held out 50,284 of 493,214 images (10.2 %, section 2 and Table 2).
      label_map: manual only: TSV of `original score<TAB>class`; None: label_map.tsv here.
      corrected_labels: manual only: CSV of `filename,label` that overrides labels; None: use
        `<manual_dir>/corrected_labels.csv` when it exists.
      tfrecord_int_labels: manual only: names of the integer `image/class/label` values, used
        only for records without `image/class/text` (None: such records stop the build).
      num_train, num_test, image_size, seed: synthetic only: split sizes, square side, seed.
      class_weights: synthetic only: relative class frequencies in CLASS_NAMES order.
      jpeg_quality: synthetic only: quality of the stored JPEGs.
      prescale_format: "" stores the images as given; "jpeg" or "png" stores the train split
        pre-scaled for training with the preprocessing below (`marco_jax.data.prescale`: the
        shorter side at prescale_image_size / prescale_central_fraction, e.g. 599 px for the
        release's), decoding several times faster. The test split always keeps the originals,
        so that evaluation is the release's. The dataset's metadata records it, and training
        refuses a config with other preprocessing.
      prescale_image_size, prescale_central_fraction, prescale_resize_method,
        prescale_jpeg_dct: the training config's model.image_size and input.central_fraction,
        resize_method, jpeg_dct (defaults: the release's, configs/default.py).
      prescale_jpeg_quality: quality of the pre-scaled JPEGs.
    """

    kind: str = "manual"
    layout: str = "auto"
    test_fraction: float = 0.1
    label_map: str | None = None
    corrected_labels: str | None = None
    tfrecord_int_labels: tuple[str, ...] | None = None
    num_train: int = 2000
    num_test: int = 400
    image_size: int = 256
    seed: int = 0
    class_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    jpeg_quality: int = 95
    prescale_format: str = ""
    prescale_image_size: int = 599
    prescale_central_fraction: float = 1.0
    prescale_resize_method: str = "tf1_bilinear"
    prescale_jpeg_dct: str = "fast"
    prescale_jpeg_quality: int = 95

    def prescaled(self) -> prescale.Prescaled | None:
        """What the train split is pre-scaled for; None when it is stored as given."""
        if not self.prescale_format:
            return None
        preprocessing = preprocess.Preprocessing(
            self.prescale_image_size,
            self.prescale_central_fraction,
            self.prescale_resize_method,
            self.prescale_jpeg_dct,
        )
        return prescale.Prescaled(
            preprocessing, self.prescale_format, self.prescale_jpeg_quality, (ms.TRAIN,)
        )


FULL = MarcoConfig(
    name="full",
    kind="manual",
    description="The MARCO release (or your own images) read from the manual directory.",
)
# Balanced by default: chance is then 25 %, every class has 200 test images to measure per-class
# recall on, and a short training run sees all four outcomes (the release's "other" is 6 %).
# 176 px is the scale at which the embedded default model (configs/synthetic.py, 151 px after the
# 0.875 central crop) sees the drops: rendered at 256 px and shrunk, thin crystal edges fade and a
# tiny model learned ~40 % in 1000 steps instead of ~64 % (measured; see README.md here).
SYNTHETIC = MarcoConfig(
    name="synthetic",
    kind="synthetic",
    num_train=4000,
    num_test=800,
    image_size=176,
    description="4000 train / 800 test procedurally rendered drops, 176 px, balanced classes.",
)
SYNTHETIC_TINY = MarcoConfig(
    name="synthetic_tiny",
    kind="synthetic",
    num_train=16,
    num_test=8,
    image_size=64,
    description="16 train / 8 test rendered drops at 64 px, for tests and smoke runs.",
)


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for the marco dataset."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: configs full (manual), synthetic, synthetic_tiny.",
        "1.1.0": "Synthetic drops: the drop edge stays in view, crystals and precipitate stand out "
        "more (a tiny model learns them in minutes).",
    }
    BUILDER_CONFIGS = [FULL, SYNTHETIC, SYNTHETIC_TINY]
    DEFAULT_BUILDER_CONFIG_NAME = "synthetic"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Config `full` only. Put ONE of these layouts in the manual directory (`--manual_dir`, default
    `<data_dir>/downloads/manual/`):
      1. The MARCO release (https://marco.ccr.buffalo.edu/download): its TFRecord shards as they
         are, e.g. `train-00000-of-00xxx` ... and `test-00000-of-00xxx` (names starting with
         train/test choose the split; other shard names are split by hash).
      2. Images plus CSV files at the top level: rows `path,label[,source]` (header optional,
         paths relative to the CSV). `train*.csv` / `test*.csv` choose the split.
      3. One folder per label: `<label>/<images>`, optionally under `train/` and `test/`.
    Labels are the sources' own scores; label_map.tsv maps them to the 4 classes (an unknown one
    stops the build and names the file). Optional: `corrected_labels.csv` (filename,label) with
    relabeled images. Unreadable files are skipped and listed in skipped_files.tsv next to the
    built dataset.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                    "source": tfds.features.Text(),
                    "original_label": tfds.features.Text(),
                    "filename": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://marco.ccr.buffalo.edu",
            metadata=tfds.core.MetadataDict({prescale.METADATA_KEY: self._prescaled_record()}),
        )

    def _prescaled_record(self) -> dict | None:
        prescaled = self.builder_config.prescaled()
        return None if prescaled is None else prescaled.to_metadata()

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        if config.kind == "synthetic":
            sizes = {ms.TRAIN: config.num_train, ms.TEST: config.num_test}
            return {
                s: self._generate_examples(s, self._synthetic_examples(i, n))
                for i, (s, n) in enumerate(sizes.items())
                if n
            }
        if config.kind != "manual":
            raise ValueError(f"MarcoConfig.kind must be 'manual' or 'synthetic', got {config.kind}")
        self._reader = ManualReader(config, epath.Path(dl_manager.manual_dir))
        # Recorded before reading, so that a change made during the build shows next time.
        self._inputs = self._reader.manifest()
        return {s: self._generate_examples(s, ex, report=True) for s, ex in self._reader.splits()}

    def download_and_prepare(self, *, download_dir=None, download_config=None, **kwargs):
        """TFDS's, but a prepared `full` dataset is reused only if its inputs are unchanged
        (`build_inputs`): otherwise the build stops, naming what changed."""
        mode = getattr(download_config, "download_mode", None)
        reuse = mode is None or not mode.overwrite_dataset
        if self.builder_config.kind == "manual" and reuse and self.data_path.exists():
            self._check_inputs_unchanged(getattr(download_config, "manual_dir", None))
        return super().download_and_prepare(
            download_dir=download_dir, download_config=download_config, **kwargs
        )

    def _check_inputs_unchanged(self, manual_dir) -> None:
        stored = build_inputs.read(self.data_path / build_inputs.BUILD_INPUTS_NAME)
        if stored is None:
            logging.warning(
                "marco/%s: %s records no inputs (built by an older version): it is reused "
                "unchecked; rebuild it (build(..., rebuild=True)) to record them.",
                self.builder_config.name,
                self.data_path,
            )
            return
        reader = ManualReader(self.builder_config, epath.Path(manual_dir or stored["manual_dir"]))
        found = build_inputs.changes(stored, reader.manifest())
        if found:
            raise build_inputs.BuildInputsChangedError(
                f"marco/{self.builder_config.name} in {self.data_path} was built from other "
                f"inputs than those there now: {'; '.join(found)}. Rebuild it with "
                "build(..., rebuild=True), or delete that directory, or use another data_dir."
            )

    def _generate_examples(self, split: str, examples, report: bool = False):
        """One split's (key, example) pairs, pre-scaled if the config says so; then the skip
        list is (re)written next to the data, so that it is complete once the last split ends."""
        prescaled = self.builder_config.prescaled()
        if prescaled is None or split not in prescaled.splits:
            yield from examples
        else:
            for key, example in examples:
                yield key, example | {"image": prescaled.encoded(example["image"])}
        if report:
            self._reader.write_report(self.data_path / SKIPPED_FILES_NAME)

    def _synthetic_examples(self, split_index: int, num_images: int):
        config = self.builder_config
        images = synthetic.generate(
            num_images, config.image_size, (config.seed, split_index), config.class_weights
        )
        for i, (label, failure, image) in enumerate(images):
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, "JPEG", quality=config.jpeg_quality)
            name = f"{ms.TRAIN if split_index == 0 else ms.TEST}/{i:06d}.jpg"
            yield (
                name,
                {
                    "image": buf.getvalue(),
                    "label": label,
                    "source": "synthetic",
                    "original_label": CLASS_NAMES[label] + (f": {failure}" if failure else ""),
                    "filename": name,
                },
            )

    def _post_download_and_prepare_hook(self) -> None:
        """The totals and the record of the inputs, once the dataset sits in its final
        directory."""
        if getattr(self, "_reader", None) is not None:
            build_inputs.write(self.data_path / build_inputs.BUILD_INPUTS_NAME, self._inputs)
            self._reader.log_totals(self.data_path / SKIPPED_FILES_NAME)


def build(
    config: str | MarcoConfig = "synthetic",
    data_dir: str | None = None,
    manual_dir: str | None = None,
    rebuild: bool = False,
    **overrides,
) -> Builder:
    """Builds the dataset once (array_record) and returns its builder; later calls reuse it.

    `overrides` change fields of a named config (e.g. `build("synthetic", num_train=200)`);
    the result gets its own config name, derived from them, so it never clobbers the original.
    Read it with `builder.as_data_source(split="train")`.

    A prepared `full` dataset is reused only while its inputs are those it was built from
    (`build_inputs`); otherwise BuildInputsChangedError names the change. rebuild=True builds
    it again from the inputs as they are now, replacing the old one.
    """
    if isinstance(config, str):
        base = {c.name: c for c in Builder.BUILDER_CONFIGS}[config]
        if overrides:
            digest = hashlib.sha1(repr(sorted(overrides.items())).encode()).hexdigest()[:8]
            config = dataclasses.replace(base, name=f"{base.name}_{digest}", **overrides)
        else:
            config = base
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    builder = Builder(config=config, data_dir=data_dir)
    if rebuild and builder.data_path.exists():
        logging.warning("marco/%s: rebuilding %s", config.name, builder.data_path)
        builder.data_path.rmtree()
        builder = Builder(config=config, data_dir=data_dir)  # without the old DatasetInfo
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    # array_record: random access, which grain needs (tfds.data_source / as_data_source).
    builder.download_and_prepare(file_format="array_record", download_config=download_config)
    return builder
