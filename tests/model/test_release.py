"""The released MARCO model in marco_jax, against its real graph run by TensorFlow.

The release's graph (shared/released_marco/saved_model.pb) is filled with random, calibrated
values (`release_graph.write_random_release`) and scores the 16 real drop photographs under
TensorFlow, as its users run it. The same directory is imported (`import_release`) and the same
files are scored by `classify --workdir` (JAX) and by every export through `classify
--model`: each probability must equal the release's.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from flax import nnx
from helpers import REPO, load_config

from marco_jax import classify
from marco_jax.export import export_from_workdir
from marco_jax.labels import CLASS_NAMES
from marco_jax.model import inception, release
from marco_jax.serving import export

tf = pytest.importorskip("tensorflow")
import release_graph  # noqa: E402  (needs TensorFlow)

pytestmark = pytest.mark.slow  # full-size 599 px network, several runtimes: ~3 minutes

TOLERANCE = 1e-4  # max abs difference of any probability


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    return release_graph.write_random_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def release_answers(release_dir):
    """The release's classes (best first) and its probabilities in our class order."""
    classes, scores = release_graph.score_with_release(release_dir, release_graph.REAL_DROPS)
    probs = release_graph.release_probabilities(classes, scores)
    return classes, probs[:, list(release.RELEASE_INDEX_OF_OURS)]


@pytest.fixture(scope="module")
def imported(release_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("imported") / "run"
    result = _module("import_release", "--savedmodel", release_dir, "--workdir", workdir)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["global_step"] == 0
    return workdir


def _module(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"marco_jax.{name}", *map(str, args)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip


def _classify(tmp_path, *args) -> np.ndarray:
    """`classify ... <the 16 drops> --output`, in this process; the CSV's probabilities."""
    out = tmp_path / "scores.csv"
    fv = flags.FlagValues()
    classify.define_flags(fv)
    paths = map(str, release_graph.REAL_DROPS)
    argv = fv(["classify", *map(str, args), *paths, "--output", str(out)])
    assert classify.main(argv, fv) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    return np.array([[float(row[f"p_{name}"]) for name in CLASS_NAMES] for row in rows])


def test_every_variable_of_the_graph_has_a_counterpart_of_equal_shape():
    graph = release_graph.variable_shapes()
    model = nnx.eval_shape(lambda: inception.create_model(load_config("default")))
    ours = {name: tuple(variable.shape) for name, variable, _ in release.variable_slots(model)}
    assert ours == {name: shape for name, shape in graph.items() if name != "global_step"}
    assert len(graph) == 393


def test_the_random_release_is_informative(release_answers):
    classes, probs = release_answers
    assert np.isfinite(probs).all()
    assert len({row[0] for row in classes}) >= 2, "the top class must vary across images"
    assert np.median(probs.max(axis=1)) < 0.95, "the softmax must not be saturated"


def test_classify_checkpoint_scores_as_the_release(imported, release_answers, tmp_path):
    got = _classify(tmp_path, "--workdir", imported, "--batch_size", 8)
    np.testing.assert_array_less(np.abs(got - release_answers[1]).max(), TOLERANCE)


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_every_export_scores_as_the_release(fmt, imported, release_answers, tmp_path):
    result = _module("export", "--workdir", imported, "--format", fmt, "--out", tmp_path / fmt)
    assert result.returncode == 0, result.stderr
    path = json.loads(result.stdout.splitlines()[-1])["path"]
    got = _classify(tmp_path, "--model", path)
    np.testing.assert_array_less(np.abs(got - release_answers[1]).max(), TOLERANCE)


def _ami_client(model_dir) -> list[tuple[str, dict[str, float]]]:
    """A client written as the release's users write one (AMi_Image_Analysis, Classify.py):
    load, feed {"image_bytes": [jpeg]}, take classes[0], map the names."""
    predictor = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    names = {"Crystals": "crystals", "Clear": "clear", "Other": "other"}
    names["Precipitate"] = "precipitate"
    answers = []
    for path in release_graph.REAL_DROPS:
        out = predictor(image_bytes=tf.constant([path.read_bytes()]))
        classes = [c.decode() for c in out["classes"].numpy()[0]]
        scores = out["scores"].numpy()[0]
        answers.append((names[classes[0]], dict(zip(classes, scores.tolist(), strict=True))))
    return answers


def test_saved_model_export_is_a_drop_in_for_the_release(release_dir, imported, tmp_path):
    path = export_from_workdir(str(imported), "saved_model", str(tmp_path))
    ours, theirs = _ami_client(path), _ami_client(release_dir)
    assert [answer for answer, _ in ours] == [answer for answer, _ in theirs]
    for (_, our_scores), (_, their_scores) in zip(ours, theirs, strict=True):
        assert our_scores.keys() == their_scores.keys()
        for name, score in their_scores.items():
            assert abs(our_scores[name] - score) < TOLERANCE, name
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == ["image_bytes"]
    assert set(signature.structured_outputs) == {"classes", "scores"}


@pytest.fixture(scope="module")
def gsk_data_dir(tmp_path_factory):
    """The 12 real GSK drops of shared/ as a `full` dataset, the way a lab builds its own."""
    from tfds_marco.marco import build

    data_dir = tmp_path_factory.mktemp("tfds")
    build(
        "full",
        data_dir=str(data_dir),
        manual_dir=str(release_graph.SHARED / "real_drops/marco_gsk"),
    )
    return data_dir


def test_evaluation_scores_dataset_records_as_the_release(
    release_dir, imported, gsk_data_dir, tmp_path
):
    """The evaluation pipeline (TFDS records, grain, the JAX model) on the release's inputs."""
    from marco_jax.data import input_pipeline
    from marco_jax.evaluation import evaluator
    from marco_jax.runs import store

    loaded = store.load(str(imported), "latest", data_dir=str(gsk_data_dir))
    loaded.config.input.eval_batch_size = 4
    loaded.config.input.num_workers = 0
    source = input_pipeline.open_tfds_source(loaded.config, "train")
    probs = evaluator.predict_model(loaded.config, loaded.model, source).probs
    files = []
    for index in range(len(source)):
        files.append(tmp_path / f"{index}.jpg")
        files[-1].write_bytes(source[index]["image"])
    classes, scores = release_graph.score_with_release(release_dir, files)
    expected = release_graph.release_probabilities(classes, scores)
    expected = expected[:, list(release.RELEASE_INDEX_OF_OURS)]
    np.testing.assert_array_less(np.abs(probs - expected).max(), TOLERANCE)


@pytest.mark.parametrize("command", ["evaluate", "relabel"])
def test_lab_commands_accept_the_imported_workdir(command, imported, gsk_data_dir, tmp_path):
    args = ["--workdir", imported, "--data_dir", gsk_data_dir, "--out", tmp_path / command]
    # The 12 drops hash into train only.
    args += ["--split", "train"] if command == "evaluate" else ["--splits", "train"]
    result = _module(command, *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert any((tmp_path / command).iterdir())
