"""The int8 OpenVINO export: NNCF's post-training quantization of the float IR, calibrated on a
lab's images, and its measured agreement with the float model on images it was not calibrated on.

Why int8: on a CPU with VNNI, int8 convolutions run several times faster than float32 (on the
2-core EPYC of `bench/score_folder.py`, MARCO at 599 px scores about 3x faster than the float IR).
Why the agreement: quantization moves the probabilities, by an amount that depends on the
weights and on the images, so every int8 export measures it on held-out images, records it in
its metadata (`int8`: calibration images, top-1 agreement, max and mean absolute probability
difference) and is refused below `MIN_TOP1_AGREEMENT` unless forced.

Both models are measured as `classify --model` runs them (`runtime.load_exported`, float32 for
the layers left in float), so the figures are those of the scores a lab will get.
"""

from __future__ import annotations

import dataclasses
import pathlib
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from marco_jax.serving.export import openvino_ir
from marco_jax.serving.export.runtime import import_openvino, load_exported

if TYPE_CHECKING:
    from marco_jax.serving.export.fold import Network

MIN_TOP1_AGREEMENT = 0.99


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Model inputs (as `Preprocessing.eval_transform` makes them) that calibrate the quantization,
    and others, held out, on which its agreement with the float model is measured. Sequences may
    load their images on access (`calibration.ImageSequence`): NNCF reads them one at a time."""

    calibrate: Sequence[np.ndarray]
    held_out: Sequence[np.ndarray]
    source: str  # where the images came from, for the metadata


class LowAgreementError(ValueError):
    """The int8 model agrees with the float model on fewer held-out images than required."""

    def __init__(self, agreement: dict[str, Any]):
        self.agreement = agreement
        super().__init__(
            f"the int8 model's top-1 class agrees with the float model's on "
            f"{agreement['top1_agreement']:.1%} of {agreement['held_out_images']} held-out images "
            f"(max |dp| {agreement['max_abs_diff']:.3g}), under the {MIN_TOP1_AGREEMENT:.0%} "
            "required: nothing was written. Calibrate on more images like the ones you score, "
            "export the float model (without --int8), or pass --force to write it anyway."
        )


def agreement(
    float_predict, int8_predict, images: Sequence[np.ndarray], batch_size: int = 8
) -> dict[str, Any]:
    """Top-1 agreement and the max and mean absolute probability difference over `images`."""
    if not len(images):
        raise ValueError("no held-out images to measure the int8 model's agreement on.")
    same, diffs = [], []
    for start in range(0, len(images), batch_size):
        batch = np.stack([images[i] for i in range(start, min(start + batch_size, len(images)))])
        p_float, p_int8 = float_predict(batch), int8_predict(batch)
        same.append(p_float.argmax(axis=1) == p_int8.argmax(axis=1))
        diffs.append(np.abs(p_float - p_int8))
    same_all, diff_all = np.concatenate(same), np.concatenate(diffs)
    return {
        "held_out_images": len(same_all),
        "top1_agreement": float(same_all.mean()),
        "max_abs_diff": float(diff_all.max()),
        "mean_abs_diff": float(diff_all.mean()),
    }


def quantize(model, calibration: Calibration):
    """NNCF's default post-training quantization (min-max ranges over the calibration images,
    fast bias correction) of an openvino.Model with one image per calibration step."""
    import_openvino()  # first: NNCF then finds no telemetry either
    import nncf

    dataset = nncf.Dataset(calibration.calibrate, lambda image: image[None])
    return nncf.quantize(model, dataset, subset_size=len(calibration.calibrate))


def save_int8(
    network: Network,
    metadata: dict[str, Any],
    path: pathlib.Path,
    calibration: Calibration,
    force: bool = False,
) -> dict[str, Any]:
    """Quantizes the network, measures it against the float model and writes the int8 IR to
    `path` (.xml and .bin) with the figures in its metadata; returns the figures.

    Raises:
      LowAgreementError: top-1 agreement under MIN_TOP1_AGREEMENT and not `force`; nothing is
        written then.
    """
    if not len(calibration.calibrate):
        raise ValueError("no calibration images: int8 quantization needs some.")
    float_model = openvino_ir.openvino_model(network, metadata)
    int8_model = quantize(float_model, calibration)
    with tempfile.TemporaryDirectory() as tmp:
        float_path, int8_path = pathlib.Path(tmp) / "float.xml", pathlib.Path(tmp) / "int8.xml"
        openvino_ir.save_model(float_model, float_path)
        openvino_ir.save_model(int8_model, int8_path)
        figures = agreement(
            load_exported(float_path), load_exported(int8_path), calibration.held_out
        )
    figures = {
        "calibration_images": len(calibration.calibrate),
        "calibration_source": calibration.source,
        **figures,
        "min_top1_agreement": MIN_TOP1_AGREEMENT,
        "forced": bool(force and figures["top1_agreement"] < MIN_TOP1_AGREEMENT),
    }
    if figures["top1_agreement"] < MIN_TOP1_AGREEMENT and not force:
        raise LowAgreementError(figures)
    openvino_ir.set_metadata(int8_model, {**metadata, "int8": figures})
    openvino_ir.save_model(int8_model, path)
    return figures
