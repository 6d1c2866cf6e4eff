"""Every export format gives the JAX model's probabilities (to 1e-4), at any batch size."""

from __future__ import annotations

import functools
import io
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import REPO
from PIL import Image

from marco_jax import cli
from marco_jax.data import preprocess
from marco_jax.export import export_from_workdir
from marco_jax.labels import CLASS_NAMES
from marco_jax.model import inception, predict
from marco_jax.serving import export
from marco_jax.serving.export import tf_graph

tf = pytest.importorskip("tensorflow")
pytest.importorskip("onnxruntime")

TOLERANCE = 1e-4  # max abs difference of probabilities in float32


def _structured_images(rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    """Random uint8 images with large-scale structure, so that the network's outputs differ
    between images (pure pixel noise averages out to nearly the same features)."""
    images = []
    for _ in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BILINEAR), np.int16)
        noise = rng.integers(-20, 21, smooth.shape)
        images.append(np.clip(smooth + noise, 0, 255).astype(np.uint8))
    return np.stack(images)


@functools.partial(jax.jit, static_argnums=0)
def _jax_logits(graphdef, state, images):
    return nnx.merge(graphdef, state)(predict.to_model_input(images), train=False)


def _logits(model: nnx.Module, images: np.ndarray) -> jax.Array:
    """The JAX model's logits (one compilation per network structure and batch size)."""
    return _jax_logits(*nnx.split(model), jnp.asarray(images))


def _probabilities(model: nnx.Module, images: np.ndarray) -> np.ndarray:
    return predict.predict_fn(model)(images)


def _random_model(config, seed: int) -> nnx.Module:
    """A new network with every weight drawn here in numpy (fast: no per-shape JAX compiles).

    BatchNorm statistics and offsets are random, since a fresh model's (mean 0, var 1, offset 0)
    would pass with a fold that ignored them. Kernels are a little above He's scale (sqrt(3 /
    fan_in)) so that the signal survives the random rescaling and the outputs differ between
    images.
    """
    graphdef, state = nnx.split(nnx.eval_shape(lambda: inception.create_model(config)))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            values = rng.normal(0, np.sqrt(3 / np.prod(leaf.shape[:-1])), leaf.shape)
        elif name in ("bias", "mean"):
            values = rng.normal(0, 0.1, leaf.shape)
        else:
            values = rng.uniform(0.5, 2.0, leaf.shape)
        return values.astype(np.float32)

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(draw, state.to_pure_dict()))
    return nnx.merge(graphdef, state)


def _scale_logits(model: nnx.Module, images: np.ndarray, std: float = 2.0) -> None:
    """Rescales the logits layer so the logits on `images` spread over a few units: saturated
    probabilities would hide any difference between two implementations."""
    scale = std / float(jnp.std(_logits(model, images)))
    model.Logits.kernel.set_value(model.Logits.kernel[...] * scale)
    model.Logits.bias.set_value(model.Logits.bias[...] * scale)


def _neutral_statistics(model: nnx.Module) -> nnx.Module:
    """A copy of `model` with a fresh BatchNorm's statistics (mean 0, var 1)."""
    neutral = nnx.clone(model)
    for _, layer in neutral.iter_conv_layers():
        layer.bn.mean.set_value(jnp.zeros_like(layer.bn.mean[...]))
        layer.bn.var.set_value(jnp.ones_like(layer.bn.var[...]))
    return neutral


@pytest.fixture(params=["tiny", "full_depth"])
def model_and_images(request, tiny_config):
    """A MARCO network at 151 px (tiny, or with every depth of the paper), 3 test images and the
    JAX probabilities."""
    if request.param == "full_depth":
        tiny_config.model.depth_multiplier = 1.0
        tiny_config.model.min_depth = 16
    model = _random_model(tiny_config, seed=1)
    size = tiny_config.model.image_size
    images = _structured_images(np.random.default_rng(0), 3, size, size)
    _scale_logits(model, images)
    expected = _probabilities(model, images)
    neutral = _probabilities(_neutral_statistics(model), images)
    # The comparisons below can only catch a wrong fold or a wrong layer if these move the output.
    assert np.abs(expected - neutral).max() > 100 * TOLERANCE
    assert np.abs(expected - expected[::-1]).max() > 100 * TOLERANCE
    return tiny_config, model, images, expected


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_export_reproduces_jax_probabilities_at_batch_1_and_3(model_and_images, fmt, tmp_path):
    config, model, images, expected = model_and_images
    path = export.export_model(model, config, tmp_path, fmt)
    exported = export.load_exported(path)
    assert exported.format == fmt
    assert exported.image_size == config.model.image_size
    assert exported.central_fraction == config.input.central_fraction
    assert exported.class_names == CLASS_NAMES
    for batch in (1, 3, 1):  # back to 1: a runtime that resized its input must resize again
        got = exported(images[:batch])
        assert got.shape == (batch, len(CLASS_NAMES))
        np.testing.assert_array_less(np.abs(got - expected[:batch]).max(), TOLERANCE)


def _encoded(image: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **options)
    return buffer.getvalue()


def test_saved_model_bytes_signature_matches_jax_on_encoded_files(tiny_config, tmp_path):
    config, model = tiny_config, _random_model(tiny_config, seed=3)
    rng = np.random.default_rng(2)
    files = [
        _encoded(_structured_images(rng, 1, 200, 260)[0], "JPEG", quality=90),
        _encoded(_structured_images(rng, 1, 300, 120)[0], "PNG"),  # tall: vertical pass first
        _encoded(_structured_images(rng, 1, 120, 140)[0], "BMP"),  # upscaled
        _encoded(_structured_images(rng, 1, 170, 170)[0][..., 0], "JPEG"),  # grayscale
    ]
    size, fraction = config.model.image_size, config.input.central_fraction
    crops = [
        preprocess.center_crop_and_resize(preprocess.decode_image(f), size, fraction) for f in files
    ]
    _scale_logits(model, np.stack(crops))
    expected = _probabilities(model, np.stack(crops))
    assert np.abs(expected - expected[::-1]).max() > 100 * TOLERANCE
    loaded = tf.saved_model.load(str(export.export_model(model, config, tmp_path, "saved_model")))
    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant(files))
    # The release's contract: sorted best first, under the release's class names.
    classes, scores = outputs["classes"].numpy().astype(str), outputs["scores"].numpy()
    assert classes.shape == scores.shape == (len(files), 4)
    assert (np.diff(scores, axis=1) <= 0).all()
    release_names = [name.capitalize() for name in CLASS_NAMES]
    ours = np.array([[row.tolist().index(n) for n in release_names] for row in classes])
    unsorted = np.take_along_axis(scores, ours, axis=1)
    np.testing.assert_array_less(np.abs(unsorted - expected).max(), TOLERANCE)
    images = loaded.signatures["images"](images=tf.constant(np.stack(crops)))
    np.testing.assert_array_less(np.abs(images["scores"].numpy() - expected).max(), TOLERANCE)


@pytest.mark.parametrize(
    ("height", "width", "size", "central_fraction"),
    [
        (960, 1280, 151, 0.875),  # a landscape imager photograph, downscaled
        (300, 97, 151, 0.875),  # tall and upscaled: Pillow 13 resamples vertically first
        (250, 200, 64, 0.875),  # slightly tall, downscaled: horizontal pass first
        (420, 200, 64, 0.875),  # tall, downscaled: Pillow 13 resamples vertically first
        (120, 130, 151, 1.3),  # the square leaves the image: reflection padding
        (151, 151, 151, 1.0),  # identity
    ],
)
def test_tf_center_crop_and_resize_is_pillow_exact(height, width, size, central_fraction):
    image = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    expected = preprocess.center_crop_and_resize(image, size, central_fraction)
    got = tf_graph.tf_center_crop_and_resize(tf.constant(image), size, central_fraction)
    np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize(
    ("fmt", "options", "channels"),
    [
        ("JPEG", {"quality": 90}, 3),  # 4:2:0 chroma: decoders differ unless the DCT matches
        ("JPEG", {"quality": 75, "subsampling": 0}, 3),
        ("JPEG", {}, 1),
        ("PNG", {}, 3),
        ("BMP", {}, 3),
        ("GIF", {}, 3),
    ],
)
def test_tf_decode_gives_pillows_pixels(fmt, options, channels):
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    data = _encoded(image[..., 0] if channels == 1 else image, fmt, **options)
    got = tf_graph.tf_decode_image(tf.constant(data)).numpy()
    np.testing.assert_array_equal(got, preprocess.decode_image(data))


def test_load_exported_names_a_path_that_is_no_export(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="model.pt is not an exported model"):
        export.load_exported(tmp_path / "model.pt")
    with pytest.raises(ValueError, match="not an exported model"):
        export.load_exported(tmp_path)  # a directory without saved_model.pb


def test_exported_model_rejects_wrong_images_and_foreign_files(tiny_config, tmp_path):
    import onnx

    model = _random_model(tiny_config, seed=0)
    path = export.export_model(model, tiny_config, tmp_path, "onnx")
    exported = export.load_exported(path)
    with pytest.raises(ValueError, match="uint8 images \\[batch, 151, 151, 3\\]"):
        exported(np.zeros((1, 150, 150, 3), np.uint8))
    with pytest.raises(ValueError, match="float32"):
        exported(np.zeros((1, 151, 151, 3), np.float32))
    foreign = onnx.load(str(path))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ValueError, match="foreign.onnx holds no marco_jax metadata"):
        export.load_exported(tmp_path / "foreign.onnx")


def test_unknown_format_and_class_count_are_refused(tiny_config, tmp_path):
    model = _random_model(tiny_config, seed=0)
    with pytest.raises(ValueError, match="Unknown export format 'pt'"):
        export.export_model(model, tiny_config, tmp_path, "pt")
    tiny_config.model.num_classes = 5
    with pytest.raises(ValueError, match="num_classes is 5"):
        export.export_model(model, tiny_config, tmp_path, "onnx")


def test_export_from_workdir_loads_the_requested_checkpoint(tiny_config, tmp_path, monkeypatch):
    from marco_jax.runs import store

    model = _random_model(tiny_config, seed=0)
    calls = []
    real_load = store.load

    def load(workdir, checkpoint="best", use_ema=True, data_dir=None):
        calls.append((workdir, checkpoint, use_ema))
        if checkpoint not in ("best", "1200"):
            return real_load(workdir, checkpoint, use_ema)  # its errors, as the command's
        return store.Loaded(tiny_config, model, 1200, use_ema)

    monkeypatch.setattr(store, "load", load)
    path = export_from_workdir(str(tmp_path), "onnx", checkpoint="1200", raw_weights=True)
    assert calls == [(str(tmp_path), "1200", False)]
    assert path == tmp_path / "export" / "marco.onnx"
    provenance = export.load_exported(path).provenance
    assert provenance == {"workdir": str(tmp_path), "step": 1200, "weights": "raw"}
    export_from_workdir(str(tmp_path), "onnx", out=str(tmp_path / "o"))
    assert calls[-1] == (str(tmp_path), "best", True)
    with pytest.raises(cli.ArgumentError, match="checkpoint 'newest' is neither"):
        export_from_workdir(str(tmp_path), "onnx", checkpoint="newest")


def test_export_command_exports_the_ema_weights_of_a_trained_run(trained_workdir, tmp_path):
    from marco_jax.runs import store

    command = [sys.executable, "-m", "marco_jax.export", f"--workdir={trained_workdir}"]
    command += ["--format=onnx", f"--out={tmp_path}"]
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
    path = json.loads(result.stdout.strip().splitlines()[-1])["path"]
    exported = export.load_exported(path)
    loaded = store.load(str(trained_workdir))
    config, model, step = loaded.config, loaded.model, loaded.step
    assert exported.provenance["step"] == step and exported.provenance["weights"] == "ema"
    size = config.model.image_size
    images = _structured_images(np.random.default_rng(4), 2, size, size)
    np.testing.assert_array_less(
        np.abs(exported(images) - _probabilities(model, images)).max(), TOLERANCE
    )
