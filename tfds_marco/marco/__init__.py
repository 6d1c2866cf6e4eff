"""The `marco` TFDS dataset. Importing this package registers it with TFDS."""

from tfds_marco.marco.marco_dataset_builder import PAPER_TRAIN_COUNTS, Builder, MarcoConfig, build

__all__ = ["PAPER_TRAIN_COUNTS", "Builder", "MarcoConfig", "build"]
