"""MARCO as the paper's text describes it: Table 3's depth caps, no auxiliary head, no L2 loss,
TF-slim's 0.875 central crop with Pillow's antialiased resize.

This was the project's reading of the paper before the release's graph was at hand; the release
(configs/default.py) differs in 20 layer widths, has the AuxLogits head and crops the whole
central square. It stays as the base of the small CPU configs (synthetic, ci), whose measured
figures were made with it, and for anyone comparing the two readings:
  python -m marco_jax.main --config configs/table3.py --workdir /tmp/marco_table3
"""

import pathlib

import ml_collections

from marco_jax.config_utils import load_config

# Table 3: the maximum depth of every convolution inside these named layers.
PAPER_DEPTH_CAPS = {
    "Conv2d_4a_3x3": 144,
    "Mixed_6b": 128,
    "Mixed_6c": 144,
    "Mixed_6d": 144,
    "Mixed_6e": 96,
    "Mixed_7a": 96,
    "Mixed_7b": 192,
    "Mixed_7c": 192,
}


def get_config() -> ml_collections.ConfigDict:
    config = load_config(pathlib.Path(__file__).with_name("default.py"))
    config.model.depth_table = ""
    config.model.depth_caps = dict(PAPER_DEPTH_CAPS)
    config.model.aux_logits = False  # the paper does not mention one
    config.optimizer.l2_regularization = 0.0  # the paper does not mention one
    # TF-slim's Inception evaluation crop; training scales the image by the same factor.
    config.input.central_fraction = 0.875
    config.input.resize_method = "pil_antialias"
    config.input.jpeg_dct = "accurate"
    return config
