"""The released MARCO graph filled with random, calibrated values runs and scores real drops."""

from __future__ import annotations

import numpy as np
import pytest
import release_graph as rg
import tensorflow as tf

pytestmark = pytest.mark.skipif(
    not rg.RELEASE_GRAPH.exists() or len(rg.REAL_DROPS) != 16,
    reason="needs shared/released_marco and the 16 shared/real_drops JPEGs beside the repo",
)


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    """One random release (seed 0, calibrated on all 16 drops) for the whole module."""
    return rg.write_random_release(tmp_path_factory.mktemp("random_release"), seed=0)


@pytest.fixture(scope="module")
def scored(release_dir):
    return rg.score_with_release(release_dir, rg.REAL_DROPS)


def test_every_graph_variable_is_in_the_checkpoint(release_dir):
    shapes = rg.variable_shapes()
    assert len(shapes) == 393
    # slim's naming quirk, kept by the release: this "1x1" layer has a 3x3 kernel (stride 2).
    assert shapes["Inception/Mixed_6a/Branch_0/Conv2d_1a_1x1/weights"] == (3, 3, 288, 256)
    assert shapes["Inception/Logits/Conv2d_1c_1x1/weights"] == (1, 1, 1056, 4)
    reader = tf.train.load_checkpoint(str(release_dir / "variables" / "variables"))
    written = {k: tuple(v) for k, v in reader.get_variable_to_shape_map().items()}
    assert written == shapes
    assert reader.get_tensor("global_step") == 0
    assert reader.get_variable_to_dtype_map()["global_step"] == tf.int64
    for name, shape in shapes.items():
        value = reader.get_tensor(name)
        assert value.shape == shape and np.all(np.isfinite(value)), name
        if name.endswith("moving_variance"):
            assert np.all(value > 0), name


def test_scores_on_real_drops_are_informative(scored):
    classes, scores = scored
    assert scores.shape == (16, 4) and len(classes) == 16
    assert np.all(np.isfinite(scores))
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0), "scores must be sorted best first"
    for row in classes:
        assert sorted(row) == sorted(rg.CLASS_NAMES)
    probs = rg.release_probabilities(classes, scores)
    np.testing.assert_array_equal(np.sort(probs, axis=1)[:, ::-1], scores)
    top = [row[0] for row in classes]
    assert [rg.CLASS_NAMES[i] for i in probs.argmax(axis=1)] == top
    assert len(set(top)) >= 2, top
    assert np.mean(scores[:, 0] < 0.95) >= 0.75, scores[:, 0]


def test_batchnorm_statistics_were_calibrated(release_dir):
    reader = tf.train.load_checkpoint(str(release_dir / "variables" / "variables"))
    names = [n for n in rg.variable_shapes() if n.endswith("moving_variance")]
    assert len(names) == 97  # 95 conv layers of the body + 2 of AuxLogits
    mean_vars = np.array([reader.get_tensor(n).mean() for n in names])
    assert np.ptp(mean_vars) > 0.2, "moving variances look untouched"
    means = [reader.get_tensor(n.replace("moving_variance", "moving_mean")) for n in names]
    assert max(np.abs(m).max() for m in means) > 0.1, "moving means look untouched"

    # On the calibration images every BatchNorm output is ~N(beta, 1) per channel, including
    # the last layer of the body and the AuxLogits head: upstream layers were calibrated first.
    last = "Inception/Inception/Mixed_7c/Branch_3/Conv2d_0b_1x1"
    aux = "Inception/AuxLogits/Conv2d_2a_5x5"
    bn = [f"{scope}/BatchNorm/FusedBatchNorm:0" for scope in (last, aux)]
    got = rg.release_tensors(release_dir, rg.REAL_DROPS, [*bn, rg.PRE_LOGITS])
    for scope, tensor in zip((last, aux), bn, strict=True):
        y = got[tensor]
        variable_scope = scope.replace("Inception/Inception/", "Inception/")
        beta = reader.get_tensor(f"{variable_scope}/BatchNorm/beta")
        np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), beta, atol=2e-3)
        moving_var = reader.get_tensor(f"{variable_scope}/BatchNorm/moving_variance")
        expected_var = moving_var / (moving_var + rg.BN_EPSILON)  # 1 up to the epsilon
        np.testing.assert_allclose(y.var(axis=(0, 1, 2)), expected_var, atol=2e-3)
    features = got[rg.PRE_LOGITS]
    assert features.shape == (16, 1, 1, 1056)
    assert 0.1 < features.mean() < 2.0 and features.max() < 10.0
    assert features.std(axis=0).mean() > 0.05, "features do not vary across images"


def test_graph_decodes_jpeg_with_the_default_dct_method():
    """Host code must decode like the release: TF's DecodeJpeg with dct_method ""."""
    (decode,) = [n for n in rg.meta_graph().graph_def.node if n.op == "DecodeJpeg"]
    assert decode.attr["channels"].i == 3
    assert decode.attr["dct_method"].s == b""
    assert decode.attr["fancy_upscaling"].b
    assert decode.attr["ratio"].i == 1
