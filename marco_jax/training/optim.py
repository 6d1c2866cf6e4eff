"""The paper's optimiser (RMSProp with TF1 semantics), its learning-rate schedule and weight EMA.

Bruno et al. 2018, section 3 "Training": RMSProp, batch 64, learning rate 0.045, momentum 0.9,
decay 0.9, epsilon 0.1, the learning rate decayed by 0.94 every two epochs; the model used at test
time is a running average of the training model. The numbers live in `configs/default.py`.

The paper trained with TF1's `tf.train.RMSPropOptimizer`:
    ms = decay * ms + (1 - decay) * g^2          (ms starts at 1.0, not 0.0)
    mom = momentum * mom + lr_t * g / sqrt(ms + eps)   (eps inside the square root)
    var -= mom
The learning rate multiplies the step *before* it enters the momentum buffer, so a staircase drop
only shrinks new contributions while the momentum already accumulated keeps its size.
`optax.rmsprop` chains scale_by_rms -> scale_by_learning_rate -> trace in exactly this order
(optax 0.2.8), so with initial_scale=1.0 and eps_in_sqrt=True it is TF1's optimiser;
tests/test_optim.py checks it step by step against TensorFlow, across staircase boundaries, so a
change of order in a future optax would fail there.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

_LR_SCALINGS = ("linear", "none")


def _scaled_base_learning_rate(config: ml_collections.ConfigDict) -> float:
    """The base learning rate for this run's global batch (linear scaling rule, Goyal et al.)."""
    opt = config.optimizer
    if opt.lr_scaling not in _LR_SCALINGS:
        raise ValueError(
            f"config.optimizer.lr_scaling={opt.lr_scaling!r} is not one of {_LR_SCALINGS}."
        )
    if opt.lr_scaling == "none":
        return float(opt.learning_rate)
    return float(opt.learning_rate) * config.input.global_batch_size / opt.lr_reference_batch_size


def _epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    return round(epochs * steps_per_epoch)


def learning_rate_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
    """Maps the optimizer step (0 = first update) to the learning rate used by that update.

    Exponential decay by `lr_decay_factor` every `lr_decay_epochs` (a staircase when
    `config.optimizer.staircase`), as TF1's `tf.train.exponential_decay` in TF-slim's
    train_image_classifier, except that epochs are converted to steps with round() rather than
    int(), so a fractional epoch length does not shift every boundary down. With
    `warmup_epochs > 0` the rate first ramps linearly from 0 to the base rate and the decay clock
    starts when the ramp ends. The training step logs the rate from this same schedule.
    """
    opt = config.optimizer
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch} must be >= 1.")
    decay_steps = _epochs_to_steps(opt.lr_decay_epochs, steps_per_epoch)
    if decay_steps < 1:
        raise ValueError(
            f"config.optimizer.lr_decay_epochs={opt.lr_decay_epochs} is under one step at "
            f"{steps_per_epoch} steps per epoch; raise it (set lr_decay_factor=1.0 for no decay)."
        )
    if opt.warmup_epochs < 0:
        raise ValueError(f"config.optimizer.warmup_epochs={opt.warmup_epochs} must be >= 0.")
    base_lr = _scaled_base_learning_rate(config)
    warmup_steps = _epochs_to_steps(opt.warmup_epochs, steps_per_epoch)
    if warmup_steps == 0:
        return optax.exponential_decay(
            init_value=base_lr,
            transition_steps=decay_steps,
            decay_rate=opt.lr_decay_factor,
            staircase=opt.staircase,
        )
    return optax.warmup_exponential_decay_schedule(
        init_value=0.0,
        peak_value=base_lr,
        warmup_steps=warmup_steps,
        transition_steps=decay_steps,
        decay_rate=opt.lr_decay_factor,
        staircase=opt.staircase,
    )


def _is_kernel(params: Any) -> Any:
    """Weight decay applies to conv/dense kernels only, not to biases or batch-norm scale/offset.

    TF-slim's inception arg scope regularises only conv and fully-connected weights (an L2 loss of
    4e-5); parameters with fewer than two dimensions are biases or normalisation parameters.
    """
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def create_optimizer(
    config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """RMSProp exactly as TF1's `tf.train.RMSPropOptimizer` (see the module docstring), with
    the learning rate of `schedule` (`learning_rate_schedule`).

    `config.optimizer.weight_decay > 0` adds decoupled weight decay on kernels
    (var -= lr_t * weight_decay * var each step, outside the RMS scaling and the momentum, as in
    Loshchilov & Hutter's AdamW). It is not numerically interchangeable with slim's coupled L2 loss.

    `config.optimizer.l2_regularization > 0` is that coupled L2 loss: the release's graph has an
    `L2Loss` times 4e-5 on every kernel (slim's `weights_regularizer`), whose gradient l2 * w joins
    the loss gradient before RMSProp scales it; adding l2 * w to the gradient is the same update
    without materialising the loss term. No gradient clipping: the paper uses none.
    """
    opt = config.optimizer
    if opt.weight_decay < 0:
        raise ValueError(f"config.optimizer.weight_decay={opt.weight_decay} must be >= 0.")
    l2 = float(opt.get("l2_regularization", 0.0))
    if l2 < 0:
        raise ValueError(f"config.optimizer.l2_regularization={l2} must be >= 0.")
    rmsprop = optax.rmsprop(
        learning_rate=schedule,
        decay=opt.rmsprop_decay,
        eps=opt.epsilon,
        initial_scale=1.0,
        eps_in_sqrt=True,
        momentum=opt.momentum,
    )
    stages = [optax.add_decayed_weights(l2, mask=_is_kernel)] if l2 > 0 else []
    stages.append(rmsprop)
    if opt.weight_decay > 0:
        weight_decay = float(opt.weight_decay)
        # Added to the update after the momentum, so the parameter moves by -lr_t * wd * var.
        stages.append(
            optax.add_decayed_weights(
                weight_decay=lambda step: -weight_decay * schedule(step), mask=_is_kernel
            )
        )
    return stages[0] if len(stages) == 1 else optax.chain(*stages)


def ema_decay_at(step: jax.typing.ArrayLike, decay: float, warmup: bool = True) -> jax.Array:
    """The EMA decay for the update after `step` optimizer steps.

    With `warmup`, TF's `ExponentialMovingAverage(decay, num_updates=step)` rule
    min(decay, (1 + step) / (10 + step)): TF-slim's train_image_classifier passes the global step
    as num_updates, so the average follows the weights closely early on instead of being
    dominated by the random initialisation for ~1/(1 - decay) steps.
    """
    decay = jnp.asarray(decay, jnp.float32)
    if not warmup:
        return decay
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema_params: Any, params: Any, decay: jax.typing.ArrayLike) -> Any:
    """ema = decay * ema + (1 - decay) * param, leaf by leaf, in each EMA leaf's dtype.

    Written as TF's `assign_moving_average` computes it, ema - (1 - decay) * (ema - param), which
    leaves an average equal to its parameter bit-identical. Works on any pytree, so the training
    loop may pass batch-norm statistics too (TF-slim averaged all model variables).
    """

    def update(ema: jax.Array, param: jax.Array) -> jax.Array:
        one_minus_decay = (1 - jnp.asarray(decay)).astype(ema.dtype)
        return ema - one_minus_decay * (ema - param.astype(ema.dtype))

    return jax.tree.map(update, ema_params, params)
