"""The released MARCO model's variables, by name, onto our network.

The authors released their trained model as a TF1 SavedModel (`savedmodel.zip`, the paper's
ref. 47; its graph is in shared/released_marco). Its variables live under TF-slim scopes
(`Inception/Mixed_6a/Branch_0/Conv2d_1a_1x1/weights`, `.../BatchNorm/beta`, `moving_mean`,
`moving_variance`), which are our layers' scopes (`inception.InceptionV3.iter_conv_layers`), so the
mapping is by name and every shape is checked. The values are read from the checkpoint files
alone (`tf.train.load_checkpoint`): no graph is executed. TensorFlow is imported only here, when
a release is read.

The release's logits are in the order of its class table, [Clear, Crystals, Other, Precipitate]
(graph: `index_to_string` table, also the order of `Logits/Conv2d_1c_1x1`); ours are
`labels.CLASS_NAMES`. The head's output channels are permuted on import.
"""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from flax import nnx

from marco_jax.labels import CLASS_NAMES
from marco_jax.model import inception

SCOPE = "Inception"
# graph: the `index_to_string` table of the serving signature, the logits' order
RELEASE_CLASS_NAMES: tuple[str, ...] = ("Clear", "Crystals", "Other", "Precipitate")
# Position in the release's logits of each of our classes.
RELEASE_INDEX_OF_OURS: tuple[int, ...] = tuple(
    RELEASE_CLASS_NAMES.index(name.capitalize()) for name in CLASS_NAMES
)
GRAPH_FILE = "saved_model.pb"
VARIABLES_PREFIX = "variables/variables"
# Variables of the release that carry no weight of the network.
NON_WEIGHTS = ("global_step",)


class ReleaseError(ValueError):
    """A directory that is not the release, or a release that does not fit this network."""


def release_name(scope: str, leaf: str) -> str:
    return f"{SCOPE}/{scope}/{leaf}"


def variable_slots(model: inception.InceptionV3) -> Iterator[tuple[str, nnx.Variable, bool]]:
    """(release variable name, our variable, is a class head output) for every weight."""
    for scope, layer in model.iter_conv_layers():
        yield release_name(scope, "weights"), layer.conv.kernel, False
        yield release_name(scope, "BatchNorm/beta"), layer.bn.bias, False
        yield release_name(scope, "BatchNorm/moving_mean"), layer.bn.mean, False
        yield release_name(scope, "BatchNorm/moving_variance"), layer.bn.var, False
    heads = [("Logits/Conv2d_1c_1x1", model.Logits)]
    if model.has_aux:
        heads.append(("AuxLogits/Conv2d_2b_1x1", model.AuxLogits.Conv2d_2b_1x1))
    for scope, conv in heads:
        yield release_name(scope, "weights"), conv.kernel, True
        yield release_name(scope, "biases"), conv.bias, True


def check_release_dir(directory: str | pathlib.Path) -> pathlib.Path:
    """The release directory, or a ReleaseError naming the missing file."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise ReleaseError(f"{directory} is not a directory: pass the unzipped savedmodel.zip.")
    for required in (GRAPH_FILE, VARIABLES_PREFIX + ".index"):
        if not (directory / required).is_file():
            raise ReleaseError(
                f"{directory / required} is missing: {directory} is not the released MARCO "
                "SavedModel (it holds saved_model.pb and variables/variables.index + .data-*)."
            )
    return directory


def read_variables(directory: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Every variable of the release's checkpoint by name, as numpy arrays."""
    import tensorflow as tf  # only to read TF checkpoints

    directory = check_release_dir(directory)
    try:
        reader = tf.train.load_checkpoint(str(directory / VARIABLES_PREFIX))
    except Exception as e:  # TF raises DataLossError, NotFoundError, ... for broken files
        raise ReleaseError(f"{directory / VARIABLES_PREFIX}.*: unreadable checkpoint: {e}") from e
    names = reader.get_variable_to_shape_map()
    return {name: np.asarray(reader.get_tensor(name)) for name in names}


def load_into(model: inception.InceptionV3, values: Mapping[str, np.ndarray]) -> None:
    """Copies the release's values into `model` in place, checking names and shapes both ways.

    Raises:
      ReleaseError: a variable the network needs is missing, has another shape (both named), or
        the release has weights the network lacks.
    """
    used = set(NON_WEIGHTS)
    for name, variable, is_head in variable_slots(model):
        if name not in values:
            raise ReleaseError(f"the release has no variable {name}, which this network needs.")
        value = np.asarray(values[name], np.float32)
        if value.shape != variable.shape:
            raise ReleaseError(
                f"{name} has shape {tuple(value.shape)} in the release, {tuple(variable.shape)} "
                "in this network: use configs/default.py (the release's network)."
            )
        if is_head:
            value = value[..., RELEASE_INDEX_OF_OURS]
        variable.set_value(np.ascontiguousarray(value))
        used.add(name)
    extra = sorted(set(values) - used)
    if extra:
        raise ReleaseError(
            f"the release has {len(extra)} variables this network lacks, e.g. {extra[0]}: "
            "use configs/default.py (with model.aux_logits=True)."
        )


def provenance(directory: str | pathlib.Path, values: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies the imported release: its graph's sha256 and its global step."""
    directory = pathlib.Path(directory)
    digest = hashlib.sha256((directory / GRAPH_FILE).read_bytes()).hexdigest()
    step = values.get("global_step")
    return {
        "release_dir": str(directory.resolve()),
        "graph_sha256": digest,
        "global_step": None if step is None else int(step),
    }
