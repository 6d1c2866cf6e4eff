"""TFDS builders of this project. Importing `tfds_marco.marco` registers the `marco` dataset."""
