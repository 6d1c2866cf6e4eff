"""Training and periodic evaluation of the MARCO classifier (paper section 3, "Training").

`train_and_evaluate(config, workdir)` is the whole job; `python -m marco_jax.main` is a thin
wrapper around it. The step (`marco_jax.training.step`) is a pure function of an explicit
`TrainState` pytree, jitted once with the state replicated and the batch split over all devices
of all hosts (`marco_jax.parallel`). Periodic evaluations are written to eval/step_<N>.json and
eval/latest.json.

The console (`marco_jax.logs`) shows a progress bar over the steps, a line of training metrics
every config.log_every_steps and a line per evaluation; TensorBoard (the workdir's event files)
gets them grouped as train/... and eval/..., with the evaluation's loss (the main head's
cross-entropy; train/loss adds the auxiliary head's) and its confusion matrix as an image.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from absl import logging
from clu import parameter_overview
from etils import epath
from PIL import Image

from marco_jax import logs, parallel
from marco_jax.data import input_pipeline
from marco_jax.evaluation import evaluator, report_plots
from marco_jax.labels import CLASS_NAMES
from marco_jax.model import inception, predict
from marco_jax.runs import lock, store
from marco_jax.training import checkpoints, config_checks, monitoring, warm_start
from marco_jax.training import step as train_step

# How a run ended (`train_and_evaluate(...)["status"]`); main maps them to exit codes.
FINISHED = "finished"  # the step budget is reached
EARLY_STOPPED = "early_stopped"  # config.early_stopping_patience evaluations without a new best
PREEMPTED = "preempted"  # SIGTERM or the multi-host preemption service: saved, resume by relaunch
CONFIG_CHANGES_FILE = "config_changes.jsonl"
EVAL_DIR = "eval"


class NonFiniteLossError(RuntimeError):
    """The loss or the updated state became NaN or infinite; the message names the last
    checkpoint, which a save verified finite (saves refuse non-finite states), or says that
    there is none."""


def _num_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    if config.num_train_steps > 0:
        return config.num_train_steps
    if config.num_epochs <= 0:
        raise config_checks.ConfigError(
            ["Set config.num_train_steps > 0 or config.num_epochs > 0."]
        )
    return int(config.num_epochs * steps_per_epoch)


def _check_finite(step: int, metrics: dict[str, jax.Array], saver: checkpoints.Saver) -> None:
    """Raises NonFiniteLossError when the loss, or the state after the update, is not finite."""
    loss, state_finite = float(metrics["loss"]), bool(metrics["state_finite"])
    if np.isfinite(loss) and state_finite:
        return
    saver.finish()
    last = saver.manager.latest_step()
    what = (
        f"Training loss became {loss}"
        if not np.isfinite(loss)
        else f"The update made the parameters or optimizer state non-finite (loss {loss:.4g})"
    )
    if last is None:
        where = (
            f"No checkpoint has been saved in {saver.manager.directory} yet, so a relaunch "
            "starts from step 0."
        )
    else:
        where = (
            f"The last checkpoint (step {last}) in {saver.manager.directory} was verified "
            "finite when saved; a relaunch resumes from it."
        )
    raise NonFiniteLossError(
        f"{what} at step {step}. {where} Lower config.optimizer.learning_rate or check the "
        "input data."
    )


def _mean_metrics(history: list[dict[str, jax.Array]]) -> dict[str, float]:
    stacked = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *history))
    return {
        f"train/{name}": float(np.mean(values))
        for name, values in stacked.items()
        if name != "state_finite"
    }


def _train_line(step: int, num_steps: int, summary: dict[str, float]) -> str:
    return (
        f"step {step}/{num_steps}: loss {summary['train/loss']:.4f}, accuracy "
        f"{summary['train/accuracy']:.3f}, learning rate {summary['train/learning_rate']:.4g}, "
        f"{summary['train/images_per_second']:.1f} images/s"
    )


def _confusion_image(summary: dict[str, Any]) -> np.ndarray:
    """The evaluation's confusion matrix as the report draws it, as an RGB array [H, W, 3]."""
    png = report_plots.plot_confusion(summary | {"class_names": list(CLASS_NAMES)})
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def _evaluate(
    split_evaluator: evaluator.Evaluator,
    state: train_step.TrainState,
    step: int,
    workdir: str,
    writer: monitoring.MetricWriter,
    bar: tqdm.tqdm,
) -> dict[str, Any]:
    """Evaluates the EMA (or raw, `config.eval_with_ema`) weights, its progress on the training
    bar; writes eval/step_<N>.json, eval/latest.json (process 0), the scalars and the confusion
    matrix."""
    use_ema = split_evaluator.config.eval_with_ema
    total = len(split_evaluator.source)
    predictions = split_evaluator.predict(
        *store.chosen_weights(state, use_ema),
        progress=lambda done: bar.set_postfix_str(f"evaluating {done}/{total}"),
    )
    summary = {"step": step, "weights": "ema" if use_ema else "raw"}
    summary |= evaluator.summary(predictions)
    per_class = ", ".join(
        f"{name} {value:.3f}"
        for name, value in summary["per_class_accuracy"].items()
        if value is not None
    )
    logging.info(
        "eval at step %d: accuracy %.4f, loss %.4f (%s)",
        step,
        summary["accuracy"],
        summary["loss"],
        per_class,
    )
    if jax.process_index() == 0:
        out_dir = epath.Path(workdir) / EVAL_DIR
        out_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(summary, indent=2)
        (out_dir / f"step_{step}.json").write_text(text)
        (out_dir / "latest.json").write_text(text)
    scalars = {"eval/accuracy": summary["accuracy"], "eval/loss": summary["loss"]}
    scalars |= {
        f"eval/accuracy_{name}": value
        for name, value in summary["per_class_accuracy"].items()
        if value is not None
    }
    writer.write_scalars(step, scalars)
    if jax.process_index() == 0:
        writer.write_images(step, {"eval/confusion_matrix": _confusion_image(summary)[None]})
    return summary


def _new_progress() -> dict[str, Any]:
    return {"best_accuracy": -1.0, "best_step": -1, "evals_since_best": 0}


def _update_progress(progress: dict[str, Any], step: int, accuracy: float) -> dict[str, Any]:
    if accuracy > progress["best_accuracy"]:
        return {"best_accuracy": accuracy, "best_step": step, "evals_since_best": 0}
    return {**progress, "evals_since_best": progress["evals_since_best"] + 1}


def _early_stopped(config: ml_collections.ConfigDict, progress: dict[str, Any]) -> bool:
    patience = config.early_stopping_patience
    return patience > 0 and progress["evals_since_best"] >= patience


def _stored_changes(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[str, tuple[Any, Any]] | None:
    """Allowed changes against the workdir's config.json (None if it has none yet).

    Raises ConfigError, one line naming the fields, for changes that alter the network or the
    training batches: the checkpoints belong to the stored config.
    """
    path = epath.Path(workdir) / store.CONFIG_FILE
    trained = epath.Path(workdir) / store.CHECKPOINT_DIR
    if not path.exists() or not (
        trained.exists() and any(p.name.isdigit() for p in trained.iterdir())
    ):
        return None  # nothing trained yet that a change could contradict
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise config_checks.ConfigError(
            [f"{path} is unreadable ({e}); repair or remove it to start this workdir afresh."]
        ) from None
    refused, allowed = config_checks.compare_with_stored(stored, config)
    if refused:
        changes = ", ".join(f"{field} {old!r} -> {new!r}" for field, (old, new) in refused.items())
        raise config_checks.ConfigError(
            [
                f"{workdir} was trained with another network or data order; refused changes: "
                f"{changes}. Use a new --workdir, or the stored values."
            ]
        )
    return allowed


def _record_config(
    config: ml_collections.ConfigDict,
    workdir: str,
    changes: dict[str, tuple[Any, Any]] | None,
    step: int,
) -> None:
    """Writes config.json once the run is accepted, and appends the allowed changes' history."""
    if changes is not None and not changes:
        return
    if changes:
        logging.warning(
            "Resuming at step %d with changed settings: %s.",
            step,
            ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()),
        )
        entry = {"step": step, "time": time.time(), "changes": changes}
        with (epath.Path(workdir) / CONFIG_CHANGES_FILE).open("a") as f:
            f.write(json.dumps(entry, default=str) + "\n")
    store.write_config(workdir, config)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains until the step budget or early stopping, resuming from `workdir` if possible.

    Returns the last evaluation's metrics and "status": FINISHED, EARLY_STOPPED or PREEMPTED.
    A finished or early-stopped run stays so when relaunched (no step is trained). Raises
    config_checks.ConfigError (invalid values, a refused change against the workdir's
    config.json), lock.WorkdirLockedError, checkpoints.CheckpointError or
    NonFiniteLossError, each with a one-line message.
    """
    config_checks.validate(config)
    parallel.check_divisible(config.input.global_batch_size, "global_batch_size")
    parallel.check_divisible(config.input.eval_batch_size, "eval_batch_size")
    is_chief = jax.process_index() == 0
    # Only process 0 writes into the workdir; an object store (gs://) has no exclusive create.
    with lock.WorkdirLock(workdir, enabled=is_chief and "://" not in workdir):
        return _train_and_evaluate(config, workdir, is_chief)


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, is_chief: bool
) -> dict[str, Any]:
    changes = _stored_changes(config, workdir)
    # The data first: a dataset that cannot serve this config fails before the model is built.
    train_source = input_pipeline.open_tfds_source(config, config.dataset.train_split)
    eval_source = input_pipeline.open_tfds_source(config, config.dataset.eval_split)
    model = inception.create_model(config, rngs=config.seed)
    if config.get("init_from"):  # fine-tuning; a resumed run's checkpoint overrides it below
        fresh = warm_start.load_into(model, config)
        logging.info("Initialised from %s; fresh: %s.", config.init_from, fresh or "nothing")
    config_checks.check_num_labels(config, _num_labels(train_source))
    steps_per_epoch = max(1, len(train_source) // config.input.global_batch_size)
    num_steps = _num_train_steps(config, steps_per_epoch)

    mesh = parallel.create_mesh()
    graphdef, state, p_train_step = train_step.create(config, model, steps_per_epoch, mesh)
    batch_sharding = parallel.batch_sharded(mesh)
    state = jax.device_put(state, parallel.replicated(mesh))

    manager = store.create_manager(workdir, config.keep_checkpoints)
    saver = checkpoints.Saver(manager, config)
    progress = _new_progress()
    restored = checkpoints.restore_latest(manager, state)
    if restored is not None:
        state, progress = restored
        progress = _new_progress() | progress
        logging.info("Resumed from step %d in %s.", int(state.step), workdir)
    step = int(state.step)
    if is_chief:  # accepted: the config is compatible and the checkpoint readable
        _record_config(config, workdir, changes, step)

    writer = monitoring.create_writer(workdir, just_logging=not is_chief)
    if step == 0:
        writer.write_hparams(config.to_dict() | {"model": config.model.name})
        parameter_overview.log_parameter_overview(state.params)  # the log file's table
        flops = predict.flops_per_image(
            graphdef, (state.params, state.batch_stats), config.model.image_size
        )
        devices = jax.device_count()
        logging.info(
            "%s: %s parameters, %.3g %sFLOPs per %d px image; training on %d %s device%s.",
            config.model.name,
            f"{parameter_overview.count_parameters(state.params):,}",
            *((flops / 1e9, "G") if flops >= 1e9 else (flops / 1e6, "M")),
            config.model.image_size,
            devices,
            jax.devices()[0].platform,
            "s" if devices > 1 else "",
        )
    hooks = monitoring.profiler_hooks(config, workdir, is_chief)

    eval_split = evaluator.Evaluator(config, graphdef, eval_source, mesh)
    preemption = parallel.PreemptionWatcher()
    status = EARLY_STOPPED if _early_stopped(config, progress) else FINISHED
    eval_metrics: dict[str, Any] = {}
    history: list[dict[str, jax.Array]] = []
    last_log = (step, time.perf_counter())
    pending: tuple[int, dict[str, jax.Array]] | None = None
    train_iter = None
    bar = logs.progress(num_steps, "train", "step", initial=step, enabled=is_chief)
    postfix = ""  # the last logged loss
    input_wait = monitoring.InputWait()
    try:
        if step < num_steps and status != EARLY_STOPPED:
            # The data position is the step: one batch per step (see checkpoints).
            train_iter = iter(
                input_pipeline.create_train_dataset(
                    config,
                    train_source,
                    process_index=jax.process_index(),
                    process_count=jax.process_count(),
                    seed=config.seed,
                    start_batch=step,
                )
            )
        while train_iter is not None and step < num_steps:
            batch = parallel.to_global(input_wait.next(train_iter), batch_sharding)
            state, metrics = p_train_step(state, batch)
            step += 1
            bar.update()
            # Checked one step late so that the host never waits for the device in between.
            if pending is not None:
                _check_finite(*pending, saver)
            pending = (step, metrics)
            history.append(metrics)
            for hook in hooks:
                hook(step)
            is_log = step % config.log_every_steps == 0 or step == num_steps
            is_eval = step % config.eval_every_steps == 0 or step == num_steps
            is_save = step % config.checkpoint_every_steps == 0
            if is_log or is_eval or is_save:  # this step's loss must be finite before any use
                _check_finite(*pending, saver)
            if is_log:
                elapsed = time.perf_counter() - last_log[1]
                summary = _mean_metrics(history)
                summary["train/images_per_second"] = (
                    (step - last_log[0]) * config.input.global_batch_size / elapsed
                )
                summary["train/step_time_ms"] = 1000 * elapsed / (step - last_log[0])
                summary |= {
                    f"train/{name}": value
                    for name, value in input_wait.take(step - last_log[0]).items()
                }
                writer.write_scalars(step, summary)
                logging.info(_train_line(step, num_steps, summary))
                postfix = f"loss {summary['train/loss']:.4f}"
                bar.set_postfix_str(postfix, refresh=False)
                history, last_log = [], (step, time.perf_counter())
            if is_eval:
                eval_metrics = _evaluate(eval_split, state, step, workdir, writer, bar)
                bar.set_postfix_str(postfix)
                progress = _update_progress(progress, step, eval_metrics["accuracy"])
            preempted = preemption.should_stop(step)
            early = _early_stopped(config, progress)
            if preempted or early:  # a preemption may come at a step not checked above
                _check_finite(*pending, saver)
            if is_eval or is_save or preempted or early:
                metrics_to_save = {"accuracy": eval_metrics["accuracy"]} if is_eval else None
                saver.save(step, state, progress, metrics_to_save)
            if preempted or early:
                status = PREEMPTED if preempted else EARLY_STOPPED
                logging.info("Stopping at step %d (%s).", step, status)
                break
        if step >= num_steps and status != PREEMPTED and step not in manager.all_steps():
            saver.save(step, state, progress)  # a finished run is saved as finished
        saver.finish()
        if not eval_metrics:  # the run had already finished or stopped: report where it stands
            eval_metrics = _evaluate(eval_split, state, step, workdir, writer, bar)
    finally:
        bar.close()
        preemption.close()
        if train_iter is not None and hasattr(train_iter, "close"):
            train_iter.close()  # grain worker processes
        try:
            with checkpoints.QuietOrbax():
                manager.wait_until_finished()
                manager.close()
        except Exception as e:  # noqa: BLE001 - the error being raised matters more
            logging.warning("Closing the checkpoint manager failed: %s", e)
        writer.flush()
    # "step" is the last evaluation's; a preempted run stops (and is saved) later than that.
    return eval_metrics | {"status": status, "stopped_at": step}


def _num_labels(source: Any) -> int | None:
    """The label count of a TFDS source's `label` feature, or None if it does not say."""
    try:
        return int(source.dataset_info.features["label"].num_classes)
    except (AttributeError, KeyError, TypeError):
        return None
