"""Predictions over a whole evaluation split, on every device of every host; no I/O of its own.

One code path serves the periodic evaluation during training, `python -m marco_jax.evaluate` and
`relabel`: each host feeds its shard, the jitted step returns the global batch's probabilities
and labels replicated, so every host ends with all predictions in the source's order and
computes the same metrics. Each record is read once, by the pipeline's worker processes: its
image, label and the text fields asked for (the data source for Table 5, file names for
relabelling) travel together. What to do with the result (write eval/step_N.json, a report, a
CSV) is the caller's.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from marco_jax import logs, parallel
from marco_jax.data import input_pipeline
from marco_jax.evaluation import metrics
from marco_jax.model import inception, predict

_DEVICE_FIELDS = ("image", "label", "index", "mask")


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Row i of each array belongs to record i of the evaluated source."""

    probs: np.ndarray  # [N, classes]
    labels: np.ndarray  # [N]
    texts: dict[str, np.ndarray]  # the requested text fields, [N] str each

    def sources(self) -> np.ndarray | None:
        """The data source of each record, for the per-source spread of Table 5, if recorded."""
        names = self.texts.get("source")
        return names if names is not None and any(names) else None


def _predict_step(weights: tuple[Any, Any], batch: dict[str, jax.Array], graphdef) -> dict:
    probs = predict.probabilities(graphdef, weights, batch["image"])
    return {"probs": probs} | {key: batch[key] for key in ("label", "index", "mask")}


class Evaluator:
    """Runs the network over `source` (records with "label" and the fields of `text_fields`)."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        graphdef: nnx.GraphDef,
        source: Sequence[dict[str, Any]],
        mesh: Mesh,
        text_fields: Sequence[str] = (),
    ):
        self.config = config
        self.source = source
        self.text_fields = tuple(text_fields)
        self._batch_sharding = parallel.batch_sharded(mesh)
        replicated = parallel.replicated(mesh)
        self._predict = jax.jit(
            functools.partial(_predict_step, graphdef=graphdef),
            in_shardings=(replicated, self._batch_sharding),
            out_shardings=replicated,
        )

    def predict(
        self, params: Any, batch_stats: Any, *, progress: Callable[[int], None] | None = None
    ) -> Predictions:
        """The network with these weights over every record of the source.

        progress: called with the number of records done after each batch (the training loop
          shows it on its own bar); without it, a progress bar of its own (on process 0).
        """
        dataset = input_pipeline.create_eval_dataset(
            self.config,
            self.source,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            text_fields=self.text_fields,
        )
        probs = np.zeros((len(self.source), self.config.model.num_classes), np.float32)
        labels = np.zeros(len(self.source), np.int64)
        local_texts: dict[str, dict[int, str]] = {field: {} for field in self.text_fields}
        bar = None
        if progress is None:
            bar = logs.progress(
                len(self.source), "predict", "img", enabled=jax.process_index() == 0
            )
        done = 0
        for local in dataset:
            mine = local["mask"]
            for field in self.text_fields:
                local_texts[field].update(
                    zip(local["index"][mine].tolist(), local[field][mine], strict=True)
                )
            batch = {key: local[key] for key in _DEVICE_FIELDS}
            batch["index"] = batch["index"].astype(np.int32)
            out = jax.device_get(
                self._predict(
                    (params, batch_stats), parallel.to_global(batch, self._batch_sharding)
                )
            )
            valid = out["mask"]
            probs[out["index"][valid]] = out["probs"][valid]
            labels[out["index"][valid]] = out["label"][valid]
            done += int(valid.sum())
            if bar is None:
                progress(done)
            else:
                bar.update(int(valid.sum()))
        if bar is not None:
            bar.close()
        return Predictions(probs, labels, self._all_texts(local_texts))

    def _all_texts(self, local_texts: dict[str, dict[int, str]]) -> dict[str, np.ndarray]:
        """Each text field of every record, gathered from the processes that read them."""
        texts = {}
        for field, mine in local_texts.items():
            values = [""] * len(self.source)
            everyone = parallel.gather_from_processes([[i, str(t)] for i, t in mine.items()])
            for pairs in everyone:
                for index, text in pairs:
                    values[index] = text
            texts[field] = np.array(values)
        return texts


def predict_model(
    config: ml_collections.ConfigDict,
    model: inception.InceptionV3,
    source: Sequence[dict[str, Any]],
    text_fields: Sequence[str] = (),
) -> Predictions:
    """`model` (with its current weights) over `source`, on all devices of all hosts."""
    parallel.check_divisible(config.input.eval_batch_size, "eval_batch_size")
    graphdef, params, batch_stats = inception.split_model(model)
    split_evaluator = Evaluator(config, graphdef, source, parallel.create_mesh(), text_fields)
    return split_evaluator.predict(params, batch_stats)


def cross_entropy(predictions: Predictions) -> float:
    """Mean -log p(label): the main head's loss of training, without its extra terms."""
    p_label = predictions.probs[np.arange(len(predictions.labels)), predictions.labels]
    return float(-np.mean(np.log(np.maximum(p_label, np.finfo(np.float32).tiny))))


def summary(predictions: Predictions) -> dict[str, Any]:
    """The periodic evaluation's figures: accuracy, loss, per-class accuracy, confusion
    matrices, AUCs."""
    result = metrics.compute_all(predictions.labels, predictions.probs)
    return {
        "accuracy": result["accuracy"],
        "loss": cross_entropy(predictions),
        "per_class_accuracy": dict(
            zip(result["class_names"], result["per_class_accuracy"], strict=True)
        ),
        "confusion_matrix": result["confusion_matrix"],
        "confusion_matrix_normalized": result["confusion_matrix_normalized"],
        "auc": {name: roc["auc"] for name, roc in result["roc"].items()},
        "num_examples": result["num_examples"],
    }
