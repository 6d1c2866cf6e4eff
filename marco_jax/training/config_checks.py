"""Checks of a training config before any work, and of a config against a workdir's stored one.

Why here and not where each field is used: a bad value used to surface as a bare exception after
half a minute of compiling, or never (a negative step count silently trained `num_epochs`). All
known fields are checked at start, each fault on one line naming the field, so that `main` can
print them and exit 2 before the first log line. Fields this module does not know (added by a
newer config) are tolerated; a known field that is absent is not an error either, since older
configs lack some.

`compare_with_stored` decides whether a config may resume a workdir trained with another one:
changes to the network or to the order and content of the training batches are refused (the
resumed run would not be the run the checkpoints belong to); logging, evaluation, duration and
performance settings are allowed and recorded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ml_collections

from marco_jax import labels
from marco_jax.data import parallelism, preprocess, prescale
from marco_jax.model import inception
from marco_jax.training import step

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# The modules that use these fields own their lists.
MODEL_NAMES = inception.MODEL_NAMES
RESIZE_METHODS = preprocess.RESIZE_METHODS
JPEG_DCT_METHODS = preprocess.JPEG_DCT_METHODS
LR_SCALINGS = ("linear", "none")
REMAT_POLICIES = tuple(step.REMAT_POLICIES)
DATASET_CONFIG_NAMES = ("full", "synthetic", "synthetic_tiny")  # tfds_marco BUILDER_CONFIGS

# Fields a resumed run may change. Everything else alters the network (model.*), the batches it
# sees and their order (dataset.*, input.* but these, seed) or the optimisation, which the
# checkpoint's optimizer state belongs to; optimisation changes are allowed (lowering the
# learning rate after a divergence is the usual cure) but recorded, like these.
SAFE_FIELDS = frozenset(
    {
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "num_train_steps",
        "num_epochs",
        "early_stopping_patience",
        "eval_with_ema",
        "profile_steps",
        "init_from",  # used only when a run starts from step 0
        "dataset.data_dir",
        "dataset.manual_dir",
        "dataset.eval_split",
        "input.eval_batch_size",
        "input.num_workers",
        "input.prefetch_buffer_size",
        "input.read_threads",
    }
)
SAFE_PREFIXES = ("optimizer.",)


class ConfigError(ValueError):
    """One or more config fields are invalid; str() is one line per field."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(
        value
    )


def _int_at_least(low: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not _is_int(value) or value < low:
            return f"must be an integer >= {low}"
        return None

    return check


def _auto_or_int_at_least(low: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not _is_int(value) or (value < low and value != parallelism.AUTO):
            return f"must be an integer >= {low}, or {parallelism.AUTO} to choose from the cores"
        return None

    return check


def _number(low: float, high: float, low_open: bool = False, high_open: bool = False):
    def check(value: Any) -> str | None:
        ok = _is_number(value)
        ok = ok and (value > low if low_open else value >= low)
        ok = ok and (value < high if high_open else value <= high)
        if ok:
            return None
        bounds = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        return f"must be a number in {bounds}"

    return check


def _choice(choices: Iterable[Any]) -> Callable[[Any], str | None]:
    choices = tuple(choices)

    def check(value: Any) -> str | None:
        return None if value in choices else f"is unknown; use one of {choices}"

    return check


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be True or False"


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "must be a non-empty string"


def _optional_string(value: Any) -> str | None:
    return None if value is None or isinstance(value, str) else "must be a string or None"


def _range_pair(value: Any) -> str | None:
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(_is_number(v) for v in value)
        and 0 <= value[0] <= value[1]
    ):
        return None
    return "must be a pair (low, high) with 0 <= low <= high"


def _depth_caps(value: Any) -> str | None:
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if not isinstance(value, Mapping):
        return "must be a dict {layer name: depth}"
    bad = {k: v for k, v in value.items() if not _is_int(v) or v < 1}
    return f"must map layer names to integers >= 1; bad: {bad}" if bad else None


def _num_train_steps(value: Any) -> str | None:
    if _is_int(value) and (value == -1 or value >= 1):
        return None
    return "must be >= 1, or -1 to train config.num_epochs"


_POSITIVE = _number(0, math.inf, low_open=True, high_open=True)
_NON_NEGATIVE = _number(0, math.inf, high_open=True)
_PROBABILITY = _number(0, 1)
_FRACTION_BELOW_ONE = _number(0, 1, high_open=True)

CHECKS: dict[str, Callable[[Any], str | None]] = {
    "model.name": _choice(MODEL_NAMES),
    "model.num_classes": _int_at_least(2),
    "model.image_size": _int_at_least(75),  # Inception's smallest input
    "model.stem_conv_depth": _int_at_least(0),
    "model.depth_caps": _depth_caps,
    "model.depth_multiplier": _POSITIVE,
    "model.min_depth": _int_at_least(1),
    "model.dropout_rate": _FRACTION_BELOW_ONE,
    "model.aux_logits": _bool,
    "model.aux_loss_weight": _NON_NEGATIVE,
    "model.batch_norm_momentum": _FRACTION_BELOW_ONE,
    "model.batch_norm_epsilon": _POSITIVE,
    "model.compute_dtype": _choice(COMPUTE_DTYPES),
    "model.batch_norm_fast_variance": _bool,
    "model.remat": _choice(REMAT_POLICIES),
    "dataset.name": _choice(("marco",)),
    "dataset.data_dir": _optional_string,
    "dataset.manual_dir": _optional_string,
    "dataset.prescale": _choice(("", *prescale.IMAGE_FORMATS)),
    "dataset.train_split": _string,
    "dataset.eval_split": _string,
    "input.global_batch_size": _int_at_least(1),
    "input.eval_batch_size": _int_at_least(1),
    "input.central_fraction": _number(0, 1, low_open=True),
    "input.resize_method": _choice(RESIZE_METHODS),
    "input.jpeg_dct": _choice(JPEG_DCT_METHODS),
    "input.brightness_delta": _number(0, 1),
    "input.saturation_range": _range_pair,
    "input.hue_delta": _number(0, 0.5),
    "input.contrast_range": _range_pair,
    "input.flip_left_right_prob": _PROBABILITY,
    "input.flip_up_down_prob": _PROBABILITY,
    "input.random_rot90": _bool,
    "input.num_workers": _auto_or_int_at_least(0),
    "input.prefetch_buffer_size": _auto_or_int_at_least(1),
    "input.shuffle_seed": _int_at_least(0),
    "input.read_threads": _auto_or_int_at_least(1),
    "optimizer.learning_rate": _NON_NEGATIVE,
    "optimizer.lr_reference_batch_size": _int_at_least(1),
    "optimizer.lr_scaling": _choice(LR_SCALINGS),
    "optimizer.rmsprop_decay": _FRACTION_BELOW_ONE,
    "optimizer.momentum": _FRACTION_BELOW_ONE,
    "optimizer.epsilon": _POSITIVE,
    "optimizer.lr_decay_factor": _number(0, 1, low_open=True),
    "optimizer.lr_decay_epochs": _POSITIVE,
    "optimizer.staircase": _bool,
    "optimizer.warmup_epochs": _NON_NEGATIVE,
    "optimizer.l2_regularization": _NON_NEGATIVE,
    "optimizer.weight_decay": _NON_NEGATIVE,
    "optimizer.label_smoothing": _FRACTION_BELOW_ONE,
    "optimizer.ema_decay": _PROBABILITY,
    "optimizer.ema_warmup": _bool,
    "num_train_steps": _num_train_steps,
    "num_epochs": _NON_NEGATIVE,
    "log_every_steps": _int_at_least(1),
    "eval_every_steps": _int_at_least(1),
    "checkpoint_every_steps": _int_at_least(1),
    "keep_checkpoints": _int_at_least(1),
    "early_stopping_patience": _int_at_least(0),
    "eval_with_ema": _bool,
    "profile_steps": _int_at_least(0),
    "seed": _int_at_least(0),
}


def _get(config: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = config
    for key in path.split("."):
        if not isinstance(node, (Mapping, ml_collections.ConfigDict)) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _label_mapping(config: ml_collections.ConfigDict) -> bool:
    """Whether the config maps the dataset's labels onto its own classes (a future field)."""
    return any(_get(config, f"dataset.{name}")[0] for name in ("label_map", "label_mapping"))


def problems(config: ml_collections.ConfigDict) -> list[str]:
    """Every fault of `config`, one line each ("config.FIELD=VALUE must ..."); [] if none."""
    found = []
    for path, check in CHECKS.items():
        present, value = _get(config, path)
        if present and (message := check(value)) is not None:
            found.append(f"config.{path}={value!r} {message}.")
    present, name = _get(config, "dataset.config_name")
    overrides = _get(config, "dataset.config_overrides")[1]
    if present and name not in DATASET_CONFIG_NAMES:
        found.append(
            f"config.dataset.config_name={name!r} is unknown; use one of {DATASET_CONFIG_NAMES} "
            "(config.dataset.config_overrides makes variants of them)."
        )
    if overrides is not None and not isinstance(overrides, (Mapping, ml_collections.ConfigDict)):
        found.append(f"config.dataset.config_overrides={overrides!r} must be a dict.")
    steps, epochs = _get(config, "num_train_steps")[1], _get(config, "num_epochs")[1]
    if steps == -1 and _is_number(epochs) and epochs <= 0:
        found.append(
            f"config.num_epochs={epochs!r} must be > 0 when config.num_train_steps=-1 "
            "(or set num_train_steps)."
        )
    present, num_classes = _get(config, "model.num_classes")
    dataset = _get(config, "dataset.name")[1]
    if (
        present
        and _is_int(num_classes)
        and dataset == "marco"
        and num_classes != labels.NUM_CLASSES
        and not _label_mapping(config)
    ):
        found.append(
            f"config.model.num_classes={num_classes} does not match the {labels.NUM_CLASSES} "
            f"labels of the marco dataset {labels.CLASS_NAMES}."
        )
    return found


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError listing every fault of `config` (see `problems`)."""
    if found := problems(config):
        raise ConfigError(found)


def check_num_labels(config: ml_collections.ConfigDict, num_labels: int | None) -> None:
    """The dataset as built must have as many labels as the network has classes."""
    if num_labels is None or _label_mapping(config):
        return
    if config.model.num_classes != num_labels:
        raise ConfigError(
            [
                f"config.model.num_classes={config.model.num_classes} does not match the "
                f"{num_labels} labels of dataset {config.dataset.name}/"
                f"{config.dataset.config_name}."
            ]
        )


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, ml_collections.ConfigDict):
        tree = tree.to_dict()
    if isinstance(tree, Mapping) and tree and not prefix.endswith("depth_caps."):
        flat = {}
        for key, value in tree.items():
            if prefix + key in ("model.depth_caps", "dataset.config_overrides"):
                flat[prefix + key] = dict(value) if isinstance(value, Mapping) else value
            else:
                flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    value = list(tree) if isinstance(tree, tuple) else tree  # JSON stores tuples as lists
    return {prefix[:-1]: value}


def _is_safe(field: str) -> bool:
    return field in SAFE_FIELDS or field.startswith(SAFE_PREFIXES)


def compare_with_stored(
    stored: Mapping[str, Any], config: ml_collections.ConfigDict
) -> tuple[dict[str, tuple[Any, Any]], dict[str, tuple[Any, Any]]]:
    """(refused, allowed) changes {field: (stored, new)} of `config` against `stored`.

    Only fields on both sides are compared: a field added by newer code, or dropped, has no
    stored value to differ from.
    """
    old, new = _flatten(stored), _flatten(config)
    changed = {
        field: (old[field], new[field])
        for field in sorted(old.keys() & new.keys())
        if old[field] != new[field]
    }
    refused = {field: values for field, values in changed.items() if not _is_safe(field)}
    allowed = {field: values for field, values in changed.items() if _is_safe(field)}
    return refused, allowed
