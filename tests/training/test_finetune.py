"""Fine-tuning from the released MARCO model (`config.init_from`, configs/finetune.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import load_config

from marco_jax.data import input_pipeline
from marco_jax.labels import CRYSTALS
from marco_jax.model import inception, release
from marco_jax.training import step as train_step
from marco_jax.training import warm_start

tf = pytest.importorskip("tensorflow")
import release_graph  # noqa: E402  (needs TensorFlow)

pytestmark = pytest.mark.slow  # the release's full-width network, 30 steps: ~2 minutes

STEPS = 30


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    return release_graph.write_uncalibrated_release(tmp_path_factory.mktemp("release"), seed=1)


def _finetune_config(release_dir, data_dir, num_classes: int = 4):
    """configs/finetune.py on the tiny synthetic drops, small enough for 2 CPU cores: the
    release's network at full width, 151 px (its AuxLogits 5x5 kernel shrinks there)."""
    config = load_config("finetune")
    config.init_from = str(release_dir)
    config.dataset.config_name = "synthetic_tiny"
    config.dataset.data_dir = str(data_dir)
    config.model.image_size = 151
    config.model.num_classes = num_classes
    config.input.global_batch_size = config.input.eval_batch_size = 8
    config.input.num_workers = 0
    config.num_train_steps = STEPS
    return config


def _losses(config, map_labels=lambda labels: labels) -> list[float]:
    """STEPS real training steps (pipeline, augmentation, optimiser) from the warm start."""
    model = inception.create_model(config, rngs=config.seed)
    warm_start.load_into(model, config)
    source = input_pipeline.open_tfds_source(config, "train")
    steps_per_epoch = len(source) // config.input.global_batch_size
    _, state, step = train_step.create(config, model, steps_per_epoch)
    batches = input_pipeline.create_train_dataset(
        config, source, process_index=0, process_count=1, seed=0
    )
    losses = []
    for _, batch in zip(range(STEPS), batches, strict=False):
        batch = {"image": jnp.asarray(batch["image"]), "label": map_labels(batch["label"])}
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return losses


def test_warm_start_copies_the_release_and_keeps_new_heads_fresh(release_dir, tfds_data_dir):
    config = _finetune_config(release_dir, tfds_data_dir, num_classes=2)
    model = inception.create_model(config, rngs=config.seed)
    fresh = warm_start.load_into(model, config)
    values = release.read_variables(release_dir)
    name = "Inception/Mixed_7c/Branch_3/Conv2d_0b_1x1"
    layer = model.Mixed_7c.Branch_3.Conv2d_0b_1x1
    np.testing.assert_array_equal(layer.conv.kernel[...], values[f"{name}/weights"])
    np.testing.assert_array_equal(layer.bn.mean[...], values[f"{name}/BatchNorm/moving_mean"])
    assert model.Logits.kernel.shape == (1, 1, 1056, 2)
    # Only the heads: the two 2-class outputs, and the aux 5x5 kernel that shrank at 151 px.
    assert all(name.startswith(warm_start.HEADS) for name in fresh)
    assert {"Logits/kernel", "Logits/bias", "AuxLogits/Conv2d_2b_1x1/kernel"} <= set(fresh)


def test_thirty_steps_from_the_release_lower_the_loss(release_dir, tfds_data_dir):
    losses = _losses(_finetune_config(release_dir, tfds_data_dir))
    assert np.isfinite(losses).all()
    # Measured: 2.67 over the first 5 steps, 1.96 over the last 5 (batches differ by +-0.4).
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses


def test_a_two_class_head_trains_from_the_release(release_dir, tfds_data_dir):
    """crystals against the rest, a lab's usual question, on a new 2-way head."""
    config = _finetune_config(release_dir, tfds_data_dir, num_classes=2)
    losses = _losses(config, lambda labels: jnp.asarray(labels != CRYSTALS, jnp.int32))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses


def test_training_from_an_imported_workdir_starts_from_its_weights(
    release_dir, tfds_data_dir, tmp_path
):
    from marco_jax import import_release
    from marco_jax.runs import store

    imported = tmp_path / "imported"
    import_release.import_release(str(release_dir), str(imported), load_config("default"))
    config = _finetune_config(imported, tfds_data_dir)
    model = inception.create_model(config, rngs=config.seed)
    warm_start.load_into(model, config)
    reference = store.load(str(imported), "latest").model
    np.testing.assert_array_equal(model.Logits.kernel[...], reference.Logits.kernel[...])
    same = jax.tree.map(
        np.array_equal,
        nnx.state(model.Mixed_5b, nnx.Param).to_pure_dict(),
        nnx.state(reference.Mixed_5b, nnx.Param).to_pure_dict(),
    )
    assert all(jax.tree.leaves(same))
