"""Starts training from existing weights: `config.init_from` (fine-tuning).

A lab fine-tunes the released MARCO on its own imager's pictures rather than training on 500k
images (MARCO transfers poorly to new imagers without it: "Moving beyond MARCO", PLOS ONE 2023).
The source is either a workdir (an imported release or a training run: its EMA weights, the ones
it evaluates) or a release directory itself (saved_model.pb + variables/). Every weight and
BatchNorm statistic whose shape matches is copied; the class heads (`Logits`, `AuxLogits`) keep
their fresh initialisation when their shape differs (another `num_classes`, or the auxiliary
head's kernel shrunk on a small input). Any other mismatch is a different network: an error.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx, traverse_util

from marco_jax.model import inception, release
from marco_jax.runs import store

HEADS = ("Logits", "AuxLogits")
RELEASE_IMAGE_SIZE = 599


def _source_weights(source: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """{"params": ..., "batch_stats": ...} as pure dicts in our network's structure."""
    path = pathlib.Path(source)
    if (path / release.GRAPH_FILE).is_file():
        donor_config = ml_collections.ConfigDict(config.to_dict())
        donor_config.model.num_classes = len(release.RELEASE_CLASS_NAMES)
        donor_config.model.aux_logits = True
        # The release's input size (graph: ResizeBilinear to 599x599), which sets its AuxLogits
        # kernel to 5x5; our network at another size then leaves that kernel fresh.
        donor_config.model.image_size = RELEASE_IMAGE_SIZE
        donor = inception.create_model(donor_config)
        release.load_into(donor, release.read_variables(path))
        _, params, batch_stats = nnx.split(donor, nnx.Param, nnx.BatchStat)
        return {"params": params.to_pure_dict(), "batch_stats": batch_stats.to_pure_dict()}
    if (path / store.CONFIG_FILE).is_file():
        manager = store.create_manager(source, read_only=True)
        step = store.resolve_step(manager, "best")
        state = store.restore_on_this_host(manager, step)
        manager.close()
        params, batch_stats = store.chosen_weights(state, use_ema=True)
        return {"params": params, "batch_stats": batch_stats}
    raise ValueError(
        f"config.init_from={source!r} is neither a release directory (saved_model.pb + "
        "variables/) nor a marco_jax workdir (config.json + checkpoints/)."
    )


def _merge(target: dict, donor: dict, kind: str, fresh: list[str]) -> dict:
    flat_target = traverse_util.flatten_dict(target, sep="/")
    flat_donor = traverse_util.flatten_dict(donor, sep="/")
    merged = {}
    for name, value in flat_target.items():
        theirs = flat_donor.get(name)
        if theirs is not None and tuple(np.shape(theirs)) == tuple(np.shape(value)):
            merged[name] = jax.numpy.asarray(theirs, value.dtype)
            continue
        if not name.startswith(HEADS):
            found = "absent" if theirs is None else f"of shape {tuple(np.shape(theirs))}"
            raise ValueError(
                f"config.init_from: {kind} {name} of shape {tuple(np.shape(value))} is {found} "
                "in the source: it holds another network (check config.model against it)."
            )
        merged[name] = value
        fresh.append(name)
    return traverse_util.unflatten_dict(merged, sep="/")


def load_into(model: inception.InceptionV3, config: ml_collections.ConfigDict) -> list[str]:
    """Copies config.init_from's weights into `model` in place; returns the names left fresh."""
    donor = _source_weights(config.init_from, config)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    fresh: list[str] = []
    params.replace_by_pure_dict(_merge(params.to_pure_dict(), donor["params"], "param", fresh))
    batch_stats.replace_by_pure_dict(
        _merge(batch_stats.to_pure_dict(), donor["batch_stats"], "BatchNorm statistic", fresh)
    )
    nnx.update(model, params, batch_stats)
    return fresh
