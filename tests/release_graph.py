"""The authors' released MARCO graph made runnable with random, calibrated values (test helper).

Why: the trained variable values of the release are not available on these machines, but its
graph (`shared/released_marco/saved_model.pb`) is. Filling that exact graph with random values
gives a SavedModel that runs the release's own preprocessing and network under TensorFlow, so
our port can be compared with it number for number, and clients can be exercised the way
AMi_Image_Analysis and the release's Classify.py call it. The values are chosen so that every
BatchNorm output is ~N(beta, 1) on real drops (moving statistics calibrated layer by layer),
which keeps activations O(1) and the softmax informative instead of saturated or constant.
"""

from __future__ import annotations

import math
import pathlib
import shutil
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RELEASE_GRAPH: pathlib.Path = SHARED / "released_marco" / "saved_model.pb"
REAL_DROPS: list[pathlib.Path] = sorted(
    p for p in (SHARED / "real_drops").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg")
)
# The graph's index_to_string table, which is also the order of its logits.
CLASS_NAMES = ("Clear", "Crystals", "Other", "Precipitate")
# Output of ParseExample that the serving signatures expose as `image_bytes`.
IMAGE_BYTES = "ParseExample/ParseExample:0"
# The preprocessed batch [N, 599, 599, 3] after the per-image map_fn: the first ordinary tensor.
NETWORK_INPUT = "map/TensorArrayStack/TensorArrayGatherV3:0"
PRE_LOGITS = "Inception/Logits/AvgPool_1a_8x8/AvgPool:0"
LOGITS = "Inception/Logits/SpatialSqueeze:0"
LOGITS_WEIGHTS = "Inception/Logits/Conv2d_1c_1x1/weights"
BN_EPSILON = 1e-3  # FusedBatchNorm epsilon in the graph
BETA_STD = 0.2  # large enough that a BatchNorm fold ignoring beta is caught
BIAS_STD = 0.1
LOGIT_STD = 1.0  # across images, per class: informative, never saturated; float32 noise
# grows ~1.5x per Mixed block in a random BatchNorm network (measured: 1e-6 relative at
# Conv2d_4a, 8e-5 at Mixed_7c), and the probabilities inherit it in proportion to this scale.
# Place only the pruned subgraph of each run: halves the time of the ~50 calibration runs.
_SESSION_CONFIG = tf.compat.v1.ConfigProto(
    graph_options=tf.compat.v1.GraphOptions(place_pruned_graph=True)
)


def meta_graph(graph_path: pathlib.Path = RELEASE_GRAPH) -> meta_graph_pb2.MetaGraphDef:
    """The `serve` meta graph of a SavedModel file, parsed without running anything."""
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(pathlib.Path(graph_path).read_bytes())
    (meta,) = [m for m in saved_model.meta_graphs if "serve" in m.meta_info_def.tags]
    return meta


def variable_shapes(graph_path: pathlib.Path = RELEASE_GRAPH) -> dict[str, tuple[int, ...]]:
    """Every VariableV2 of the graph by name, with its shape, in creation (graph) order."""
    return {
        node.name: tuple(d.size for d in node.attr["shape"].shape.dim)
        for node in meta_graph(graph_path).graph_def.node
        if node.op == "VariableV2"
    }


def _initial_values(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """He-normal kernels, small random betas and biases; BatchNorm statistics still neutral."""
    rng = np.random.default_rng(seed)
    values = {}
    for name, shape in shapes.items():
        if name.endswith("/weights"):
            std = math.sqrt(2.0 / math.prod(shape[:3]))
            values[name] = (std * rng.standard_normal(shape)).astype(np.float32)
        elif name.endswith("/beta"):
            values[name] = (BETA_STD * rng.standard_normal(shape)).astype(np.float32)
        elif name.endswith("/biases"):
            values[name] = (BIAS_STD * rng.standard_normal(shape)).astype(np.float32)
        elif name.endswith("/moving_mean"):
            values[name] = np.zeros(shape, np.float32)
        elif name.endswith("/moving_variance"):
            values[name] = np.ones(shape, np.float32)
        elif name == "global_step":
            values[name] = np.zeros(shape, np.int64)
        else:
            raise ValueError(f"no rule for variable {name} {shape}")
    return values


def _tensor(name: str) -> str:
    return name if ":" in name else f"{name}:0"


def _cut_inputs(nodes: dict, tensor: str, cache: dict[str, np.ndarray]) -> set[str] | None:
    """The cached tensors that `tensor` is computed from, or None if an uncalibrated
    BatchNorm lies upstream. Feeding just these makes a run compute only the new part."""
    needed: set[str] = set()
    stack, seen = [_tensor(tensor)], set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in cache:
            needed.add(name)
            continue
        node = nodes[name.rsplit(":", 1)[0]]
        if node.op == "FusedBatchNorm":
            return None
        stack.extend(_tensor(i) for i in node.input if not i.startswith("^"))
    return needed


def _calibrate(
    sess: tf.compat.v1.Session, graph_def, values: dict[str, np.ndarray], jpegs: list[bytes]
) -> np.ndarray:
    """Set every moving mean/variance to its Conv2D output's per-channel statistics over
    batch and space, upstream layers calibrated first; returns the pre-logits features.

    Level by level: each run fetches all Conv2D outputs whose inputs are calibrated, feeding
    the cached ReLU outputs it depends on, so the network is computed about once in total."""
    nodes = {n.name: n for n in graph_def.node}
    relu_of = {n.input[0]: n.name for n in graph_def.node if n.op == "Relu"}
    pending = [n for n in graph_def.node if n.op == "FusedBatchNorm"]
    cache = {NETWORK_INPUT: sess.run(NETWORK_INPUT, {IMAGE_BYTES: jpegs})}
    while pending:
        ready, feeds = [], set()
        for bn in pending:
            cut = _cut_inputs(nodes, bn.input[0], cache)
            if cut is not None:
                ready.append(bn)
                feeds |= cut
        if not ready:
            raise RuntimeError("no BatchNorm layer can be calibrated; graph not understood")
        outputs = sess.run([_tensor(bn.input[0]) for bn in ready], {k: cache[k] for k in feeds})
        for bn, y in zip(ready, outputs, strict=True):
            beta, mean_name, var_name = (i.removesuffix("/read") for i in bn.input[2:5])
            mean = y.mean(axis=(0, 1, 2), dtype=np.float64)
            var = y.var(axis=(0, 1, 2), dtype=np.float64)
            values[mean_name] = mean.astype(np.float32)
            values[var_name] = var.astype(np.float32)
            normed = (y - values[mean_name]) / np.sqrt(values[var_name] + BN_EPSILON)
            cache[_tensor(relu_of[bn.name])] = np.maximum(normed + values[beta], 0.0)
        pending = [bn for bn in pending if bn not in ready]
    cut = _cut_inputs(nodes, PRE_LOGITS, cache)
    return sess.run(PRE_LOGITS, {k: cache[k] for k in cut}).reshape(len(jpegs), -1)


def write_random_release(
    out_dir: pathlib.Path | str,
    seed: int = 0,
    calibration: Sequence[pathlib.Path] = REAL_DROPS,
) -> pathlib.Path:
    """Write the released graph plus random, calibrated variables as a SavedModel in `out_dir`.

    Kernels are He-normal and betas/biases small random (seeded numpy); BatchNorm moving
    statistics are calibrated on `calibration` through the graph's own preprocessing; the
    logits kernel is scaled per class (and the bias centred) so that the logits vary across
    those images with std LOGIT_STD. The checkpoint is written by the graph's own saver_def
    (sharded V2), so every value is readable under its graph name."""
    out_dir = pathlib.Path(out_dir)
    (out_dir / "variables").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RELEASE_GRAPH, out_dir / "saved_model.pb")
    meta = meta_graph(RELEASE_GRAPH)
    values = _initial_values(variable_shapes(RELEASE_GRAPH), seed)
    jpegs = [pathlib.Path(p).read_bytes() for p in calibration]
    graph = tf.Graph()
    with graph.as_default():
        saver = tf.compat.v1.train.import_meta_graph(meta, clear_devices=True)
        variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
        if set(variables) != set(values):
            raise RuntimeError("meta graph variables differ from the graph's VariableV2 nodes")
        with tf.compat.v1.Session(graph=graph, config=_SESSION_CONFIG) as sess:
            _load(sess, variables, values)
            features = _calibrate(sess, meta.graph_def, values, jpegs)
            kernel = values[LOGITS_WEIGHTS]
            logits = features @ kernel.reshape(kernel.shape[2:])
            scale = LOGIT_STD / np.maximum(logits.std(axis=0), 1e-6)
            values[LOGITS_WEIGHTS] = (kernel * scale).astype(np.float32)
            bias_name = LOGITS_WEIGHTS.replace("/weights", "/biases")
            centred = values[bias_name] - logits.mean(axis=0) * scale
            values[bias_name] = centred.astype(np.float32)
            _load(sess, variables, values)
            saver.save(
                sess,
                str(out_dir / "variables" / "variables"),
                write_meta_graph=False,
                write_state=False,
            )
    return out_dir


def _load(sess: tf.compat.v1.Session, variables: dict, values: dict[str, np.ndarray]) -> None:
    """Assign all values through the variables' own initializers (no new ops in the graph)."""
    sess.run(
        [v.initializer for v in variables.values()],
        {v.initializer.inputs[1]: values[name] for name, v in variables.items()},
    )


def score_with_release(
    release_dir: pathlib.Path | str, paths: Sequence[pathlib.Path]
) -> tuple[list[list[str]], np.ndarray]:
    """`classes` (best first) and `scores` [N, 4] of the release's serving signature, one
    image per call with {"image_bytes": [jpeg]}, as AMi_Image_Analysis and Classify.py do."""
    loaded = tf.saved_model.load(str(release_dir))
    serve = loaded.signatures["serving_default"]
    classes, scores = [], []
    for path in paths:
        out = serve(image_bytes=tf.constant([pathlib.Path(path).read_bytes()]))
        classes.append([c.decode() for c in out["classes"].numpy()[0]])
        scores.append(out["scores"].numpy()[0])
    return classes, np.stack(scores)


def release_probabilities(classes: list[list[str]], scores: np.ndarray) -> np.ndarray:
    """Un-sort the signature's best-first outputs into CLASS_NAMES order, [N, 4]."""
    probs = np.zeros((len(classes), len(CLASS_NAMES)), np.float32)
    for i, row in enumerate(classes):
        for name, score in zip(row, scores[i], strict=True):
            probs[i, CLASS_NAMES.index(name)] = score
    return probs


def release_tensors(
    release_dir: pathlib.Path | str, paths: Sequence[pathlib.Path], names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Any graph tensors (e.g. PRE_LOGITS, a BatchNorm output) for each image, one image per
    run, concatenated along the batch axis: lets tests look inside the release."""
    graph = tf.Graph()
    outs: dict[str, list[np.ndarray]] = {name: [] for name in names}
    with tf.compat.v1.Session(graph=graph) as sess:
        tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(release_dir))
        for path in paths:
            got = sess.run(list(names), {IMAGE_BYTES: [pathlib.Path(path).read_bytes()]})
            for name, value in zip(names, got, strict=True):
                outs[name].append(value)
    return {name: np.concatenate(v) for name, v in outs.items()}


def write_uncalibrated_release(out_dir: pathlib.Path | str, seed: int = 0) -> pathlib.Path:
    """A release directory in seconds: the real graph, He-scaled kernels and neutral BatchNorm
    statistics written by name (no graph is run), for tests that train or import but do not
    compare against the graph's outputs."""
    values = _initial_values(variable_shapes(RELEASE_GRAPH), seed)
    return write_release(out_dir, values)


def write_release(out_dir: pathlib.Path | str, values: dict[str, np.ndarray]) -> pathlib.Path:
    """The real graph beside a TF checkpoint holding exactly `values` by name (any set of
    names and shapes, to make broken releases too)."""
    out_dir = pathlib.Path(out_dir)
    (out_dir / "variables").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RELEASE_GRAPH, out_dir / "saved_model.pb")
    names = sorted(values)
    tf.raw_ops.SaveV2(
        prefix=str(out_dir / "variables" / "variables"),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(values[name]) for name in names],
    )
    return out_dir
