"""The optimiser against TensorFlow 1's RMSPropOptimizer, the schedule and the weight EMA."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf
from flax import nnx
from helpers import REPO

from marco_jax.config_utils import load_config
from marco_jax.training import optim

_SHAPES = {"conv": (3, 3, 2, 4), "bias": (4,), "dense": (6, 5)}
_STEPS_PER_EPOCH = 3  # with lr_decay_epochs=2: a staircase drop after steps 6 and 12
_NUM_STEPS = 14
_RTOL = 1e-6  # TF1-exact: "to 1e-6 relative"
# float32 is what training runs; float64 removes most rounding (optax still computes the learning
# rate in float32, which bounds the float64 agreement near 1e-8).
_DTYPES = [np.float32, np.float64]


def _paper_config():
    """The paper's optimiser alone: the release's L2 term is tested on its own below."""
    config = load_config(REPO / "configs" / "default.py")
    config.optimizer.l2_regularization = 0.0
    return config


def _inputs(dtype):
    rng = np.random.default_rng(0)
    init = {k: rng.normal(0.0, 1.0, s).astype(dtype) for k, s in _SHAPES.items()}
    grads = [
        {k: rng.normal(0.0, 1.0, s).astype(dtype) for k, s in _SHAPES.items()}
        for _ in range(_NUM_STEPS)
    ]
    return init, grads


def _run_tf(config, init, grads):
    """Parameters after every step, and the final rms/momentum slots, from TF1 graph mode."""
    opt_cfg = config.optimizer
    dtype = next(iter(init.values())).dtype
    graph = tf.Graph()
    with graph.as_default():
        variables = {k: tf.compat.v1.Variable(v) for k, v in init.items()}
        feeds = {k: tf.compat.v1.placeholder(dtype, v.shape) for k, v in init.items()}
        global_step = tf.compat.v1.train.get_or_create_global_step()
        learning_rate = tf.compat.v1.train.exponential_decay(
            tf.constant(opt_cfg.learning_rate, dtype),  # the rate is computed in this dtype
            global_step,
            decay_steps=int(opt_cfg.lr_decay_epochs * _STEPS_PER_EPOCH),
            decay_rate=opt_cfg.lr_decay_factor,
            staircase=True,
        )
        # Hyperparameters as tensors of the variables' dtype: TF would otherwise round Python
        # floats to float32 before casting them to float64.
        optimizer = tf.compat.v1.train.RMSPropOptimizer(
            learning_rate,
            decay=tf.constant(opt_cfg.rmsprop_decay, dtype),
            momentum=tf.constant(opt_cfg.momentum, dtype),
            epsilon=tf.constant(opt_cfg.epsilon, dtype),
        )
        train_op = optimizer.apply_gradients(
            [(feeds[k], variables[k]) for k in init], global_step=global_step
        )
        slots = {
            k: (optimizer.get_slot(v, "rms"), optimizer.get_slot(v, "momentum"))
            for k, v in variables.items()
        }
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            history = []
            for g in grads:
                sess.run(train_op, {feeds[k]: g[k] for k in init})
                history.append(sess.run(variables))
            final_slots = sess.run(slots)
    return history, final_slots


def _run_optax(tx, init, grads):
    """Like _run_tf; float64 inputs run with JAX's 64-bit mode on for this call only."""
    with jax.enable_x64(next(iter(init.values())).dtype == np.float64):

        @jax.jit
        def step(params, state, g):
            updates, state = tx.update(g, state, params)
            return optax.apply_updates(params, updates), state

        params = jax.tree.map(jnp.asarray, init)
        state = tx.init(params)
        history = []
        for g in grads:
            params, state = step(params, state, g)
            history.append(jax.device_get(params))
        return history, jax.device_get(state)


def _rel_err(actual, expected):
    """Largest per-tensor relative error max|a - b| / max|b|.

    Per tensor rather than per element: parameters cross zero during the run, where float32
    rounding of order 1e-7 * |typical value| is a huge fraction of the element itself.
    """
    return max(
        float(np.max(np.abs(np.asarray(actual[k]) - expected[k])) / np.max(np.abs(expected[k])))
        for k in expected
    )


@pytest.fixture(scope="module", params=_DTYPES, ids=lambda d: d.__name__)
def paper_run(request):
    config = _paper_config()
    init, grads = _inputs(request.param)
    tf_history, tf_slots = _run_tf(config, init, grads)
    return config, init, grads, tf_history, tf_slots


def test_matches_tf1_rmsprop_across_staircase_boundaries(paper_run):
    config, init, grads, tf_history, tf_slots = paper_run
    tx = optim.create_optimizer(config, optim.learning_rate_schedule(config, _STEPS_PER_EPOCH))
    history, state = _run_optax(tx, init, grads)

    errors = [_rel_err(ours, theirs) for ours, theirs in zip(history, tf_history, strict=True)]
    # TF's rms slot is optax's nu; TF's momentum slot is minus optax's trace.
    rms_state, _, trace_state = state
    rms_err = _rel_err(rms_state.nu, {k: v[0] for k, v in tf_slots.items()})
    mom_err = _rel_err(
        jax.tree.map(np.negative, trace_state.trace), {k: v[1] for k, v in tf_slots.items()}
    )
    print(
        f"\nvs TF1 RMSPropOptimizer, {init['bias'].dtype}, {_NUM_STEPS} steps: max relative "
        f"error params {max(errors):.2g}, rms {rms_err:.2g}, momentum {mom_err:.2g}"
    )
    assert max(errors) <= _RTOL, errors
    assert rms_err <= _RTOL
    assert mom_err <= _RTOL


def _rmsprop_variant(config, *, initial_scale=1.0, eps_in_sqrt=True, lr_after_momentum=False):
    opt = config.optimizer
    schedule = optim.learning_rate_schedule(config, _STEPS_PER_EPOCH)
    rms = optax.scale_by_rms(opt.rmsprop_decay, opt.epsilon, initial_scale, eps_in_sqrt)
    lr = optax.scale_by_learning_rate(schedule)
    momentum = optax.trace(decay=opt.momentum)
    return optax.chain(rms, momentum, lr) if lr_after_momentum else optax.chain(rms, lr, momentum)


@pytest.mark.parametrize(
    ("variant", "first_differing_step"),
    [
        ({"initial_scale": 0.0}, 0),  # optax's default accumulator
        ({"eps_in_sqrt": False}, 0),  # PyTorch's g / (sqrt(ms) + eps)
        ({"lr_after_momentum": True}, 2 * _STEPS_PER_EPOCH),  # first update at the lower rate
    ],
)
def test_tf_comparison_detects_each_tf1_detail(paper_run, variant, first_differing_step):
    """Each TF1 detail moves the trajectory beyond the tolerance, from the step where it should."""
    config, init, grads, tf_history, _ = paper_run
    history, _ = _run_optax(_rmsprop_variant(config, **variant), init, grads)
    errors = [_rel_err(ours, theirs) for ours, theirs in zip(history, tf_history, strict=True)]
    assert max(errors[:first_differing_step], default=0.0) <= _RTOL
    assert errors[first_differing_step] > 100 * _RTOL


def _schedule_values(config, steps_per_epoch, steps):
    schedule = optim.learning_rate_schedule(config, steps_per_epoch)
    return np.array([float(schedule(s)) for s in steps])


def test_schedule_staircase_every_two_epochs():
    config = _paper_config()  # 0.045, x0.94 every 2 epochs, staircase
    values = _schedule_values(config, 10, [0, 19, 20, 39, 40])
    expected = 0.045 * np.array([1.0, 1.0, 0.94, 0.94, 0.94**2])
    np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_schedule_continuous_decay():
    config = _paper_config()
    config.optimizer.staircase = False
    np.testing.assert_allclose(_schedule_values(config, 10, [10]), [0.045 * 0.94**0.5], rtol=1e-6)


@pytest.mark.parametrize(
    ("scaling", "global_batch", "expected"),
    [("linear", 64, 0.045), ("linear", 256, 0.18), ("linear", 16, 0.01125), ("none", 256, 0.045)],
)
def test_schedule_scales_with_global_batch(scaling, global_batch, expected):
    config = _paper_config()
    config.optimizer.lr_scaling = scaling
    config.input.global_batch_size = global_batch
    np.testing.assert_allclose(_schedule_values(config, 10, [0]), [expected], rtol=1e-6)


def test_schedule_warmup_then_decay():
    config = _paper_config()
    config.optimizer.warmup_epochs = 1.0
    values = _schedule_values(config, 10, [0, 5, 10, 29, 30])
    # Linear ramp from 0 over 10 steps; the 20-step decay clock starts when the ramp ends.
    expected = 0.045 * np.array([0.0, 0.5, 1.0, 1.0, 0.94])
    np.testing.assert_allclose(values, expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("section", "field", "value", "match"),
    [
        ("optimizer", "lr_scaling", "sqrt", "lr_scaling"),
        ("optimizer", "lr_decay_epochs", 0.01, "lr_decay_epochs"),
        ("optimizer", "warmup_epochs", -1.0, "warmup_epochs"),
    ],
)
def test_schedule_rejects_bad_config(section, field, value, match):
    config = _paper_config()
    config[section][field] = value
    with pytest.raises(ValueError, match=match):
        optim.learning_rate_schedule(config, 10)


def test_schedule_rejects_empty_epoch():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        optim.learning_rate_schedule(_paper_config(), 0)


def test_weight_decay_only_on_kernels():
    class Tiny(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(3, 4, rngs=rngs)
            self.norm = nnx.BatchNorm(4, rngs=rngs)

    config = _paper_config()
    config.optimizer.weight_decay = 0.01
    params = nnx.state(Tiny(nnx.Rngs(0)), nnx.Param)
    params = jax.tree.map(lambda p: p + 0.5, params)  # non-zero biases so a decay would show
    tx = optim.create_optimizer(config, optim.learning_rate_schedule(config, 10))
    # Zero gradients: the RMSProp part moves nothing, only the decay acts.
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)

    np.testing.assert_allclose(
        updates["dense"]["kernel"][...], -0.045 * 0.01 * params["dense"]["kernel"][...], rtol=1e-6
    )
    for path in (("dense", "bias"), ("norm", "scale"), ("norm", "bias")):
        np.testing.assert_array_equal(updates[path[0]][path[1]][...], 0.0)


def test_l2_regularization_is_slims_loss_gradient_through_rmsprop():
    """The release's L2Loss x 4e-5 on kernels: RMSProp must see grad + l2 * w for kernels only."""
    config = load_config(REPO / "configs" / "default.py")
    l2 = config.optimizer.l2_regularization
    assert l2 == 4e-5
    rng = np.random.default_rng(0)
    params = {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32),
              "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}  # fmt: skip
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    with_l2 = optim.create_optimizer(config, optim.learning_rate_schedule(config, 10))
    updates, _ = with_l2.update(grads, with_l2.init(params), params)
    config.optimizer.l2_regularization = 0.0
    plain = optim.create_optimizer(config, optim.learning_rate_schedule(config, 10))
    by_hand = {"kernel": grads["kernel"] + l2 * params["kernel"], "bias": grads["bias"]}
    expected, _ = plain.update(by_hand, plain.init(params), params)
    for name in params:
        np.testing.assert_allclose(updates[name], expected[name], rtol=1e-6)
    assert not np.allclose(updates["kernel"], plain.update(grads, plain.init(params))[0]["kernel"])


def test_weight_decay_rejects_negative():
    config = _paper_config()
    config.optimizer.weight_decay = -1e-4
    with pytest.raises(ValueError, match="weight_decay"):
        optim.create_optimizer(config, optim.learning_rate_schedule(config, 10))


def test_ema_update_by_hand():
    params = [{"w": np.array([1.0, -2.0], np.float32)}, {"w": np.array([3.0, 0.0], np.float32)}]
    ema = {"w": jnp.array([0.0, 0.0])}
    # Warm-up decays min(0.9, (1+s)/(10+s)) at steps 0 and 1: 1/10, then 2/11.
    ema = optim.ema_update(ema, params[0], optim.ema_decay_at(0, 0.9))
    np.testing.assert_allclose(ema["w"], [0.9, -1.8], rtol=1e-6)
    ema = optim.ema_update(ema, params[1], optim.ema_decay_at(1, 0.9))
    np.testing.assert_allclose(
        ema["w"], [2 / 11 * 0.9 + 9 / 11 * 3.0, 2 / 11 * -1.8 + 9 / 11 * 0.0], rtol=1e-6
    )
    # Without warm-up (or once (1+s)/(10+s) exceeds it) the configured decay holds.
    assert float(optim.ema_decay_at(0, 0.9, warmup=False)) == pytest.approx(0.9)
    assert float(optim.ema_decay_at(10**6, 0.9999)) == pytest.approx(0.9999)


def test_ema_of_constant_parameters_is_exact():
    param = {"w": jnp.asarray(np.random.default_rng(1).normal(size=(5,)), jnp.float32)}
    ema = optim.ema_update(param, param, optim.ema_decay_at(3, 0.9999))
    np.testing.assert_array_equal(ema["w"], param["w"])


def test_ema_matches_tf_exponential_moving_average():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(6, 3)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        var = tf.compat.v1.Variable(values[0])
        step = tf.compat.v1.placeholder(tf.int64, ())
        averager = tf.compat.v1.train.ExponentialMovingAverage(0.99, num_updates=step)
        new_value = tf.compat.v1.placeholder(tf.float32, (3,))
        assign = var.assign(new_value)
        apply = averager.apply([var])
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())  # shadow starts at values[0]
            for s, v in enumerate(values[1:]):
                sess.run(assign, {new_value: v})
                sess.run(apply, {step: s})
            tf_ema = sess.run(averager.average(var))

    ema = jnp.asarray(values[0])
    for s, v in enumerate(values[1:]):
        ema = optim.ema_update(ema, v, optim.ema_decay_at(s, 0.99))
    np.testing.assert_allclose(ema, tf_ema, rtol=1e-6)
