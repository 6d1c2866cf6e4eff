"""`python -m marco_jax.classify` on what a lab hands over: every good format scored as the model
scores its evaluation crop, every broken file named, the documented exit codes,
heat maps beside the scores, and exported models in place of the checkpoint."""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from absl import flags
from helpers import REPO
from image_fixtures import BAD_FILES, GOOD_FILES, write_lab_folder
from PIL import Image

from marco_jax import classify, cli
from marco_jax.data import image_io, preprocess
from marco_jax.labels import CLASS_NAMES, CRYSTALS
from marco_jax.model import predict
from marco_jax.runs import store
from marco_jax.serving import engine, saliency_figure


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _probs(line: dict[str, str]) -> np.ndarray:
    return np.array([float(line[f"p_{name}"]) for name in CLASS_NAMES])


def _classify(*args: str) -> int:
    """The command in this process, with its own flags; returns the exit code."""
    fv = flags.FlagValues()
    classify.define_flags(fv)
    argv = fv(["classify", *map(str, args)])
    try:
        return classify.main(argv, fv)
    except SystemExit as e:
        return e.code


def _model_probabilities(workdir: Path, paths: list[str]) -> np.ndarray:
    """The restored network on each file's evaluation crop, without the scoring engine."""
    loaded = store.load(str(workdir), "latest")
    size, fraction = loaded.config.model.image_size, loaded.config.input.central_fraction
    crops = [
        preprocess.center_crop_and_resize(image_io.load_image(p), size, fraction) for p in paths
    ]
    return predict.predict_fn(loaded.model)(np.stack(crops))


@pytest.fixture
def good_folder(tmp_path: Path) -> Path:
    """Good files only, two of them with the same name in different folders."""
    mixed = tmp_path / "mixed"
    write_lab_folder(mixed)
    good = tmp_path / "good"
    (good / "sub").mkdir(parents=True)
    for name in ("rgb.jpg", "rgba.png", "rgb16.tiff", "cmyk.jpg"):
        shutil.copy(mixed / name, good / name)
    for name in ("rgb.jpg", "rgb.bmp"):
        shutil.copy(mixed / name, good / "sub" / name)
    return good


def test_mixed_folder_scores_every_good_file_and_names_every_bad_one(trained_workdir, tmp_path):
    folder, out = tmp_path / "plate", tmp_path / "scores.csv"
    write_lab_folder(folder)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "marco_jax.classify",
            f"--workdir={trained_workdir}",
            "--checkpoint=latest",
            str(folder),
            f"--output={out}",
            "--batch_size=4",
            "--workers=2",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == engine.EXIT_SOME_FAILED == 3, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == (
        f"scored {len(GOOD_FILES)}, failed {len(BAD_FILES)}, skipped 0"
    )
    lines = _rows(out)
    assert [line["path"] for line in lines] == image_io.collect_inputs([str(folder)])
    by_name = {os.path.basename(line["path"]): line for line in lines}
    assert set(by_name) == set(GOOD_FILES) | set(BAD_FILES)  # one row per input

    good = sorted(GOOD_FILES)
    scores = np.stack([_probs(by_name[name]) for name in good])
    for name, p in zip(good, scores, strict=True):
        assert by_name[name]["error"] == "", name
        assert by_name[name]["prediction"] == CLASS_NAMES[int(np.argmax(p))], name
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=5e-6)  # 6 decimals each
    # Preprocessing identical to evaluation: the model on each file's evaluation crop.
    expected = _model_probabilities(trained_workdir, [str(folder / name) for name in good])
    np.testing.assert_allclose(scores, expected, atol=2e-6)

    for name, (_, words) in BAD_FILES.items():
        line = by_name[name]
        assert words in line["error"], (name, line["error"])
        assert line["prediction"] == "" and all(line[f"p_{c}"] == "" for c in CLASS_NAMES)


def test_all_good_exits_zero_and_writes_heat_maps(trained_workdir, good_folder, tmp_path, capsys):
    out, maps = tmp_path / "scores.csv", tmp_path / "maps"
    code = _classify(
        f"--workdir={trained_workdir}",
        "--checkpoint=latest",
        good_folder,
        f"--output={out}",
        "--batch_size=4",
        "--crystal_threshold=0.25",
        f"--saliency={maps}",
        "--saliency_samples=2",
    )
    assert code == engine.EXIT_ALL_SCORED == 0
    assert capsys.readouterr().out.splitlines()[-1] == "scored 6, failed 0, skipped 0"
    lines = _rows(out)
    assert len(lines) == 6 and all(line["error"] == "" for line in lines)
    for line in lines:
        assert line["crystal_flag"] == str(int(_probs(line)[CRYSTALS] >= 0.25))
    # One map per input, named after it below the inputs' common folder: no collisions.
    written = sorted(p.relative_to(maps).as_posix() for p in maps.rglob("*.png"))
    assert written == sorted(
        f"{Path(line['path']).relative_to(good_folder).as_posix()}.png" for line in lines
    )
    assert "sub/rgb.jpg.png" in written and "rgb.jpg.png" in written
    # Each map beside its photograph at the photograph's resolution (24 x 32 px, not the model's
    # 151 px input), enlarged 8 times to be seen: every 8th pixel is the photograph's.
    original = image_io.load_image(str(good_folder / "sub" / "rgb.bmp"))
    with Image.open(maps / "sub" / "rgb.bmp.png") as heat_map:
        assert heat_map.format == "PNG"
        figure = np.asarray(heat_map.convert("RGB"))
    top = saliency_figure.PANEL_TOP
    np.testing.assert_array_equal(figure[top : top + 24 * 8 : 8, : 32 * 8 : 8], original)


def test_exported_model_scores_like_the_checkpoint(trained_workdir, good_folder, tmp_path):
    export = pytest.importorskip("marco_jax.serving.export")
    loaded = store.load(str(trained_workdir), "latest")
    onnx = export.export_model(loaded.model, loaded.config, tmp_path / "export", "onnx")
    by_jax, by_onnx, by_onnx_tta = (tmp_path / f"{name}.csv" for name in ("jax", "onnx", "tta"))
    assert (
        _classify(
            f"--workdir={trained_workdir}", "--checkpoint=latest", good_folder, f"--output={by_jax}"
        )
        == 0
    )
    assert _classify(f"--model={onnx}", good_folder, f"--output={by_onnx}") == 0
    jax_rows, onnx_rows = _rows(by_jax), _rows(by_onnx)
    assert [r["path"] for r in onnx_rows] == [r["path"] for r in jax_rows]
    np.testing.assert_allclose(
        [_probs(r) for r in onnx_rows], [_probs(r) for r in jax_rows], atol=1e-4
    )
    # --tta: the mean over the 8 symmetries of each evaluation crop.
    assert _classify(f"--model={onnx}", good_folder, f"--output={by_onnx_tta}", "--tta") == 0
    predict = export.load_exported(onnx)
    for row in _rows(by_onnx_tta):
        crop = preprocess.center_crop_and_resize(
            image_io.load_image(row["path"]), predict.image_size, predict.central_fraction
        )
        views = np.stack([t(crop) for t in engine.TTA_TRANSFORMS.values()])
        np.testing.assert_allclose(_probs(row), predict(views).mean(axis=0), atol=2e-6)


def test_wrong_arguments_exit_2_with_the_reason(trained_workdir, good_folder, tmp_path, capsys):
    out = f"--output={tmp_path / 'scores.csv'}"
    checkpoint = f"--workdir={trained_workdir}"
    cases = {
        "no PATH given": (checkpoint, out),
        "exactly one of --workdir DIR and --model EXPORTED": (good_folder, out),
        "exactly one of --workdir": (checkpoint, f"--model={tmp_path}", good_folder, out),
        "--saliency needs the JAX network": (
            f"--model={tmp_path}/m.onnx", f"--saliency={tmp_path}", good_folder, out
        ),
        "checkpoint 'newest' is neither": (checkpoint, "--checkpoint=newest", good_folder, out),
        "is not an exported model": (f"--model={tmp_path}/missing.onnx", good_folder, out),
        "list file": (checkpoint, tmp_path / "missing.txt", out),
        "must be a file in an existing folder": (
            checkpoint, good_folder, f"--output={tmp_path}/no/such/folder.csv"
        ),
        "--batch_size must be >= 1": (checkpoint, good_folder, out, "--batch_size=0"),
        "--crystal_threshold must lie in [0, 1]": (
            checkpoint, good_folder, out, "--crystal_threshold=1.5"
        ),
    }  # fmt: skip
    for reason, args in cases.items():
        assert _classify(*args) == cli.EXIT_USAGE == 2, reason
        message = capsys.readouterr().err.splitlines()[-1]
        assert message.startswith("error: ") and reason in message, (reason, message)
    assert not (tmp_path / "scores.csv").exists()  # nothing scored, nothing written
