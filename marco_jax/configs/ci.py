"""The smallest complete run, for tests and CI: every block of the MARCO network, a few steps.

python -m marco_jax.main --config configs/ci.py --workdir /tmp/marco_ci
"""

import pathlib

import ml_collections

from marco_jax.config_utils import load_config


def get_config() -> ml_collections.ConfigDict:
    config = load_config(pathlib.Path(__file__).with_name("table3.py"))
    config.dataset.config_name = "synthetic_tiny"
    config.model.image_size = 151
    config.model.depth_multiplier = 0.1
    config.model.min_depth = 8
    config.input.global_batch_size = 8
    config.input.eval_batch_size = 8
    config.input.num_workers = 0
    config.optimizer.learning_rate = 0.01
    config.optimizer.ema_decay = 0.99
    config.num_train_steps = 6
    config.log_every_steps = 2
    config.eval_every_steps = 3
    config.checkpoint_every_steps = 3
    config.early_stopping_patience = 0
    config.profile_steps = 0
    return config
