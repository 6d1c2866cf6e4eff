"""The TensorFlow pieces shared by the SavedModel and TFLite exports: the network as `tf.nn` ops
(`_make_tf_module`, with the two serving signatures) and the preprocessing of encoded images in
the graph, for the SavedModel's drop-in `serving_default` signature.

For the release's preprocessing, `serving_default` runs the release graph's own ops
(`tf1_release_preprocess`). For Pillow's, it reproduces Pillow's antialiased bilinear resize with a
box (what `preprocess` uses) operation by operation: float32 box, Pillow's filter coefficients in
float64, its 22-bit fixed-point weights, its order of the two passes (which Pillow 13 made depend on
the shape, see `_pillow_orders_passes`) and the uint8 rounding between them; JPEG is decoded with
libjpeg's accurate integer DCT, as Pillow does. The crops are then the same bytes as on the JAX side
(tested). Differences left, by design of TensorFlow's decoders: the EXIF orientation is not applied
(drops have no preferred orientation, so only the position of the centre crop on non-square rotated
photos changes); transparency is dropped instead of composited onto white; 16-bit PNGs keep their
high byte (as `image_io` does); TIFF is not decoded (use the `images` signature with
`image_io.load_image`, as `classify` does).
"""

from __future__ import annotations

from typing import Any

from marco_jax.labels import CLASS_NAMES
from marco_jax.model import inception
from marco_jax.model.release import RELEASE_CLASS_NAMES, RELEASE_INDEX_OF_OURS
from marco_jax.serving.export.fold import FoldedConv, Network, _all_convs, _apply
from marco_jax.serving.export.metadata import _input_dtype


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
            if images.dtype == tf.uint8:  # predict.to_model_input
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
