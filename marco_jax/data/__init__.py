"""From files to batches: image reading, the release's preprocessing, on-device augmentation and
the grain pipelines over a TFDS source."""
