"""The integrity record of a checkpoint: what its arrays are, bit for bit, and what they mean.

Why: a bit flipped on disk used to restore silently (momentum values of 3.7e30 with a finite
loss). Every checkpoint therefore carries, per leaf, its largest magnitude and a position-weighted
checksum of its bits (exact integer arithmetic on the device, so any reduction order gives the
same value), and what the state was trained for (`trained_for`: the model config and the input
preprocessing), which shapes alone cannot tell (a 151 px config.json over a 599 px checkpoint has
the same arrays). Writing the record is training's job (`marco_jax.training.checkpoints`);
reading it back is everyone's (`marco_jax.runs.store`), so it lives here, below both.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from marco_jax.data import preprocess


def _words(x: jax.Array) -> jax.Array:
    """The bits of `x` as a flat uint32 vector."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32).ravel()
    unsigned = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}"))
    return unsigned.astype(jnp.uint32).ravel()


def _leaf_record(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    words = _words(x)
    weights = 2 * jnp.arange(words.size, dtype=jnp.uint32) + 1  # also catches swapped values
    checksum = jnp.sum(words * weights, dtype=jnp.uint32)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        finite = jnp.all(jnp.isfinite(x))
        magnitude = jnp.max(jnp.abs(x)).astype(jnp.float32) if x.size else jnp.float32(0)
    else:
        finite, magnitude = jnp.bool_(True), jnp.float32(0)
    return finite, magnitude, checksum


_leaf_records = jax.jit(lambda leaves: [_leaf_record(x) for x in leaves])


def state_record(state: Any) -> dict[str, dict[str, Any]]:
    """{leaf path: {"finite", "max_abs", "checksum"}} of a state pytree, computed on device."""
    paths_and_leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    leaves = [jnp.asarray(leaf) for _, leaf in paths_and_leaves]
    records = jax.device_get(_leaf_records(leaves))
    return {
        jax.tree_util.keystr(path): {
            "finite": bool(finite),
            "max_abs": float(magnitude),
            "checksum": int(checksum),
        }
        for (path, _), (finite, magnitude, checksum) in zip(paths_and_leaves, records, strict=True)
    }


def non_finite_leaves(record: dict[str, dict[str, Any]]) -> list[str]:
    return [path for path, leaf in record.items() if not leaf["finite"]]


def describe(paths: list[str], limit: int = 3) -> str:
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def _by_name(record: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Keys reduced to their names ("params/Logits/kernel"), the same whether the state was a
    TrainState (`.params['Logits']`) or the plain dict an inference restore gives."""
    return {"/".join(re.findall(r"[^.\[\]'\"]+", key)): leaf for key, leaf in record.items()}


def verify(state: Any, saved: dict[str, Any] | None) -> None:
    """Raises ValueError (one line) unless `state` is finite and matches its saved record."""
    record = _by_name(state_record(state))
    if bad := non_finite_leaves(record):
        raise ValueError(f"non-finite values in {describe(bad)}")
    if saved is None:
        return  # an older or imported checkpoint: finiteness is all that can be checked
    leaves = _by_name(saved["leaves"])
    if leaves.keys() != record.keys():
        raise ValueError("its leaves differ from the state this config builds")
    changed = [p for p in record if record[p]["checksum"] != leaves[p]["checksum"]]
    if changed:
        first = changed[0]
        raise ValueError(
            f"checksum mismatch in {describe(changed)} (max |x| of {first} is "
            f"{record[first]['max_abs']:.3g}, {leaves[first]['max_abs']:.3g} when saved)"
        )


def trained_for(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What a checkpoint's arrays mean: the network and the input transform it was trained on."""
    return {
        "model": config.model.to_dict(),
        "preprocessing": preprocess.Preprocessing.from_config(config).to_metadata(),
    }


def check_trained_for(
    config: ml_collections.ConfigDict, saved: dict[str, Any] | None, step: int
) -> None:
    """Raises ValueError naming each field where config.json and checkpoint `step` disagree."""
    if saved is None or "trained_for" not in saved:
        return  # an older or imported checkpoint: its shapes are all that can be checked
    now, then = _flat(trained_for(config)), _flat(saved["trained_for"])
    differing = [key for key in sorted(then) if now.get(key) != then[key]]
    if differing:
        fields = ", ".join(
            f"{key} is {now.get(key)!r} there but was {then[key]!r}" for key in differing
        )
        raise ValueError(
            f"config.json does not match checkpoint {step}, which was trained with other "
            f"settings ({fields}); config.json was changed after training? Restore the run's "
            "own config.json."
        )


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def check_shapes(model: nnx.Module, expected: nnx.Module, where: str) -> None:
    """Refuses a checkpoint whose arrays do not have the shapes the workdir's config.json
    describes (a config replaced after training, e.g. a 151 px config over a 599 px run), for
    checkpoints without a `trained_for` record (older, or imported).

    `expected`: the config's network, abstract (`nnx.eval_shape`); `model`: the restored one.

    Raises:
      ValueError: naming the first differing array and both shapes.
    """
    have = _shapes(model)
    want = _shapes(expected)
    for name in sorted(set(have) | set(want)):
        if have.get(name) != want.get(name):
            raise ValueError(
                f"{where}: the checkpoint does not match config.json: {name} has shape "
                f"{_shape_text(have.get(name))} in the checkpoint but "
                f"{_shape_text(want.get(name))} for the model config.json describes "
                "(config.json was changed after training?). Restore the run's own config.json."
            )


def _shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    state = nnx.state(model, nnx.Param, nnx.BatchStat)
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(state)
        if hasattr(leaf, "shape")
    }


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "absent" if shape is None else str(tuple(shape))
