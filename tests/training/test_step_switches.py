"""The train step's speed switches (config.model.batch_norm_fast_variance, config.model.remat)
reach the network and the step; bench/train_step.py measures whether they pay."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from marco_jax.model import inception
from marco_jax.training import config_checks
from marco_jax.training import step as train_step


def _batch_norms(model):
    return [layer.bn for _, layer in model.iter_conv_layers()]


@pytest.mark.parametrize("fast", [False, True])
def test_batch_norm_variance_switch_reaches_every_layer(tiny_config, fast):
    tiny_config.model.batch_norm_fast_variance = fast
    norms = _batch_norms(inception.create_model(tiny_config))
    assert norms and all(bn.use_fast_variance is fast for bn in norms)


def test_configs_without_the_switches_keep_the_exact_computation(tiny_config):
    del tiny_config.model["batch_norm_fast_variance"]  # a config.json stored before them
    del tiny_config.model["remat"]
    assert not any(bn.use_fast_variance for bn in _batch_norms(inception.create_model(tiny_config)))


def _step_jaxpr(config) -> str:
    model = inception.create_model(config)
    _, state, step_fn = train_step.create(config, model, steps_per_epoch=10)
    size, n = config.model.image_size, 2
    batch = {
        "image": np.zeros((n, size, size, 3), np.uint8),
        "label": np.zeros((n,), np.int32),
    }
    return str(jax.make_jaxpr(step_fn)(state, batch))


def test_remat_convs_checkpoints_the_forward_pass(tiny_config):
    # The differentiated jaxpr holds a remat whose policy saves the dots (convolutions count).
    policy = "policy=DotsSaveable(only_if_no_batch_dims=False)"
    assert "remat" not in _step_jaxpr(tiny_config)
    tiny_config.model.remat = "convs"
    jaxpr = _step_jaxpr(tiny_config)
    assert "remat" in jaxpr and policy in jaxpr


def test_an_unknown_remat_policy_is_one_config_error(tiny_config):
    tiny_config.model.remat = "everything"
    with pytest.raises(config_checks.ConfigError, match="config.model.remat='everything'"):
        config_checks.validate(tiny_config)
