"""The ONNX export (one file, opset `ONNX_OPSET`), built node by node with `onnx.helper` (tf2onnx
does not support this TensorFlow/numpy); NCHW inside, NHWC at the input. The `onnx` library is
imported inside the functions that use it."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import numpy as np

from marco_jax.labels import CLASS_NAMES
from marco_jax.model import inception
from marco_jax.serving.export.fold import FoldedConv, Network, _apply
from marco_jax.serving.export.metadata import METADATA_KEY, _input_dtype

ONNX_OPSET = 17  # Softmax on the last axis and everything used here; widely supported runtimes.


@dataclasses.dataclass(frozen=True)
class _OnnxTensor:
    name: str
    height: int  # spatial sizes: the explicit ONNX pads depend on them
    width: int


def _window(
    x: _OnnxTensor, window: tuple[int, int], stride: int, padding: str
) -> tuple[list[int], int, int]:
    """ONNX pads [top, left, bottom, right] and output size of a TF-padded window op.

    TF's SAME gives ceil(size / stride) outputs and puts the odd pixel of padding at the end.
    """
    pads, out = [], []
    for size, kernel in zip((x.height, x.width), window, strict=True):
        if padding == "SAME":
            out.append(-(-size // stride))
            total = max((out[-1] - 1) * stride + kernel - size, 0)
            pads.append((total // 2, total - total // 2))
        else:
            out.append((size - kernel) // stride + 1)
            pads.append((0, 0))
    (top, bottom), (left, right) = pads
    return [top, left, bottom, right], out[0], out[1]


class _OnnxBuilder:
    """Appends NCHW float32 nodes and initializers; names are the slim scope names."""

    def __init__(self):
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def constant(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], hint: str, **attributes) -> str:
        from onnx import helper

        self._count += 1
        out = f"{hint}:{self._count}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attributes))
        return out

    def conv(self, x: _OnnxTensor, step: FoldedConv) -> _OnnxTensor:
        window = step.kernel.shape[:2]
        pads, height, width = _window(x, window, step.stride, step.padding)
        weights = self.constant(f"{step.name}/kernel", step.kernel.transpose(3, 2, 0, 1))
        bias = self.constant(f"{step.name}/bias", step.bias)
        y = self.node(
            "Conv", [x.name, weights, bias], step.name,
            kernel_shape=list(window), strides=[step.stride] * 2, pads=pads,
        )  # fmt: skip
        return _OnnxTensor(self.node("Relu", [y], step.name), height, width)

    def pool(self, x: _OnnxTensor, step: inception.Pool) -> _OnnxTensor:
        window = (step.window, step.window)
        pads, height, width = _window(x, window, step.stride, step.padding)
        attributes = {"kernel_shape": list(window), "strides": [step.stride] * 2, "pads": pads}
        if step.kind == "max":  # ONNX MaxPool pads with -inf, as TF does
            y = self.node("MaxPool", [x.name], step.name, **attributes)
        else:  # TF's avg_pool averages the real pixels only
            y = self.node("AveragePool", [x.name], step.name, count_include_pad=0, **attributes)
        return _OnnxTensor(y, height, width)

    def concat(self, xs: list[_OnnxTensor]) -> _OnnxTensor:
        y = self.node("Concat", [x.name for x in xs], "Concat", axis=1)
        return _OnnxTensor(y, xs[0].height, xs[0].width)


def onnx_model(network: Network, metadata: dict[str, Any]):
    """The network as an onnx.ModelProto: uint8 NHWC "images" -> "scores", batch dim free."""
    import onnx
    from onnx import TensorProto, helper

    size = metadata["image_size"]
    b = _OnnxBuilder()
    uint8_input = _input_dtype(metadata) == np.uint8
    if uint8_input:
        x = b.node("Cast", ["images"], "Preprocess", to=TensorProto.FLOAT)
        x = b.node("Div", [x, b.constant("c255", np.float32(255.0))], "Preprocess")
    else:
        x = "images"
    x = b.node("Mul", [x, b.constant("c2", np.float32(2.0))], "Preprocess")
    x = b.node("Sub", [x, b.constant("c1", np.float32(1.0))], "Preprocess")
    x = b.node("Transpose", [x], "Preprocess", perm=[0, 3, 1, 2])
    x = _apply(network.steps, _OnnxTensor(x, size, size), b)
    x = b.node("GlobalAveragePool", [x.name], "Logits")
    logits_kernel = network.logits_kernel.T[:, :, None, None]
    x = b.node(
        "Conv",
        [
            x,
            b.constant("Logits/kernel", logits_kernel),
            b.constant("Logits/bias", network.logits_bias),
        ],
        "Logits",
        kernel_shape=[1, 1],
    )
    x = b.node("Flatten", [x], "Logits", axis=1)
    b.nodes.append(helper.make_node("Softmax", [x], ["scores"], name="scores", axis=-1))
    graph = helper.make_graph(
        b.nodes,
        "marco",
        [
            helper.make_tensor_value_info(
                "images",
                TensorProto.UINT8 if uint8_input else TensorProto.FLOAT,
                ["batch", size, size, 3],
            )
        ],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", len(CLASS_NAMES)])],
        b.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="marco_jax"
    )
    helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata)})
    onnx.checker.check_model(model, full_check=True)
    return model


def _save_onnx(network: Network, metadata: dict[str, Any], path: pathlib.Path) -> None:
    import onnx

    onnx.save_model(onnx_model(network, metadata), str(path))
