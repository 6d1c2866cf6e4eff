"""The shipped configs, each a file with `get_config()`: `--config NAME` (default, finetune,
synthetic, table3, ci) names one of them from anywhere; `--config PATH.py` reads any other.

They live in the package so that an installed marco_jax has them; the checkout's `configs/` is a
link to this folder, so `--config configs/NAME.py` works there too. See `default.py` for what
each field means.
"""
