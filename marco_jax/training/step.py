"""One optimizer step, a pure function of an explicit `TrainState` pytree, and its jitted form.

Everything that runs training steps (the training loop, `bench/train_step.py`, the fine-tuning
and data-parallel tests) builds them with `create`, so the schedule, the optimiser and the jit
wiring (state replicated and donated, batch split over all devices of all hosts) exist once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx, struct
from jax.sharding import Mesh

from marco_jax import parallel
from marco_jax.data import augment
from marco_jax.model import inception, predict
from marco_jax.training import optim

StepFn = Callable[[Any, dict[str, jax.Array]], tuple[Any, dict[str, jax.Array]]]

# config.model.remat: what the forward pass keeps for the backward pass. "convs" keeps only the
# convolution outputs (jax's dots_saveable policy counts convolutions as dots) and recomputes the
# BatchNorm, ReLU, pool and concat work in the backward pass.
REMAT_POLICIES = {"none": None, "convs": jax.checkpoint_policies.dots_saveable}


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    # The paper evaluates "a running average of the training model" (section 3). Like TF-slim,
    # the BatchNorm statistics are averaged along with the weights.
    ema_params: Any
    ema_batch_stats: Any
    rng: jax.Array


def create_train_state(
    model: inception.InceptionV3, tx: optax.GradientTransformation, seed: int
) -> tuple[nnx.GraphDef, TrainState]:
    graphdef, params, batch_stats = inception.split_model(model)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        # Copies: the jitted step donates the state, and a buffer cannot be donated twice.
        ema_params=jax.tree.map(jnp.copy, params),
        ema_batch_stats=jax.tree.map(jnp.copy, batch_stats),
        rng=jax.random.PRNGKey(seed),
    )
    return graphdef, state


def _cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    learning_rate: optax.Schedule,
    config: ml_collections.ConfigDict,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a global batch of uint8 images, augmented here on the device."""
    augment_key, dropout_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
    images = predict.to_model_input(
        augment.distort_color(augment_key, batch["image"], config.input)
    )
    labels = batch["label"]
    opt = config.optimizer

    def forward(params):
        model = nnx.merge(graphdef, params, state.batch_stats)
        outputs = model(images, train=True, dropout_key=dropout_key)
        return outputs, nnx.state(model, nnx.BatchStat).to_pure_dict()

    if (policy := REMAT_POLICIES[config.model.get("remat", "none")]) is not None:
        forward = jax.checkpoint(forward, policy=policy)

    def loss_fn(params):
        outputs, batch_stats = forward(params)
        logits, aux_logits = outputs if isinstance(outputs, tuple) else (outputs, None)
        loss = _cross_entropy(logits, labels, opt.label_smoothing)
        if aux_logits is not None:
            loss += config.model.aux_loss_weight * _cross_entropy(
                aux_logits, labels, opt.label_smoothing
            )
        return loss, (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = optim.ema_decay_at(state.step, opt.ema_decay, opt.ema_warmup)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        ema_params=optim.ema_update(state.ema_params, params, decay),
        ema_batch_stats=optim.ema_update(state.ema_batch_stats, batch_stats, decay),
    )
    metrics = {
        # The loss predates this update; a diverging update shows only in the new state.
        "state_finite": _all_finite((params, opt_state, batch_stats)),
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
        "grad_norm": optax.global_norm(grads),
        "learning_rate": learning_rate(state.step),
    }
    return new_state, metrics


def _all_finite(tree: Any) -> jax.Array:
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def jit_train_step(
    config: ml_collections.ConfigDict,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh | None = None,
) -> StepFn:
    """`train_step` jitted with the state donated (its buffers are reused for the new state).

    With a mesh, the state is replicated and the batch split over the mesh's batch axis, the
    layout of `marco_jax.parallel` on one host or many; without one, everything sits on the
    default device.
    """
    step = functools.partial(
        train_step, graphdef=graphdef, tx=tx, learning_rate=schedule, config=config
    )
    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    replicated = parallel.replicated(mesh)
    return jax.jit(
        step,
        in_shardings=(replicated, parallel.batch_sharded(mesh)),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def create(
    config: ml_collections.ConfigDict,
    model: inception.InceptionV3,
    steps_per_epoch: int,
    mesh: Mesh | None = None,
) -> tuple[nnx.GraphDef, TrainState, StepFn]:
    """The fresh TrainState of `model` and its jitted step, over one learning-rate schedule
    (the optimiser's, also logged by the step)."""
    schedule = optim.learning_rate_schedule(config, steps_per_epoch)
    tx = optim.create_optimizer(config, schedule)
    graphdef, state = create_train_state(model, tx, config.seed)
    return graphdef, state, jit_train_step(config, graphdef, tx, schedule, mesh)
