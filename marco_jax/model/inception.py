"""Inception-v3 and its MARCO variant in Flax NNX.

The layer tables below follow TF-slim's `inception_v3` (the paper's "reference implementation",
section 3) block by block, with its scope names (`Conv2d_1a_3x3`, `Mixed_6b/Branch_1/Conv2d_0b_1x7`,
`Logits/Conv2d_1c_1x1`), so that TF-slim or Keras weights map onto this model by name or by
creation order (`iter_conv_layers`). The MARCO variant (paper section 3, "Model Architecture")
adds a 3x3 stride-2 convolution of depth 16 in front of `Conv2d_1a_3x3` (599 px -> 299 px) and
caps the depth of every convolution inside the layers of Table 3; both come from `config.model`.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen, nnx

MODEL_NAMES = ("marco_inception_v3", "inception_v3")

# TF-slim's inception_v3 needs 75 px at Conv2d_1a_3x3, i.e. a 7x7 map at Mixed_5b, so that
# Mixed_7a still sees a 3x3 window.
MIN_SIZE_AT_MIXED_5B = 7


@dataclasses.dataclass(frozen=True)
class Conv:
    """A TF-slim conv2d: convolution without bias, BatchNorm without scale, ReLU."""

    name: str
    depth: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: str = "SAME"


@dataclasses.dataclass(frozen=True)
class Pool:
    name: str
    kind: str  # "max" or "avg"
    window: int = 3
    stride: int = 1
    padding: str = "SAME"


@dataclasses.dataclass(frozen=True)
class Fork:
    """Parallel convolutions on the same input whose outputs are concatenated (Mixed_7b/7c)."""

    convs: tuple[Conv, ...]


Layer = Conv | Pool | Fork
Branch = tuple[Layer, ...]


def _c(name: str, depth: int, kh: int, kw: int | None = None, stride: int = 1, padding="SAME"):
    return Conv(name, depth, (kh, kw or kh), stride, padding)


_AVG = Pool("AvgPool_0a_3x3", "avg")

# The stem of TF-slim's inception_v3_base, in order; its convs and pools are VALID unless noted.
STEM: tuple[Layer, ...] = (
    _c("Conv2d_1a_3x3", 32, 3, stride=2, padding="VALID"),
    _c("Conv2d_2a_3x3", 32, 3, padding="VALID"),
    _c("Conv2d_2b_3x3", 64, 3),
    Pool("MaxPool_3a_3x3", "max", 3, 2, "VALID"),
    _c("Conv2d_3b_1x1", 80, 1, padding="VALID"),
    _c("Conv2d_4a_3x3", 192, 3, padding="VALID"),
    Pool("MaxPool_5a_3x3", "max", 3, 2, "VALID"),
)


def _mixed_35(pool_depth: int, branch1_names: tuple[str, str]) -> tuple[Branch, ...]:
    return (
        (_c("Conv2d_0a_1x1", 64, 1),),
        (_c(branch1_names[0], 48, 1), _c(branch1_names[1], 64, 5)),
        (_c("Conv2d_0a_1x1", 64, 1), _c("Conv2d_0b_3x3", 96, 3), _c("Conv2d_0c_3x3", 96, 3)),
        (_AVG, _c("Conv2d_0b_1x1", pool_depth, 1)),
    )


def _mixed_17(width: int) -> tuple[Branch, ...]:
    return (
        (_c("Conv2d_0a_1x1", 192, 1),),
        (
            _c("Conv2d_0a_1x1", width, 1),
            _c("Conv2d_0b_1x7", width, 1, 7),
            _c("Conv2d_0c_7x1", 192, 7, 1),
        ),
        (
            _c("Conv2d_0a_1x1", width, 1),
            _c("Conv2d_0b_7x1", width, 7, 1),
            _c("Conv2d_0c_1x7", width, 1, 7),
            _c("Conv2d_0d_7x1", width, 7, 1),
            _c("Conv2d_0e_1x7", 192, 1, 7),
        ),
        (_AVG, _c("Conv2d_0b_1x1", 192, 1)),
    )


def _mixed_8(second_fork_name: str) -> tuple[Branch, ...]:
    return (
        (_c("Conv2d_0a_1x1", 320, 1),),
        (
            _c("Conv2d_0a_1x1", 384, 1),
            Fork((_c("Conv2d_0b_1x3", 384, 1, 3), _c(second_fork_name, 384, 3, 1))),
        ),
        (
            _c("Conv2d_0a_1x1", 448, 1),
            _c("Conv2d_0b_3x3", 384, 3),
            Fork((_c("Conv2d_0c_1x3", 384, 1, 3), _c("Conv2d_0d_3x1", 384, 3, 1))),
        ),
        (_AVG, _c("Conv2d_0b_1x1", 192, 1)),
    )


# The Mixed blocks of TF-slim's inception_v3_base, in order (branch and scope names included).
MIXED_BLOCKS: tuple[tuple[str, tuple[Branch, ...]], ...] = (
    ("Mixed_5b", _mixed_35(32, ("Conv2d_0a_1x1", "Conv2d_0b_5x5"))),
    ("Mixed_5c", _mixed_35(64, ("Conv2d_0b_1x1", "Conv_1_0c_5x5"))),
    ("Mixed_5d", _mixed_35(64, ("Conv2d_0a_1x1", "Conv2d_0b_5x5"))),
    (
        "Mixed_6a",
        (
            (_c("Conv2d_1a_1x1", 384, 3, stride=2, padding="VALID"),),
            (
                _c("Conv2d_0a_1x1", 64, 1),
                _c("Conv2d_0b_3x3", 96, 3),
                _c("Conv2d_1a_1x1", 96, 3, stride=2, padding="VALID"),
            ),
            (Pool("MaxPool_1a_3x3", "max", 3, 2, "VALID"),),
        ),
    ),
    ("Mixed_6b", _mixed_17(128)),
    ("Mixed_6c", _mixed_17(160)),
    ("Mixed_6d", _mixed_17(160)),
    ("Mixed_6e", _mixed_17(192)),
    (
        "Mixed_7a",
        (
            (_c("Conv2d_0a_1x1", 192, 1), _c("Conv2d_1a_3x3", 320, 3, stride=2, padding="VALID")),
            (
                _c("Conv2d_0a_1x1", 192, 1),
                _c("Conv2d_0b_1x7", 192, 1, 7),
                _c("Conv2d_0c_7x1", 192, 7, 1),
                _c("Conv2d_1a_3x3", 192, 3, stride=2, padding="VALID"),
            ),
            (Pool("MaxPool_1a_3x3", "max", 3, 2, "VALID"),),
        ),
    ),
    ("Mixed_7b", _mixed_8("Conv2d_0b_3x1")),
    ("Mixed_7c", _mixed_8("Conv2d_0c_3x1")),
)


_TRACED_HE_INIT = nnx.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


def he_truncated_normal(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """TF-slim's conv initializer (variance scaling 2.0, fan-in, truncated at 2 sigma).

    Drawn with numpy when called eagerly: `jax.random` would compile one small program per
    kernel shape, which made building the network take ~25 s on a 2-core CPU. Under tracing
    (`jit`, `eval_shape`) the JAX initializer is used, as it costs no compilation there.
    """
    if isinstance(key, jax.core.Tracer):
        return _TRACED_HE_INIT(key, shape, dtype)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    values = rng.standard_normal(shape)
    while (outside := np.abs(values) > 2.0).any():
        values[outside] = rng.standard_normal(int(outside.sum()))
    fan_in = int(np.prod(shape[:-1]))
    # 0.8796 is the standard deviation of a unit normal truncated to [-2, 2].
    return jnp.asarray(values * np.sqrt(2.0 / fan_in) / 0.87962566103423978, dtype)


DEPTH_TABLES = pathlib.Path(__file__).with_name("depth_tables")


def load_depth_table(name: str) -> dict[str, int]:
    """A per-layer depth table: `depth_tables/<name>.tsv` of this package, or a .tsv path.

    Rows are `scope<TAB>depth` with TF-slim scopes (`Mixed_6a/Branch_0/Conv2d_1a_1x1`); `#` lines
    are comments. `marco_release` is the released MARCO model's, read off its graph.
    """
    path = pathlib.Path(name) if name.endswith(".tsv") else DEPTH_TABLES / f"{name}.tsv"
    if not path.is_file():
        known = sorted(p.stem for p in DEPTH_TABLES.glob("*.tsv"))
        raise ValueError(
            f"config.model.depth_table={name!r}: no such table; use one of {known} or a .tsv path."
        )
    table = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip() or line.startswith("scope\t"):
            continue
        scope, depth = line.split("\t")
        table[scope] = int(depth)
    return table


@dataclasses.dataclass(frozen=True)
class DepthRule:
    """TF-slim's depth function over a nominal depth, from a per-layer table or Table 3's caps.

    A layer listed in `table` (by full scope) takes the table's depth; any other takes its
    nominal TF-slim depth, capped by `caps` (keyed by block or stem layer, paper Table 3). The
    multiplier applies last, so a tiny test model (depth_multiplier 0.1) keeps the proportions
    of the full one.
    """

    multiplier: float = 1.0
    min_depth: int = 16
    caps: Mapping[str, int] = dataclasses.field(default_factory=dict)
    table: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __call__(self, depth: int, scope: str) -> int:
        if scope in self.table:
            depth = self.table[scope]
        else:
            block = scope.split("/")[0]
            depth = min(depth, self.caps.get(block, depth))
        return max(int(depth * self.multiplier), self.min_depth)


class ConvBN(nnx.Module):
    """Conv (no bias) + BatchNorm (no scale, TF-slim's inception arg scope) + ReLU."""

    def __init__(
        self, in_features: int, spec: Conv, depth: int, bn: Mapping, dtype, rngs: nnx.Rngs
    ):
        self.spec = spec
        self.conv = nnx.Conv(
            in_features,
            depth,
            spec.kernel,
            strides=spec.stride,
            padding=spec.padding,
            use_bias=False,
            kernel_init=he_truncated_normal,
            dtype=dtype,
            param_dtype=jnp.float32,
            rngs=rngs,
        )
        # Two-pass variance unless asked: E[x^2] - E[x]^2 loses the variance of small, offset
        # activations (config.model.batch_norm_fast_variance, a speed candidate).
        bn = {"use_fast_variance": False, **bn}
        self.bn = nnx.BatchNorm(depth, use_scale=False, dtype=dtype, rngs=rngs, **bn)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x), use_running_average=not train))


def _output_size(size: int, layer: Layer) -> int:
    stride = layer.stride
    if layer.padding == "SAME":
        return -(-size // stride)
    window = layer.kernel[0] if isinstance(layer, Conv) else layer.window
    return (size - window) // stride + 1


def min_image_size(extra_stem_conv: bool) -> int:
    """Smallest input side the network accepts (75 px for Inception-v3, 151 with MARCO's stem)."""
    return 151 if extra_stem_conv else 75


def _pool(x: jax.Array, spec: Pool) -> jax.Array:
    window, strides = (spec.window, spec.window), (spec.stride, spec.stride)
    if spec.kind == "max":
        return linen.max_pool(x, window, strides, spec.padding)
    # TF's avg_pool averages over the valid (unpadded) positions only.
    return linen.avg_pool(x, window, strides, spec.padding, count_include_pad=False)


class Chain(nnx.Module):
    """Layers applied in order; forks concatenate their convs. Attributes carry the slim names."""

    def __init__(self, layers: Sequence[Layer], in_features: int, make_conv, scope: str):
        self.layers = tuple(layers)
        features = in_features
        for layer in self.layers:
            if isinstance(layer, Conv):
                setattr(self, layer.name, make_conv(features, layer, f"{scope}/{layer.name}"))
                features = getattr(self, layer.name).conv.out_features
            elif isinstance(layer, Fork):
                for conv in layer.convs:
                    setattr(self, conv.name, make_conv(features, conv, f"{scope}/{conv.name}"))
                features = sum(getattr(self, conv.name).conv.out_features for conv in layer.convs)
        self.out_features = features

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for layer in self.layers:
            if isinstance(layer, Conv):
                x = getattr(self, layer.name)(x, train)
            elif isinstance(layer, Fork):
                x = jnp.concatenate([getattr(self, c.name)(x, train) for c in layer.convs], axis=-1)
            else:
                x = _pool(x, layer)
        return x

    def conv_layers(self, prefix: str) -> Iterator[tuple[str, ConvBN]]:
        for layer in self.layers:
            for conv in layer.convs if isinstance(layer, Fork) else (layer,):
                if isinstance(conv, Conv):
                    yield f"{prefix}/{conv.name}", getattr(self, conv.name)


class Mixed(nnx.Module):
    """An Inception block: branches on the same input, concatenated along channels."""

    def __init__(self, branches: Sequence[Branch], in_features: int, make_conv, scope: str):
        self.branch_names = tuple(f"Branch_{i}" for i in range(len(branches)))
        for name, layers in zip(self.branch_names, branches, strict=True):
            setattr(self, name, Chain(layers, in_features, make_conv, f"{scope}/{name}"))
        self.out_features = sum(getattr(self, n).out_features for n in self.branch_names)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return jnp.concatenate([getattr(self, n)(x, train) for n in self.branch_names], axis=-1)

    def conv_layers(self, prefix: str) -> Iterator[tuple[str, ConvBN]]:
        for name in self.branch_names:
            yield from getattr(self, name).conv_layers(f"{prefix}/{name}")


class AuxLogits(nnx.Module):
    """TF-slim's auxiliary classifier on Mixed_6e (optional; the paper does not use one).

    Like slim, the 5x5 kernels shrink to the feature map when the input is small; that needs the
    map size at construction, which `create_model` derives from the configured image size.
    """

    def __init__(self, in_features: int, map_size: int, num_classes: int, make_conv, rngs):
        self.pool_window = min(5, map_size)
        pooled = (map_size - self.pool_window) // 3 + 1
        kernel = min(5, pooled)
        self.Conv2d_1b_1x1 = make_conv(
            in_features, _c("Conv2d_1b_1x1", 128, 1), "AuxLogits/Conv2d_1b_1x1"
        )
        name = f"Conv2d_2a_{kernel}x{kernel}"
        self.Conv2d_2a = make_conv(
            self.Conv2d_1b_1x1.conv.out_features,
            _c(name, 768, kernel, padding="VALID"),
            f"AuxLogits/{name}",
        )
        self.Conv2d_2b_1x1 = nnx.Conv(
            self.Conv2d_2a.conv.out_features,
            num_classes,
            (1, 1),
            kernel_init=nnx.initializers.truncated_normal(0.001),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        window = (self.pool_window, self.pool_window)
        x = linen.avg_pool(x, window, (3, 3), "VALID")
        x = self.Conv2d_2a(self.Conv2d_1b_1x1(x, train), train)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True)
        return self.Conv2d_2b_1x1(x)[:, 0, 0, :]


class InceptionV3(nnx.Module):
    """Inception-v3 (TF-slim structure); the MARCO variant when `stem_conv_depth` > 0.

    Call with float images in [-1, 1], NHWC; returns logits, or (logits, aux_logits) in training
    when the auxiliary head is enabled.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        image_size: int,
        stem_conv_depth: int = 0,
        depth_rule: DepthRule = DepthRule(),
        dropout_rate: float = 0.0,
        aux_logits: bool = False,
        batch_norm: Mapping | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        bn = dict(batch_norm or {"momentum": 0.9997, "epsilon": 1e-3})

        def make_conv(in_features: int, spec: Conv, scope: str):
            return ConvBN(in_features, spec, depth_rule(spec.depth, scope), bn, dtype, rngs)

        extra = (
            (_c("Conv2d_0a_3x3", stem_conv_depth, 3, stride=2, padding="VALID"),)
            if stem_conv_depth
            else ()
        )
        self.stem = extra + STEM
        features, size = 3, image_size
        for layer in self.stem:
            size = _output_size(size, layer)
            if isinstance(layer, Conv):
                setattr(self, layer.name, make_conv(features, layer, layer.name))
                features = getattr(self, layer.name).conv.out_features
        if size < MIN_SIZE_AT_MIXED_5B:
            raise ValueError(
                f"image_size {image_size} is too small for this network: it leaves a "
                f"{size}x{size} map before Mixed_5b; use at least "
                f"{min_image_size(stem_conv_depth > 0)} px."
            )
        for name, branches in MIXED_BLOCKS:
            block = Mixed(branches, features, make_conv, name)
            setattr(self, name, block)
            features = block.out_features
            if name == "Mixed_6a":
                size = (size - 3) // 2 + 1
            if name == "Mixed_6e" and aux_logits:
                self.AuxLogits = AuxLogits(features, size, num_classes, make_conv, rngs)
        self.has_aux = aux_logits
        self.dropout = nnx.Dropout(dropout_rate) if dropout_rate > 0 else None
        self.Logits = nnx.Conv(features, num_classes, (1, 1), param_dtype=jnp.float32, rngs=rngs)
        self.num_features = features

    def __call__(
        self, images: jax.Array, train: bool = False, dropout_key: jax.Array | None = None
    ):
        """`dropout_key` is needed only in training with dropout; the model keeps no RNG state,
        so its whole state is parameters and BatchNorm statistics."""
        x = images
        for layer in self.stem:
            x = getattr(self, layer.name)(x, train) if isinstance(layer, Conv) else _pool(x, layer)
        aux = None
        for name, _ in MIXED_BLOCKS:
            x = getattr(self, name)(x, train)
            if name == "Mixed_6e" and self.has_aux and train:
                aux = self.AuxLogits(x, train)
        # Logits/AvgPool_1a_8x8: a global average, which equals slim's 8x8 pool at 299 px.
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True)
        if self.dropout is not None:
            x = self.dropout(x, deterministic=not train, rngs=nnx.Rngs(dropout=dropout_key))
        logits = self.Logits(x)[:, 0, 0, :]
        return (logits, aux) if aux is not None else logits

    def iter_conv_layers(self) -> Iterator[tuple[str, ConvBN]]:
        """Each Conv+BN layer with its slim scope name, in TF-slim's and Keras's creation order."""
        for layer in self.stem:
            if isinstance(layer, Conv):
                yield layer.name, getattr(self, layer.name)
        for name, _ in MIXED_BLOCKS:
            yield from getattr(self, name).conv_layers(name)
        if self.has_aux:  # the release's graph creates the auxiliary head's variables last
            for layer in (self.AuxLogits.Conv2d_1b_1x1, self.AuxLogits.Conv2d_2a):
                yield f"AuxLogits/{layer.spec.name}", layer


def _depth_rule(model_config: ml_collections.ConfigDict) -> DepthRule:
    known_blocks = {name for name, _ in MIXED_BLOCKS} | {layer.name for layer in STEM}
    unknown = set(model_config.depth_caps) - known_blocks - {"AuxLogits"}
    if unknown:
        raise ValueError(
            f"config.model.depth_caps names unknown layers {sorted(unknown)}; valid names are the "
            "TF-slim scopes, e.g. Conv2d_4a_3x3 or Mixed_6b (paper Table 3)."
        )
    table = load_depth_table(model_config.depth_table) if model_config.depth_table else {}
    return DepthRule(
        model_config.depth_multiplier, model_config.min_depth, dict(model_config.depth_caps), table
    )


def _check_table_scopes(model: InceptionV3, table: Mapping[str, int], table_name: str) -> None:
    """Every scope of a depth table must name a layer: a typo would silently keep a default.

    Scopes of the auxiliary head are exempt when the head is off, and its 5x5 conv always (it is
    named after its kernel, which shrinks on small inputs).
    """
    scopes = {scope for scope, _ in model.iter_conv_layers()}
    unknown = {
        scope
        for scope in set(table) - scopes
        if not scope.startswith("AuxLogits/Conv2d_2a_")
        and (model.has_aux or not scope.startswith("AuxLogits/"))
    }
    if unknown:
        raise ValueError(
            f"config.model.depth_table={table_name!r} names layers this network does not have: "
            f"{sorted(unknown)[:5]}; check the table against models.STEM and MIXED_BLOCKS."
        )


def create_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs | int = 0) -> InceptionV3:
    """Builds the network that `config.model` describes.

    `marco_inception_v3` is the paper's variant (extra stem conv; the release's per-layer depth
    table, or Table 3's caps); `inception_v3` is the standard network from the same code,
    ignoring `stem_conv_depth`, `depth_table` and `depth_caps`.
    """
    model_config = config.model
    if model_config.name not in MODEL_NAMES:
        raise ValueError(
            f"config.model.name={model_config.name!r} is unknown; use one of {MODEL_NAMES}."
        )
    marco = model_config.name == "marco_inception_v3"
    if marco and model_config.stem_conv_depth <= 0:
        raise ValueError(
            "config.model.stem_conv_depth must be > 0 for marco_inception_v3 (paper: 16)."
        )
    if not marco:
        model_config = ml_collections.ConfigDict(model_config.to_dict())
        model_config.depth_caps = {}
        model_config.depth_table = ""
    depth_rule = _depth_rule(model_config)
    model = InceptionV3(
        num_classes=model_config.num_classes,
        image_size=model_config.image_size,
        stem_conv_depth=model_config.stem_conv_depth if marco else 0,
        depth_rule=depth_rule,
        dropout_rate=model_config.dropout_rate,
        aux_logits=model_config.aux_logits,
        batch_norm={
            "momentum": model_config.batch_norm_momentum,
            "epsilon": model_config.batch_norm_epsilon,
            # Absent from configs stored before the field existed.
            "use_fast_variance": model_config.get("batch_norm_fast_variance", False),
        },
        dtype=jnp.dtype(model_config.compute_dtype),
        rngs=rngs if isinstance(rngs, nnx.Rngs) else nnx.Rngs(rngs),
    )
    _check_table_scopes(model, depth_rule.table, model_config.depth_table)
    return model


def split_model(model: InceptionV3) -> tuple[nnx.GraphDef, dict, dict]:
    """(graphdef, params, batch_stats) as plain dicts; the model holds no other state."""
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return graphdef, params.to_pure_dict(), batch_stats.to_pure_dict()
