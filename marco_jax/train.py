"""Training and periodic evaluation of the MARCO classifier (paper section 3, "Training").

`train_and_evaluate(config, workdir)` is the whole job; `python -m marco_jax.main` is a thin
wrapper around it. Steps are pure functions of an explicit `TrainState` pytree, jitted once with
the state replicated and the batch split over all devices of all hosts (`marco_jax.parallel`).
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from flax import nnx, struct

from marco_jax import (
    augment,
    checkpoints,
    evaluation,
    input_pipeline,
    models,
    optim,
    parallel,
    warm_start,
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint predates it and is intact."""


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


def split_model(model: models.InceptionV3) -> tuple[nnx.GraphDef, Any, Any]:
    """(graphdef, params, batch_stats) as plain dicts; the model holds no other state."""
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return graphdef, params.to_pure_dict(), batch_stats.to_pure_dict()


def create_train_state(
    model: models.InceptionV3, tx: optax.GradientTransformation, seed: int
) -> tuple[nnx.GraphDef, TrainState]:
    graphdef, params, batch_stats = split_model(model)
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
    images = augment.to_model_input(
        augment.distort_color(augment_key, batch["image"], config.input)
    )
    labels = batch["label"]
    opt = config.optimizer

    def loss_fn(params):
        model = nnx.merge(graphdef, params, state.batch_stats)
        outputs = model(images, train=True, dropout_key=dropout_key)
        logits, aux_logits = outputs if isinstance(outputs, tuple) else (outputs, None)
        loss = _cross_entropy(logits, labels, opt.label_smoothing)
        if aux_logits is not None:
            loss += config.model.aux_loss_weight * _cross_entropy(
                aux_logits, labels, opt.label_smoothing
            )
        return loss, (logits, nnx.state(model, nnx.BatchStat).to_pure_dict())

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
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
        "grad_norm": optax.global_norm(grads),
        "learning_rate": learning_rate(state.step),
    }
    return new_state, metrics


def eval_variables(state: TrainState, use_ema: bool) -> tuple[Any, Any]:
    if use_ema:
        return state.ema_params, state.ema_batch_stats
    return state.params, state.batch_stats


def _num_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    if config.num_train_steps > 0:
        return config.num_train_steps
    if config.num_epochs <= 0:
        raise ValueError("Set config.num_train_steps > 0 or config.num_epochs > 0.")
    return int(config.num_epochs * steps_per_epoch)


def _check_finite(step: int, metrics: dict[str, jax.Array], manager) -> None:
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
        manager.wait_until_finished()
        last = manager.latest_step()
        raise NonFiniteLossError(
            f"Training loss became {loss} at step {step}. The last checkpoint (step {last}) in "
            f"{manager.directory} predates it and is intact. Lower "
            "config.optimizer.learning_rate or check the input data, then resume."
        )


def _mean_metrics(history: list[dict[str, jax.Array]]) -> dict[str, float]:
    stacked = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *history))
    return {f"train_{name}": float(np.mean(values)) for name, values in stacked.items()}


def _update_progress(progress: dict[str, Any], step: int, accuracy: float) -> dict[str, Any]:
    if accuracy > progress["best_accuracy"]:
        return {"best_accuracy": accuracy, "best_step": step, "evals_since_best": 0}
    return {**progress, "evals_since_best": progress["evals_since_best"] + 1}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains until the step budget or early stopping, resuming from `workdir` if possible.

    Returns the last evaluation's metrics.
    """
    parallel.check_divisible(config.input.global_batch_size, "global_batch_size")
    parallel.check_divisible(config.input.eval_batch_size, "eval_batch_size")
    model = models.create_model(config, rngs=config.seed)
    if config.get("init_from"):  # fine-tuning; a resumed run's checkpoint overrides it below
        fresh = warm_start.load_into(model, config)
        logging.info("Initialised from %s; fresh: %s.", config.init_from, fresh or "nothing")
    train_source = input_pipeline.open_tfds_source(config, config.dataset.train_split)
    eval_source = input_pipeline.open_tfds_source(config, config.dataset.eval_split)
    steps_per_epoch = max(1, len(train_source) // config.input.global_batch_size)
    num_steps = _num_train_steps(config, steps_per_epoch)
    is_chief = jax.process_index() == 0
    if is_chief:
        checkpoints.write_config(workdir, config)

    tx = optim.create_optimizer(config, steps_per_epoch)
    learning_rate = optim.learning_rate_schedule(config, steps_per_epoch)
    graphdef, state = create_train_state(model, tx, config.seed)
    mesh = parallel.create_mesh()
    replicated, batch_sharding = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    state = jax.device_put(state, replicated)

    train_iter = iter(
        input_pipeline.create_train_dataset(
            config,
            train_source,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            seed=config.seed,
        )
    )
    manager = checkpoints.create_manager(workdir, config.keep_checkpoints)
    progress = {"best_accuracy": -1.0, "best_step": -1, "evals_since_best": 0}
    restored = checkpoints.restore_latest(manager, state, train_iter)
    if restored is not None:
        state, progress = restored
        logging.info("Resumed from step %d in %s.", int(state.step), workdir)

    writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
    if int(state.step) == 0:
        writer.write_hparams(config.to_dict() | {"model": config.model.name})
        parameter_overview.log_parameter_overview(state.params)
    hooks = [periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)]
    if is_chief and config.profile_steps > 0:
        hooks.append(
            periodic_actions.Profile(num_profile_steps=config.profile_steps, logdir=workdir)
        )

    p_train_step = jax.jit(
        functools.partial(
            train_step, graphdef=graphdef, tx=tx, learning_rate=learning_rate, config=config
        ),
        in_shardings=(replicated, batch_sharding),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
    evaluator = evaluation.Evaluator(config, graphdef, eval_source, mesh)
    preemption = parallel.PreemptionWatcher()

    def save(step: int, metrics: dict[str, float] | None = None) -> None:
        checkpoints.save(manager, step, state, train_iter, progress, metrics)

    step = int(state.step)
    eval_metrics: dict[str, Any] = {}
    history: list[dict[str, jax.Array]] = []
    last_log = (step, time.perf_counter())
    pending: tuple[int, dict[str, jax.Array]] | None = None
    try:
        while step < num_steps:
            batch = parallel.to_global(next(train_iter), batch_sharding)
            state, metrics = p_train_step(state, batch)
            step += 1
            # Checked one step late so that the host never waits for the device in between.
            if pending is not None:
                _check_finite(*pending, manager)
            pending = (step, metrics)
            history.append(metrics)
            for hook in hooks:
                hook(step)
            is_log = step % config.log_every_steps == 0 or step == num_steps
            is_eval = step % config.eval_every_steps == 0 or step == num_steps
            is_save = step % config.checkpoint_every_steps == 0
            if is_log or is_eval or is_save:  # this step's loss must be finite before any use
                _check_finite(*pending, manager)
            if is_log:
                elapsed = time.perf_counter() - last_log[1]
                summary = _mean_metrics(history)
                summary["images_per_second"] = (
                    (step - last_log[0]) * config.input.global_batch_size / elapsed
                )
                summary["step_time_ms"] = 1000 * elapsed / (step - last_log[0])
                writer.write_scalars(step, summary)
                history, last_log = [], (step, time.perf_counter())
            if is_eval:
                eval_metrics = evaluator.run(state, step, workdir, writer)
                progress = _update_progress(progress, step, eval_metrics["accuracy"])
            stop = preemption.should_stop(step) or (
                config.early_stopping_patience > 0
                and progress["evals_since_best"] >= config.early_stopping_patience
            )
            if stop:  # a preemption may come at a step not checked above
                _check_finite(*pending, manager)
            if is_eval or is_save or stop:
                save(step, {"accuracy": eval_metrics["accuracy"]} if is_eval else None)
            if stop:
                logging.info("Stopping at step %d (preemption or early stopping).", step)
                break
        if not eval_metrics:  # the run had already finished or stopped: report where it stands
            eval_metrics = evaluator.run(state, step, workdir, writer)
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.flush()
    return eval_metrics
