"""Predictions over a whole evaluation split, on every device of every host.

One code path serves the periodic evaluation during training and `python -m marco_jax.evaluate`:
each host feeds its shard, the jitted step returns the global batch's probabilities replicated,
so every host ends with all predictions in the source's order and computes the same metrics.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from marco_jax import parallel
from marco_jax.data import augment, input_pipeline
from marco_jax.evaluation import metrics

EVAL_DIR = "eval"


def _predict_step(variables: tuple[Any, Any], batch: dict[str, jax.Array], graphdef) -> dict:
    params, batch_stats = variables
    model = nnx.merge(graphdef, params, batch_stats)
    logits = model(augment.to_model_input(batch["image"]), train=False)
    return {"probs": jax.nn.softmax(logits), "index": batch["index"], "mask": batch["mask"]}


def _record_field(source: Sequence[dict[str, Any]], index: int, field: str) -> str:
    value = source[index].get(field, b"")
    return value.decode() if isinstance(value, bytes) else str(value)


class Evaluator:
    """Runs the network over `source` (records with "label" and optionally "source")."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        graphdef: nnx.GraphDef,
        source: Sequence[dict[str, Any]],
        mesh: Mesh,
    ):
        self.config = config
        self.source = source
        self.labels = np.array([int(source[i]["label"]) for i in range(len(source))])
        self._batch_sharding = parallel.batch_sharded(mesh)
        replicated = parallel.replicated(mesh)
        self._predict = jax.jit(
            functools.partial(_predict_step, graphdef=graphdef),
            in_shardings=(replicated, self._batch_sharding),
            out_shardings=replicated,
        )

    def predict(self, params: Any, batch_stats: Any) -> np.ndarray:
        """Probabilities [len(source), num_classes], row i for record i."""
        dataset = input_pipeline.create_eval_dataset(
            self.config,
            self.source,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        probs = np.zeros((len(self.source), self.config.model.num_classes), np.float32)
        for local in dataset:
            local = {key: local[key] for key in ("image", "index", "mask")}
            local["index"] = local["index"].astype(np.int32)
            out = jax.device_get(
                self._predict(
                    (params, batch_stats), parallel.to_global(local, self._batch_sharding)
                )
            )
            valid = out["mask"]
            probs[out["index"][valid]] = out["probs"][valid]
        return probs

    def sources(self) -> np.ndarray | None:
        """The data source of each record, for the per-source spread of Table 5, if recorded."""
        names = [_record_field(self.source, i, "source") for i in range(len(self.source))]
        return np.array(names) if any(names) else None

    def run(self, state: Any, step: int, workdir: str, writer) -> dict[str, Any]:
        """Evaluates the EMA (or raw) weights and writes eval/step_<N>.json and scalars."""
        use_ema = self.config.eval_with_ema
        params = state.ema_params if use_ema else state.params
        batch_stats = state.ema_batch_stats if use_ema else state.batch_stats
        result = metrics.compute_all(self.labels, self.predict(params, batch_stats))
        summary = {
            "step": step,
            "weights": "ema" if use_ema else "raw",
            "accuracy": result["accuracy"],
            "per_class_accuracy": dict(
                zip(result["class_names"], result["per_class_accuracy"], strict=True)
            ),
            "confusion_matrix": result["confusion_matrix"],
            "confusion_matrix_normalized": result["confusion_matrix_normalized"],
            "auc": {name: roc["auc"] for name, roc in result["roc"].items()},
            "num_examples": result["num_examples"],
        }
        if jax.process_index() == 0:
            out_dir = epath.Path(workdir) / EVAL_DIR
            out_dir.mkdir(parents=True, exist_ok=True)
            text = json.dumps(summary, indent=2)
            (out_dir / f"step_{step}.json").write_text(text)
            (out_dir / "latest.json").write_text(text)
        scalars = {"eval_accuracy": summary["accuracy"]}
        scalars |= {
            f"eval_accuracy_{name}": value
            for name, value in summary["per_class_accuracy"].items()
            if value is not None
        }
        writer.write_scalars(step, scalars)
        return summary
