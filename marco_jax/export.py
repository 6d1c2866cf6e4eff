"""Exports a trained MARCO network as a TensorFlow SavedModel, a TFLite file or an ONNX file.

  python -m marco_jax.export --workdir DIR --format saved_model|tflite|onnx [--out DIR]
      [--checkpoint best|latest|STEP] [--raw_weights]

Why exports exist: on a CPU, XLA's convolutions run several times slower than oneDNN's (TF),
XNNPACK's (TFLite) or MLAS's (ONNX Runtime), and lab workstations have no GPU;
`bench/inference.py` measures the gap. `classify --model` runs any of the three through
`load_exported`.

How: the network is rebuilt in each target from the layer tables that define it (`inception.STEM`,
`inception.MIXED_BLOCKS`, through the model's own `stem`, branches and forks), with every BatchNorm
folded into its convolution (inference only: w * rsqrt(var + eps), beta - mean * rsqrt(var + eps)).
`jax2tf` was the alternative and is not used: in this JAX version it only does native
serialization, i.e. one `XlaCallModule` op that TensorFlow hands back to XLA (no oneDNN kernels, so
no speed-up) and that the TFLite converter and ONNX cannot convert at all. The rebuilt graphs match
the JAX model's probabilities to float32 round-off (the tests hold them to 1e-4 max abs); the
things that make that true are spelled out where they are built: TF-style SAME padding (extra
padding at the end), average pools that exclude padding (TF's `avg_pool`, ONNX's
`count_include_pad=0`), max pools that pad with -inf, uint8 -> float as x / 255 * 2 - 1 like
`augment.to_model_input`. Exports always compute in float32, whatever `config.model.compute_dtype`
the JAX model used.

Formats (all take RGB images [batch, S, S, 3] already at the model's size S, as
`preprocess.Preprocessing.eval_transform` makes them: float32 in [0, 1] for the release's
"tf1_bilinear" preprocessing, uint8 for "pil_antialias"; batch size free; they return the
probabilities of `labels.CLASS_NAMES` as "scores"):
- SavedModel (a directory): signature `images` as above (with `classes`, our class names), and
  `serving_default`, a drop-in for the release's: `image_bytes` (a batch of encoded JPEG/PNG/BMP/
  GIF strings) in, the preprocessing in the graph, and `classes` and `scores` [N, 4] sorted best
  first with the release's class names (`release.RELEASE_CLASS_NAMES`), as the release's graph
  returns them (TopKV2 over the softmax). A client written for the release runs it unchanged.
- TFLite (one file, float32 weights), from the concrete function of the `images` signature.
- ONNX (one file, opset `ONNX_OPSET`), built node by node with `onnx.helper` (tf2onnx does not
  support this TensorFlow/numpy); NCHW inside, NHWC at the input.
Each export records its preprocessing (`image_size`, `central_fraction`, `resize_method`,
`jpeg_dct`) and `class_names` (SavedModel: `assets.extra/marco_export.json`; ONNX: metadata
property "marco"; TFLite: flatbuffer metadata "marco"), so that `classify --model` preprocesses
exactly as the model was trained.

For the release's preprocessing, `serving_default` runs the release graph's own ops
(`tf1_release_preprocess`). For Pillow's, it reproduces Pillow's antialiased bilinear resize with a
box (what `preprocess` uses) operation by operation: float32 box, Pillow's filter coefficients in
float64, its 22-bit fixed-point weights, its order of the two passes (which Pillow 13 made depend on
the shape, see `_pillow_orders_passes`) and the uint8 rounding between them; JPEG is decoded with
libjpeg's accurate integer DCT, as Pillow does. The crops are then the same bytes as on the JAX side
(tested). Differences left, by design of TensorFlow's decoders: the EXIF orientation is not applied
(drops have no preferred orientation, so only the position of the centre crop on non-square rotated
photos changes); transparency is dropped instead of composited onto white; 16-bit PNGs keep their
high byte (as `image_io` does); TIFF is
not decoded (use the `images` signature with `image_io.load_image`, as `classify` does).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import ml_collections
import numpy as np

from marco_jax.data import preprocess
from marco_jax.labels import CLASS_NAMES
from marco_jax.model import inception
from marco_jax.model.release import RELEASE_CLASS_NAMES, RELEASE_INDEX_OF_OURS

FORMATS = ("saved_model", "tflite", "onnx")
ONNX_OPSET = 17  # Softmax on the last axis and everything used here; widely supported runtimes.
METADATA_KEY = "marco"
SAVED_MODEL_METADATA = "assets.extra/marco_export.json"
_OUTPUT_NAMES = {"saved_model": "saved_model", "tflite": "marco.tflite", "onnx": "marco.onnx"}

# ----------------------------------------------------------------------------- the folded network


@dataclasses.dataclass(frozen=True)
class FoldedConv:
    """A ConvBN with its BatchNorm folded in: relu(conv(x, kernel) + bias). Kernel is HWIO."""

    name: str
    kernel: np.ndarray
    bias: np.ndarray
    stride: int
    padding: str


@dataclasses.dataclass(frozen=True)
class Concat:
    """Branches applied to the same input, concatenated along channels (Mixed blocks, forks)."""

    branches: tuple[tuple[Step, ...], ...]


Step = FoldedConv | inception.Pool | Concat


@dataclasses.dataclass(frozen=True)
class Network:
    """The inference network: steps, then global mean, logits (kernel [C, classes]), softmax."""

    steps: tuple[Step, ...]
    logits_kernel: np.ndarray
    logits_bias: np.ndarray


def fold_batch_norm(name: str, layer: inception.ConvBN) -> FoldedConv:
    """BatchNorm with running statistics is affine, so it merges into the convolution."""
    bn = layer.bn
    inv_std = 1.0 / np.sqrt(np.asarray(bn.var[...], np.float64) + bn.epsilon)
    kernel = np.asarray(layer.conv.kernel[...], np.float64) * inv_std
    bias = np.asarray(bn.bias[...], np.float64) - np.asarray(bn.mean[...], np.float64) * inv_std
    spec = layer.spec
    return FoldedConv(
        name, kernel.astype(np.float32), bias.astype(np.float32), spec.stride, spec.padding
    )


def _chain_steps(owner: Any, layers: Sequence[inception.Layer], prefix: str) -> tuple[Step, ...]:
    def conv(spec: inception.Conv) -> FoldedConv:
        return fold_batch_norm(prefix + spec.name, getattr(owner, spec.name))

    steps: list[Step] = []
    for layer in layers:
        if isinstance(layer, inception.Conv):
            steps.append(conv(layer))
        elif isinstance(layer, inception.Fork):
            steps.append(Concat(tuple((conv(c),) for c in layer.convs)))
        else:
            steps.append(layer)
    return tuple(steps)


def network_of(model: inception.InceptionV3) -> Network:
    """The eval-mode computation of `model` (no dropout, no auxiliary head) as folded steps."""
    steps = list(_chain_steps(model, model.stem, ""))
    for name, _ in inception.MIXED_BLOCKS:
        block = getattr(model, name)
        chains = {b: getattr(block, b) for b in block.branch_names}
        steps.append(
            Concat(tuple(_chain_steps(c, c.layers, f"{name}/{b}/") for b, c in chains.items()))
        )
    kernel = np.asarray(model.Logits.kernel[...], np.float32)[0, 0]
    return Network(tuple(steps), kernel, np.asarray(model.Logits.bias[...], np.float32))


class _Builder(Protocol):
    def conv(self, x: Any, step: FoldedConv) -> Any: ...
    def pool(self, x: Any, step: inception.Pool) -> Any: ...
    def concat(self, xs: list[Any]) -> Any: ...


def _apply(steps: Sequence[Step], x: Any, builder: _Builder) -> Any:
    """Walks the steps with one target's ops; every format shares this walk."""
    for step in steps:
        if isinstance(step, FoldedConv):
            x = builder.conv(x, step)
        elif isinstance(step, inception.Pool):
            x = builder.pool(x, step)
        else:
            x = builder.concat([_apply(branch, x, builder) for branch in step.branches])
    return x


def _all_convs(steps: Sequence[Step]) -> list[FoldedConv]:
    found: list[FoldedConv] = []
    for step in steps:
        if isinstance(step, FoldedConv):
            found.append(step)
        elif isinstance(step, Concat):
            for branch in step.branches:
                found.extend(_all_convs(branch))
    return found


def _metadata(config: ml_collections.ConfigDict) -> dict[str, Any]:
    if config.model.num_classes != len(CLASS_NAMES):
        raise ValueError(
            f"config.model.num_classes is {config.model.num_classes}, but an export names its "
            f"outputs with labels.CLASS_NAMES ({len(CLASS_NAMES)} classes): export a MARCO "
            "classifier."
        )
    return {
        **preprocess.Preprocessing.from_config(config).to_metadata(),
        "class_names": list(CLASS_NAMES),
    }


def _input_dtype(metadata: dict[str, Any]) -> np.dtype:
    """uint8 images for Pillow's preprocessing, float32 in [0, 1] for the release's."""
    return preprocess.Preprocessing.from_metadata(metadata).input_dtype


# ----------------------------------------------------------------------------- TensorFlow


def _tf():
    """TensorFlow is imported on first use: JAX-only users of this package never pay for it."""
    import tensorflow as tf

    return tf


_PIL_PRECISION_BITS = 22  # Pillow's Resample.c: 32 - 8 - 2 bits for 8-bit images


def _pil_resample_axis(image, axis: int, in0, in1, out_size: int):
    """Pillow's 8-bit antialiased bilinear resampling of [in0, in1) along one axis (Resample.c:
    precompute_coeffs + normalize_coeffs_8bpc + ImagingResample{Horizontal,Vertical}_8bpc).

    image: int32 [H, W, 3] with values 0..255; in0, in1: float32 scalars (Pillow reads the box as
    C floats). Returns int32 with values 0..255, rounded as Pillow rounds.
    """
    tf = _tf()
    f64 = tf.float64
    in_size = tf.shape(image)[axis]
    scale = tf.cast(in1 - in0, f64) / out_size  # float subtraction, then double, as in C
    filterscale = tf.maximum(scale, 1.0)
    support = filterscale  # the bilinear filter's support is 1
    ksize = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1
    center = tf.cast(in0, f64) + (tf.range(out_size, dtype=f64) + 0.5) * scale
    # C's (int) truncates toward zero, as tf.cast does.
    xmin = tf.maximum(tf.cast(center - support + 0.5, tf.int32), 0)
    count = tf.minimum(tf.cast(center + support + 0.5, tf.int32), in_size) - xmin
    taps = tf.range(ksize)[None, :]
    position = tf.cast(taps + xmin[:, None], f64) - center[:, None] + 0.5
    weights = tf.maximum(1.0 - tf.abs(position * (1.0 / filterscale)), 0.0)
    weights = tf.where(taps < count[:, None], weights, 0.0)
    # Summed tap by tap, in Pillow's order, so the normalised weights match to the last bit.
    total = tf.foldl(lambda acc, w: acc + w, tf.transpose(weights), tf.zeros([out_size], f64))
    weights = tf.where(total[:, None] != 0.0, weights / total[:, None], weights)
    fixed = tf.cast(0.5 + weights * (1 << _PIL_PRECISION_BITS), tf.int32)
    index = tf.minimum(xmin[:, None] + taps, in_size - 1)  # taps past the edge weigh 0
    shape = [-1, 1, 1] if axis == 0 else [1, -1, 1]

    def add_tap(acc, k):
        gathered = tf.gather(image, index[:, k], axis=axis)
        return acc + gathered * tf.reshape(fixed[:, k], shape)

    dims = tf.unstack(tf.shape(image))
    dims[axis] = out_size
    half = tf.fill(tf.stack(dims), 1 << (_PIL_PRECISION_BITS - 1))  # rounds half up
    acc = tf.foldl(add_tap, tf.range(ksize), half)
    return tf.clip_by_value(tf.bitwise.right_shift(acc, _PIL_PRECISION_BITS), 0, 255)


def tf_center_crop_and_resize(image, size: int, central_fraction: float):
    """`preprocess.center_crop_and_resize` as TensorFlow ops: uint8 [H, W, 3] -> [size, size, 3].

    Same float64 geometry as the numpy code, the same reflection padding where the square leaves
    the image (central_fraction > 1), then Pillow's resampling of the box (`_pil_resample_axis`).
    """
    tf = _tf()
    f64 = tf.float64
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], f64), tf.cast(shape[1], f64)
    scale = size / (central_fraction * tf.minimum(height, width))  # preprocess.eval_scale
    side = size / scale
    top, left = (height - side) / 2, (width - side) / 2

    def outside(extent):  # pixels of the square beyond one edge, as math.ceil, at least 0
        return tf.maximum(0, tf.cast(tf.math.ceil(extent), tf.int32))

    pad_top, pad_bottom = outside(-top), outside(top + side - height)
    pad_left, pad_right = outside(-left), outside(left + side - width)
    image = tf.pad(image, [[pad_top, pad_bottom], [pad_left, pad_right], [0, 0]], mode="REFLECT")
    top, left = top + tf.cast(pad_top, f64), left + tf.cast(pad_left, f64)
    f32 = tf.float32
    pixels = tf.cast(image, tf.int32)
    # Pillow reads the box as C floats.
    rows = (tf.cast(top, f32), tf.cast(top + side, f32))
    columns = (tf.cast(left, f32), tf.cast(left + side, f32))

    def horizontal_first():
        wide = _pil_resample_axis(pixels, 1, *columns, size)
        return _pil_resample_axis(wide, 0, *rows, size)

    def vertical_first():
        tall = _pil_resample_axis(pixels, 0, *rows, size)
        return _pil_resample_axis(tall, 1, *columns, size)

    if _pillow_orders_passes():
        padded = tf.shape(pixels)
        is_tall = padded[0] - size > 2 * tf.maximum(padded[1] - size, 0)
        pixels = tf.cond(is_tall, vertical_first, horizontal_first)
    else:
        pixels = horizontal_first()
    return tf.cast(pixels, tf.uint8)


def _pillow_orders_passes() -> bool:
    """Pillow 13 resamples some tall images vertically first (<= 12: always horizontally first).

    The order changes the uint8 rounding between the passes. The rule used above, vertical first
    iff height - size > 2 * max(width - size, 0), was measured on Pillow 13.0 (600 random shapes,
    no exception); the tests check it against the installed Pillow. The exporting environment's
    Pillow is the one the model was trained with, so the graph follows it.
    """
    import PIL

    return int(PIL.__version__.split(".")[0]) >= 13


def tf_decode_image(data):
    """Encoded JPEG/PNG/BMP/GIF bytes -> uint8 RGB [H, W, 3], pixel for pixel as Pillow decodes.

    JPEG goes through decode_jpeg with the accurate integer DCT: decode_image's default (the fast
    DCT) differs from Pillow by a few grey levels.
    """
    tf = _tf()
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )
    return tf.ensure_shape(image, [None, None, 3])


class _TFBuilder:
    """tf.nn ops on NHWC float32, reading the folded weights from the module's variables."""

    def __init__(self, weights: dict):
        self.weights = weights

    def conv(self, x, step: FoldedConv):
        tf = _tf()
        kernel, bias = self.weights[_variable_key(step.name)]
        return tf.nn.relu(tf.nn.conv2d(x, kernel, step.stride, step.padding) + bias)

    def pool(self, x, step: inception.Pool):
        tf = _tf()
        op = tf.nn.max_pool2d if step.kind == "max" else tf.nn.avg_pool2d  # avg excludes padding
        return op(x, step.window, step.stride, step.padding)

    def concat(self, xs):
        return _tf().concat(xs, axis=-1)


def _variable_key(name: str) -> str:
    return name.replace("/", ".")  # checkpoint keys of tracked dicts must not contain "/"


def _images_spec(metadata: dict[str, Any]):
    tf = _tf()
    size = metadata["image_size"]
    return tf.TensorSpec([None, size, size, 3], tf.as_dtype(_input_dtype(metadata)), "images")


def tf1_release_preprocess(data, size: int, central_fraction: float):
    """The release graph's own preprocessing of one encoded image: float32 [size, size, 3].

    Graph: DecodeJpeg (channels 3, dct_method "", fancy upscaling) -> convert_image_dtype ->
    resize_image_with_crop_or_pad to the central min(height, width) square -> ResizeBilinear
    (align_corners False, legacy pixel centres). Non-JPEG files, which the release refuses, are
    decoded with decode_image. `preprocess.tf1_center_crop_and_resize` is the numpy twin.
    """
    tf = _tf()
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )
    image = tf.image.convert_image_dtype(tf.ensure_shape(image, [None, None, 3]), tf.float32)
    shape = tf.shape(image)
    side = tf.cast(tf.cast(tf.minimum(shape[0], shape[1]), tf.float32) * central_fraction, tf.int32)
    side = tf.maximum(side, 1)
    top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
    square = image[top : top + side, left : left + side]
    resized = tf.raw_ops.ResizeBilinear(
        images=square[None], size=[size, size], align_corners=False, half_pixel_centers=False
    )
    return resized[0]


def _make_tf_module(network: Network, metadata: dict[str, Any]):
    tf = _tf()
    size = metadata["image_size"]
    dtype = _input_dtype(metadata)

    class MarcoModule(tf.Module):
        """The network with its weights as variables, and the two serving signatures."""

        def __init__(self):
            super().__init__(name="marco")
            self.weights = {
                _variable_key(c.name): (
                    tf.Variable(c.kernel, trainable=False, name=f"{c.name}/kernel"),
                    tf.Variable(c.bias, trainable=False, name=f"{c.name}/bias"),
                )
                for c in _all_convs(network.steps)
            }
            self.logits_kernel = tf.Variable(network.logits_kernel, trainable=False)
            self.logits_bias = tf.Variable(network.logits_bias, trainable=False)
            self.class_names = tf.constant(metadata["class_names"])
            # Our classes under the release's names, for the drop-in `serving_default`.
            self.release_names = tf.constant(
                [RELEASE_CLASS_NAMES[i] for i in RELEASE_INDEX_OF_OURS]
            )

        def probabilities(self, images):
            x = tf.cast(images, tf.float32)
            if images.dtype == tf.uint8:  # augment.to_model_input
                x = x / 255.0
            x = x * 2.0 - 1.0
            x = _apply(network.steps, x, _TFBuilder(self.weights))
            x = tf.reduce_mean(x, axis=[1, 2])
            return tf.nn.softmax(tf.matmul(x, self.logits_kernel) + self.logits_bias)

        def _outputs(self, images):
            scores = self.probabilities(images)
            classes = tf.tile(self.class_names[None], [tf.shape(scores)[0], 1])
            return {"scores": scores, "classes": classes}

        @tf.function(input_signature=[_images_spec(metadata)], autograph=False)
        def serve_images(self, images):
            return self._outputs(images)

        @tf.function(
            input_signature=[tf.TensorSpec([None], tf.string, "image_bytes")], autograph=False
        )
        def serve_bytes(self, image_bytes):
            """The release's contract: `classes` and `scores` [N, 4], sorted best first, with
            the release's class names (graph: TopKV2 over the softmax, `index_to_string`)."""
            fraction = metadata["central_fraction"]

            def preprocess_one(data):
                if metadata.get("resize_method") == "tf1_bilinear":
                    return tf1_release_preprocess(data, size, fraction)
                return tf_center_crop_and_resize(tf_decode_image(data), size, fraction)

            images = tf.map_fn(
                preprocess_one,
                image_bytes,
                fn_output_signature=tf.TensorSpec([size, size, 3], tf.as_dtype(dtype)),
            )
            scores = self.serve_images(images)["scores"]  # a call: the network is saved once
            top = tf.math.top_k(scores, k=len(CLASS_NAMES))
            return {
                "classes": tf.gather(self.release_names, top.indices),
                "scores": top.values,
            }

    return MarcoModule()


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


# ----------------------------------------------------------------------------- TFLite


def _tflite_with_metadata(flatbuffer: bytes, metadata: dict[str, Any]) -> bytes:
    """Adds a named metadata buffer, the way TF's converter adds its own conversion metadata."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(flatbuffer, 0))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    builder = flatbuffers.Builder(len(flatbuffer) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _tflite_metadata(flatbuffer: bytes) -> dict[str, Any] | None:
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(flatbuffer, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == METADATA_KEY:
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return None


def _save_tflite(network: Network, metadata: dict[str, Any], path: pathlib.Path) -> None:
    tf = _tf()
    module = _make_tf_module(network, metadata)
    # TFLite has no use for the class-name strings.
    scores = tf.function(
        lambda images: {"scores": module.probabilities(images)},
        input_signature=[_images_spec(metadata)],
        autograph=False,
    )
    function = scores.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
    path.write_bytes(_tflite_with_metadata(converter.convert(), metadata))


# ----------------------------------------------------------------------------- ONNX


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


# ----------------------------------------------------------------------------- public API

_SAVERS = {"saved_model": _save_saved_model, "tflite": _save_tflite, "onnx": _save_onnx}


def export_model(
    model: inception.InceptionV3,
    config: ml_collections.ConfigDict,
    out_dir: str | os.PathLike,
    fmt: str,
    provenance: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """Writes `model` (the weights it holds now, evaluated as in eval mode) in format `fmt`.

    provenance: recorded with the metadata (e.g. the checkpoint step), for whoever finds the file.
    Returns the written path: `out_dir`/saved_model (a directory), marco.tflite or marco.onnx.
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}; use one of {FORMATS}.")
    metadata = {**_metadata(config), "provenance": dict(provenance or {})}
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / _OUTPUT_NAMES[fmt]
    _SAVERS[fmt](network_of(model), metadata, path)
    return path


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    """An exported model ready to score: call it with [N, S, S, 3] images as its
    `preprocessing.eval_transform` makes them (uint8, or float32 in [0, 1]); get [N, classes]."""

    path: str
    format: str
    preprocessing: preprocess.Preprocessing
    class_names: tuple[str, ...]
    provenance: dict[str, Any]  # where the weights came from (workdir, step, ema/raw), if known
    predict: Callable[[np.ndarray], np.ndarray]

    @property
    def image_size(self) -> int:
        return self.preprocessing.image_size

    @property
    def central_fraction(self) -> float:
        return self.preprocessing.central_fraction

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        size, dtype = self.image_size, self.preprocessing.input_dtype
        if images.dtype != dtype or images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(
                f"{self.path} takes {dtype} images [batch, {size}, {size}, 3], got "
                f"{images.dtype} {images.shape}; make them with its "
                "preprocessing.eval_transform first."
            )
        return self.predict(np.ascontiguousarray(images))


def format_of(path: str | os.PathLike) -> str:
    """Which export a path holds: a SavedModel directory, a .tflite or an .onnx file."""
    path = pathlib.Path(path)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return "saved_model"
    if path.is_file() and path.suffix.lower() == ".tflite":
        return "tflite"
    if path.is_file() and path.suffix.lower() == ".onnx":
        return "onnx"
    raise ValueError(
        f"{path} is not an exported model: expected a SavedModel directory (with "
        "saved_model.pb), a .tflite file or an .onnx file written by marco_jax.export."
    )


# Each loader returns (the recorded metadata or None, predict).


def _load_saved_model(path: pathlib.Path, num_threads: int):
    """num_threads is not applied: TF's thread pools are per process and fixed at its start."""
    tf = _tf()
    del num_threads
    signature = tf.saved_model.load(str(path)).signatures["images"]
    recorded = path / SAVED_MODEL_METADATA
    metadata = json.loads(recorded.read_text()) if recorded.is_file() else None
    return metadata, lambda images: signature(images=tf.constant(images))["scores"].numpy()


def _load_tflite(path: pathlib.Path, num_threads: int):
    tf = _tf()
    flatbuffer = path.read_bytes()
    with warnings.catch_warnings():
        # TF 2.21 still ships this interpreter; its successor (ai_edge_litert) is not a
        # dependency, so the deprecation notice would only alarm lab users.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        interpreter = tf.lite.Interpreter(model_content=flatbuffer, num_threads=num_threads)
    (input_detail,) = interpreter.get_input_details()
    (output_detail,) = interpreter.get_output_details()
    allocated_shape = None

    def predict(images: np.ndarray) -> np.ndarray:
        nonlocal allocated_shape
        if images.shape != allocated_shape:  # the batch size is set at allocation
            interpreter.resize_tensor_input(input_detail["index"], images.shape, strict=True)
            interpreter.allocate_tensors()
            allocated_shape = images.shape
        interpreter.set_tensor(input_detail["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(output_detail["index"]).copy()

    return _tflite_metadata(flatbuffer), predict


def _load_onnx(path: pathlib.Path, num_threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = num_threads
    try:
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # ONNX Runtime's errors derive from Exception only
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"{path} is not a readable ONNX model (ONNX Runtime: {reason}); the file is damaged "
            "or not an ONNX model: export the checkpoint again with marco_jax.export."
        ) from None
    recorded = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    metadata = json.loads(recorded) if recorded else None
    return metadata, lambda images: session.run(["scores"], {"images": images})[0]


_LOADERS = {"saved_model": _load_saved_model, "tflite": _load_tflite, "onnx": _load_onnx}


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):  # honours taskset / container CPU sets (Linux)
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_exported(path: str | os.PathLike, num_threads: int | None = None) -> ExportedModel:
    """Opens any export for scoring; the format is read from the path (see `format_of`).

    num_threads: CPU threads for TFLite and ONNX Runtime (default: every usable core; TFLite's
    own default is one). A SavedModel runs on TensorFlow's process-wide thread pools.
    The returned model is not thread-safe (a TFLite interpreter holds its tensors): call it
    from one thread.
    """
    fmt = format_of(path)
    metadata, predict = _LOADERS[fmt](pathlib.Path(path), num_threads or _usable_cores())
    no_metadata = (
        f"{path} holds no marco_jax metadata (image size, central fraction, class names): "
        "it was not written by marco_jax.export; export the checkpoint with it."
    )
    if not isinstance(metadata, dict):
        raise ValueError(no_metadata)
    try:
        return ExportedModel(
            path=str(path),
            format=fmt,
            preprocessing=preprocess.Preprocessing.from_metadata(metadata),
            class_names=tuple(metadata["class_names"]),
            provenance=metadata.get("provenance", {}),
            predict=predict,
        )
    except (KeyError, TypeError) as e:  # metadata without a field, or of the wrong kind
        raise ValueError(f"{no_metadata} (missing or malformed: {e})") from None


# ----------------------------------------------------------------------------- command line


def export_from_workdir(
    workdir: str,
    fmt: str,
    out: str | None = None,
    checkpoint: str = "best",
    raw_weights: bool = False,
) -> pathlib.Path:
    """Exports a training run's checkpoint (its EMA weights unless raw_weights) to `out`
    (default WORKDIR/export). checkpoint: "best", "latest" or a step number."""
    from marco_jax import cli
    from marco_jax.training import checkpoints

    config, model, step = checkpoints.load_for_inference(
        workdir, checkpoint=cli.parse_checkpoint(checkpoint), use_ema=not raw_weights
    )
    provenance = {"workdir": str(workdir), "step": step, "weights": "raw" if raw_weights else "ema"}
    return export_model(model, config, out or os.path.join(workdir, "export"), fmt, provenance)


def run() -> None:
    """Entry point; the flags are defined here so that importing this module defines none."""
    from absl import flags, logging

    from marco_jax import cli

    workdir = flags.DEFINE_string("workdir", None, "Training workdir holding the checkpoints.")
    fmt = flags.DEFINE_enum("format", None, FORMATS, "Export format.")
    out = flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/export).")
    checkpoint = flags.DEFINE_string("checkpoint", "best", "best, latest or a step number.")
    raw_weights = flags.DEFINE_bool("raw_weights", False, "Export the raw weights, not the EMA.")
    flags.mark_flags_as_required(["workdir", "format"])

    def main(argv: Sequence[str]) -> None:
        del argv
        logging.set_verbosity(logging.WARNING)  # TF's SavedModel writer logs every step at INFO
        try:
            path = export_from_workdir(
                workdir.value, fmt.value, out.value, checkpoint.value, raw_weights.value
            )
        except (FileNotFoundError, ValueError) as e:  # no such workdir, checkpoint or step
            # (cli.ArgumentError is a ValueError)
            cli.fail(str(e))
        print(json.dumps({"format": fmt.value, "path": str(path)}))

    cli.run(main)


if __name__ == "__main__":
    run()
