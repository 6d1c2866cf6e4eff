"""The network is Inception-v3, and the MARCO variant is the paper's (section 3, Table 3)."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import REPO, load_config

from marco_jax.model import inception


def _count(model: nnx.Module, kind: type) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, kind)))


@pytest.fixture(scope="module")
def keras_and_ours():
    """Keras's InceptionV3 with random weights and random BN statistics, and ours with a copy."""
    keras = pytest.importorskip("keras")
    from keras_weights import load_keras_inception_v3

    keras.utils.set_random_seed(0)
    keras_model = keras.applications.InceptionV3(weights=None, classifier_activation=None)
    rng = np.random.default_rng(0)
    for layer in keras_model.layers:
        if type(layer).__name__ == "BatchNormalization":
            beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.normal(0, 0.1, beta.shape).astype(np.float32),
                    rng.normal(0, 0.1, mean.shape).astype(np.float32),
                    rng.uniform(0.5, 2.0, var.shape).astype(np.float32),
                ]
            )
    config = load_config("default")
    config.model.name, config.model.num_classes, config.model.image_size = "inception_v3", 1000, 299
    config.model.aux_logits = False  # Keras's InceptionV3 has no auxiliary head
    ours = inception.create_model(config)
    load_keras_inception_v3(ours, keras_model)
    return keras_model, ours


def test_standard_variant_has_keras_inception_v3_parameter_counts(keras_and_ours):
    keras_model, ours = keras_and_ours
    trainable = sum(int(np.prod(w.shape)) for w in keras_model.trainable_weights)
    statistics = sum(int(np.prod(w.shape)) for w in keras_model.non_trainable_weights)
    assert _count(ours, nnx.Param) == trainable == 23_817_352
    assert _count(ours, nnx.BatchStat) == statistics == 34_432


def test_standard_variant_reproduces_keras_logits(keras_and_ours):
    keras_model, ours = keras_and_ours
    images = np.random.default_rng(1).uniform(-1, 1, (2, 299, 299, 3)).astype(np.float32)
    expected = np.asarray(keras_model(images, training=False))
    got = np.asarray(ours(jnp.asarray(images), train=False))
    assert np.abs(expected).max() > 0.1, "logits too small for the comparison to mean anything"
    np.testing.assert_array_less(np.abs(got - expected).max(), 1e-4)


def test_marco_variant_maps_599_px_to_4_logits():
    config = load_config("default")
    model = nnx.eval_shape(lambda: inception.create_model(config))
    graphdef, state = nnx.split(model)
    images = jax.ShapeDtypeStruct((2, 599, 599, 3), jnp.float32)
    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, train=False), state, images)
    assert out.shape == (2, 4)
    stem = model.Conv2d_0a_3x3.conv
    assert (stem.out_features, stem.kernel_size, stem.strides, stem.padding) == (
        16,
        (3, 3),
        2,
        "VALID",
    )


def test_summary_command_prints_the_marco_counts_as_json():
    result = subprocess.run(
        [sys.executable, "-m", "marco_jax.summary", "--config", str(REPO / "configs/default.py")],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    model = nnx.eval_shape(lambda: inception.create_model(load_config("default")))
    # The release's variables (shared/released_marco/saved_model.pb): weights, BatchNorm betas and
    # the two heads' biases are trainable; moving means and variances are the statistics.
    assert summary["params"] == _count(model, nnx.Param) == 11_451_976
    assert summary["batch_stats"] == _count(model, nnx.BatchStat) == 24_608
    assert summary["output_shape"] == [1, 4]
    # Inception-v3 costs ~11.5 GFLOPs at 299 px; the narrower MARCO variant at 599 px a bit less.
    assert 5e9 < summary["flops_per_image"] < 12e9
    assert "Mixed_7c/Branch_3/Conv2d_0b_1x1/conv/kernel" in result.stdout


def test_default_network_takes_every_depth_from_the_release_table():
    config = load_config("default")
    table = inception.load_depth_table(config.model.depth_table)
    model = nnx.eval_shape(lambda: inception.create_model(config))
    depths = {name: layer.conv.out_features for name, layer in model.iter_conv_layers()}
    assert depths == table  # every layer, AuxLogits included, and nothing else
    assert depths["Mixed_6a/Branch_0/Conv2d_1a_1x1"] == 256
    assert model.num_features == 1056


def test_depth_table_naming_a_missing_layer_is_rejected(tmp_path):
    table = tmp_path / "typo.tsv"
    table.write_text("scope\tdepth\nMixed_6b/Branch_9/Conv2d_0a_1x1\t64\n")
    config = load_config("default")
    config.model.depth_table = str(table)
    with pytest.raises(ValueError, match="Branch_9"):
        nnx.eval_shape(lambda: inception.create_model(config))
    config.model.depth_table = "no_such_table"
    with pytest.raises(ValueError, match="marco_release"):
        nnx.eval_shape(lambda: inception.create_model(config))


def test_marco_variant_caps_every_conv_of_table_3_layers():
    config = load_config("table3")
    caps = config.model.depth_caps
    assert dict(caps) == {
        "Conv2d_4a_3x3": 144, "Mixed_6b": 128, "Mixed_6c": 144, "Mixed_6d": 144,
        "Mixed_6e": 96, "Mixed_7a": 96, "Mixed_7b": 192, "Mixed_7c": 192,
    }  # fmt: skip
    marco = nnx.eval_shape(lambda: inception.create_model(config))
    config.model.name = "inception_v3"
    standard = nnx.eval_shape(lambda: inception.create_model(config))
    standard_depths = {n: layer.conv.out_features for n, layer in standard.iter_conv_layers()}
    checked = 0
    for name, layer in marco.iter_conv_layers():
        if name == "Conv2d_0a_3x3":
            continue
        block = name.split("/")[0]
        expected = min(standard_depths[name], caps.get(block, standard_depths[name]))
        assert layer.conv.out_features == expected, name
        checked += block in caps
    assert checked == 1 + 4 * 10 + 6 + 2 * 9  # Conv2d_4a, Mixed_6b-e, Mixed_7a, Mixed_7b-c


def test_too_small_image_fails_with_the_minimum_size():
    config = load_config("default")
    config.model.image_size = 140
    with pytest.raises(ValueError, match="at least 151 px"):
        inception.create_model(config)


def test_unknown_cap_layer_is_rejected():
    config = load_config("default")
    config.model.depth_caps = {"Mixed_9z": 10}
    with pytest.raises(ValueError, match="Mixed_9z"):
        nnx.eval_shape(lambda: inception.create_model(config))


def test_aux_head_adds_logits_in_training_only(tiny_config):
    tiny_config.model.aux_logits = True
    model = inception.create_model(tiny_config)
    images = jnp.zeros((2, 151, 151, 3))
    logits, aux = model(images, train=True)
    assert logits.shape == aux.shape == (2, 4)
    assert model(images, train=False).shape == (2, 4)


def test_tiny_variant_trains_one_step_on_cpu(tiny_config):
    model = inception.create_model(tiny_config)
    assert hasattr(model, "Mixed_7c") and hasattr(model, "Conv2d_0a_3x3")
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    images = jax.random.uniform(jax.random.key(0), (4, 151, 151, 3), minval=-1, maxval=1)
    labels = jnp.array([0, 1, 2, 3])
    before_kernel = jnp.array(model.Logits.kernel[...])
    before_mean = jnp.array(model.Mixed_7c.Branch_0.Conv2d_0a_1x1.bn.mean[...])

    @nnx.jit
    def step(model, optimizer, images, labels):
        def loss_fn(model):
            logits = model(images, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    loss = step(model, optimizer, images, labels)
    assert np.isfinite(float(loss))
    assert not np.allclose(model.Logits.kernel[...], before_kernel)
    assert not np.allclose(model.Mixed_7c.Branch_0.Conv2d_0a_1x1.bn.mean[...], before_mean)
