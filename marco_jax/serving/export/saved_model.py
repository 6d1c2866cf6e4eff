"""The SavedModel export (a directory): signature `images`, and `serving_default`, a drop-in for
the release's (see `tf_graph._make_tf_module`); the metadata in `SAVED_MODEL_METADATA`."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from marco_jax.serving.export.fold import Network
from marco_jax.serving.export.metadata import SAVED_MODEL_METADATA
from marco_jax.serving.export.tf_graph import _make_tf_module, _tf


def _save_saved_model(network: Network, metadata: dict[str, Any], path: pathlib.Path) -> None:
    tf = _tf()
    module = _make_tf_module(network, metadata)
    signatures = {
        "serving_default": module.serve_bytes.get_concrete_function(),
        "images": module.serve_images.get_concrete_function(),
    }
    tf.saved_model.save(module, str(path), signatures=signatures)
    extra = path / SAVED_MODEL_METADATA
    extra.parent.mkdir(exist_ok=True)
    extra.write_text(json.dumps(metadata, indent=1))
