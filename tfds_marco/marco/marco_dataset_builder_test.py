"""marco dataset: TFDS's builder checks on every config and every manual layout.

The dummy manual directories come from dummy_data/make_dummy_data.py; each one holds bad files
that must be skipped and named in skipped_files.tsv.
"""

import tensorflow_datasets as tfds

from tfds_marco.marco import marco_dataset_builder

DUMMY = marco_dataset_builder.Builder.code_path.parent / "dummy_data"


class _FullLayout:
    """Builds `full` from one dummy layout, then checks the skip report lists the bad files.

    A mixin, not a TestCase, so that the test runner does not run it on the whole dummy_data/.
    """

    DATASET_CLASS = marco_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["full"]
    SKIP_CHECKSUMS = True
    EXPECTED_SKIPPED: tuple[str, ...] = ()

    def _download_and_prepare_as_dataset(self, builder):
        super()._download_and_prepare_as_dataset(builder)
        report = builder.data_path / marco_dataset_builder.SKIPPED_FILES_NAME
        lines = report.read_text().splitlines()
        self.assertEqual(lines[0], "path\treason")
        skipped = sorted(line.split("\t")[0] for line in lines[1:])
        self.assertEqual(skipped, sorted(self.EXPECTED_SKIPPED))


class MarcoFullTfrecordTest(_FullLayout, tfds.testing.DatasetBuilderTestCase):
    EXAMPLE_DIR = str(DUMMY / "tfrecord")
    SPLITS = {"train": 5, "test": 2}
    EXPECTED_SKIPPED = (
        "README.txt",
        "train-00000-of-00002#3 (1004_truncated.jpeg)",
        "train-00001-of-00002",  # cut in its second record; the first one is kept
    )


class MarcoFullCsvTest(_FullLayout, tfds.testing.DatasetBuilderTestCase):
    EXAMPLE_DIR = str(DUMMY / "csv")
    SPLITS = {"train": 4, "test": 2}  # no split in the CSV: by hash of the file name
    EXPECTED_SKIPPED = (
        "images/truncated.jpg",
        "images/unlisted.jpg",
        "labels.csv:9: images/missing.jpg",
    )


class MarcoFullFoldersTest(_FullLayout, tfds.testing.DatasetBuilderTestCase):
    EXAMPLE_DIR = str(DUMMY / "folders")
    SPLITS = {"train": 4, "test": 2}
    EXPECTED_SKIPPED = (
        "train/clear/empty.png",
        "train/crystals/truncated.jpg",
        "train/other/notes.txt",
    )


class MarcoSyntheticTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = marco_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["synthetic_tiny"]
    SPLITS = {"train": 16, "test": 8}
    SKIP_CHECKSUMS = True


if __name__ == "__main__":
    tfds.testing.test_main()
