"""Scoring what a lab hands over: every case asserts the row, the error text and the exit code.

Most cases run `classify.main` in this process with a stand-in model (an "export" whose
predictor is a numpy function), so they take milliseconds; the workdir whose config.json does
not match its checkpoint uses the session's trained ci workdir, and Ctrl-C is a real SIGINT sent
to a child process.
"""

import contextlib
import csv
import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from absl import flags
from helpers import REPO, classify_main, started
from PIL import Image

from marco_jax import classify, cli
from marco_jax.data import preprocess
from marco_jax.labels import CLASS_NAMES
from marco_jax.serving import csv_file, engine, predictors

PREPROCESSING = preprocess.Preprocessing(16, 0.875)


def _fake_predict(images: np.ndarray) -> np.ndarray:
    """Probabilities from the mean colour: deterministic, any batch size."""
    logits = images.reshape(len(images), -1, 3).mean(1) / 64.0
    logits = np.concatenate([logits, logits[:, :1] * 0], axis=1)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _use_fake_model(monkeypatch) -> list[int]:
    """--model=<anything> runs `_fake_predict`; the list records every batch it saw."""
    calls = []

    def predict(images):
        calls.append(len(images))
        return _fake_predict(images)

    monkeypatch.setattr(
        predictors,
        "exported_predictor",
        lambda path, **options: predictors.Predictor(predict, PREPROCESSING),
    )
    return calls


def _classify(*args) -> int:
    return classify_main("--model=fake.onnx", *args)


def _jpeg(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (24, 32, 3), np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:  # strict UTF-8: the file must be
        return list(csv.DictReader(f))


def _last_error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


# ----------------------------------------------------------------------------- item 1
def test_non_utf8_name_is_scored_and_its_path_read_back_exactly(monkeypatch, tmp_path, capsys):
    _use_fake_model(monkeypatch)
    folder = tmp_path / "d1"
    folder.mkdir()
    _jpeg(folder / "a.jpg")
    latin1 = os.fsdecode(bytes(folder) + b"/caf\xe9.jpg")
    shutil.copy(folder / "a.jpg", latin1)
    out = tmp_path / "d1.csv"
    assert _classify(folder, f"--output={out}") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "scored 2, failed 0, skipped 0"
    rows = _rows(out)
    assert [csv_file.path_from_cell(r["path"]) for r in rows] == [str(folder / "a.jpg"), latin1]
    assert rows[1]["path"] == "'" + str(folder) + "/caf%E9.jpg"
    assert rows[0]["p_crystals"] == rows[1]["p_crystals"] != ""


# ----------------------------------------------------------------------------- item 2
def test_output_naming_an_input_is_refused_and_the_photograph_kept(monkeypatch, tmp_path, capsys):
    _use_fake_model(monkeypatch)
    photo = _jpeg(tmp_path / "v.jpg")
    before = photo.read_bytes()
    assert _classify(photo, f"--output={photo}") == cli.EXIT_USAGE
    assert _last_error(capsys) == (
        f"error: --output {photo} is the input {photo}: the CSV would overwrite it. Choose "
        "another output file (e.g. scores.csv)."
    )
    other = _jpeg(tmp_path / "other.jpg", seed=1)
    assert _classify(tmp_path, f"--output={other}") == cli.EXIT_USAGE  # inside a scanned folder
    assert "is the input" in _last_error(capsys)
    listing = tmp_path / "run.txt"
    listing.write_text("v.jpg\n")
    assert _classify(listing, f"--output={listing}") == cli.EXIT_USAGE
    assert f"is the input {listing}" in _last_error(capsys)
    elsewhere = _jpeg(tmp_path / "elsewhere.png")  # an image that is not an input
    assert _classify(photo, f"--output={elsewhere}") == cli.EXIT_USAGE
    assert "exists and is an image, not a CSV" in _last_error(capsys)
    assert photo.read_bytes() == before and listing.read_text() == "v.jpg\n"
    assert not list(tmp_path.glob("*.partial*"))


# ----------------------------------------------------------------------------- item 3
def test_truncated_jpeg_with_eoi_is_an_error_row(monkeypatch, tmp_path, capsys):
    _use_fake_model(monkeypatch)
    data = (_jpeg(tmp_path / "whole.jpg")).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    out = tmp_path / "s.csv"
    assert _classify(tmp_path / "whole.jpg", tmp_path / "cut.jpg", f"--output={out}") == 3
    whole, cut = _rows(out)
    assert whole["error"] == "" and cut["prediction"] == "" and cut["p_crystals"] == ""
    assert cut["error"].startswith("incomplete image data (the picture's data ends early")
    assert "libjpeg: Corrupt JPEG data: premature end of data segment" in cut["error"]
    assert capsys.readouterr().out.splitlines()[-1] == "scored 1, failed 1, skipped 0"


# ----------------------------------------------------------------------------- item 4
def test_unwritable_output_fails_at_start_with_exit_2(monkeypatch, tmp_path, capsys):
    batches = _use_fake_model(monkeypatch)
    photo = _jpeg(tmp_path / "a.jpg")
    assert _classify(photo, "--output=/dev/full") == cli.EXIT_USAGE
    assert _last_error(capsys) == (
        "error: cannot write --output /dev/full: No space left on device (checked before "
        "scoring; choose a writable file)"
    )
    assert _classify(photo, "--output=/sys/scores.csv") == cli.EXIT_USAGE  # EACCES, even as root
    assert _last_error(capsys).startswith("error: cannot write --output /sys/scores.csv: ")
    assert batches == []  # nothing was scored


@contextlib.contextmanager
def _immutable(path: Path):
    """`chattr +i`: not even root may change it (skipped where the file system cannot)."""
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_immutable_output_folder_or_file_fails_at_start(monkeypatch, tmp_path, capsys):
    batches = _use_fake_model(monkeypatch)
    photo = _jpeg(tmp_path / "a.jpg")
    locked = tmp_path / "locked"
    locked.mkdir()
    with _immutable(locked):
        assert _classify(photo, f"--output={locked / 's.csv'}") == cli.EXIT_USAGE
        assert "Operation not permitted (checked before scoring" in _last_error(capsys)
    old = tmp_path / "old.csv"
    old.write_text("previous run\n")
    with _immutable(old):
        assert _classify(photo, f"--output={old}") == cli.EXIT_USAGE
        assert "cannot write --output" in _last_error(capsys)
    assert old.read_text() == "previous run\n" and batches == []


def test_unwritable_saliency_folder_fails_at_start(tmp_path, capsys):
    photo = _jpeg(tmp_path / "a.jpg")
    code = classify_main(
        "--workdir=/no/such/workdir", "--saliency=/sys/heat", photo, f"--output={tmp_path}/s.csv"
    )
    assert code == cli.EXIT_USAGE
    assert _last_error(capsys).startswith("error: --saliency /sys/heat cannot be written: ")
    assert not list(tmp_path.glob("s.csv*"))  # the probe's partial file is removed


def test_disk_error_mid_run_keeps_the_finished_rows(monkeypatch, tmp_path, capsys):
    _use_fake_model(monkeypatch)
    for i in range(5):
        _jpeg(tmp_path / f"{i}.jpg", seed=i)
    write = csv_file.CsvSink.write

    def failing_write(self, cells):
        if self.rows == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, cells)

    monkeypatch.setattr(csv_file.CsvSink, "write", failing_write)
    out = tmp_path / "out" / "s.csv"
    out.parent.mkdir()
    assert _classify(tmp_path, f"--output={out}") == classify.EXIT_OUTPUT_FAILED == 4
    partial = Path(f"{out}.partial")
    assert _last_error(capsys) == (
        f"error: writing the CSV failed: 3 finished rows are kept in {partial} (No space left "
        f"on device); {out} was not written"
    )
    assert not out.exists() and len(_rows(partial)) == 3


def test_ctrl_c_keeps_the_finished_rows_and_says_where(tmp_path):
    """A real SIGINT to a child process scoring slowly: exit 130, one line, the rows kept."""
    for i in range(40):
        _jpeg(tmp_path / f"{i:02d}.jpg", seed=i)
    out = tmp_path / "s.csv"
    # A terminal's Ctrl-C: SIGINT unblocked and handled as Python does by default. The pytest
    # worker that starts the child may hand it SIGINT blocked or ignored (one full-suite run
    # scored all 40 images through the signal), which would test the worker, not classify.
    script = textwrap.dedent(f"""
        import signal, sys, time
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.path[:0] = [{str(REPO / "tests")!r}, {str(REPO / "tests" / "serving")!r}]
        from marco_jax import classify
        from marco_jax.data import preprocess
        from marco_jax.serving import predictors
        from test_classify_hardening import _fake_predict
        def slow(images):
            time.sleep(0.2)
            return _fake_predict(images)
        predictors.exported_predictor = lambda path, **options: predictors.Predictor(
            slow, preprocess.Preprocessing(16, 0.875))
        sys.argv = ["classify", "--model=fake.onnx", "--batch_size=2", "--output={out}",
                    {str(tmp_path)!r}]
        classify.run()
    """)
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    with started([sys.executable, "-c", script], cwd=REPO, **output) as child:
        partial = Path(f"{out}.partial")
        deadline = time.time() + 120
        while time.time() < deadline and (not partial.exists() or len(_rows(partial)) < 4):
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == classify.EXIT_INTERRUPTED == 130, stderr[-2000:]
    kept = len(_rows(partial))
    assert 4 <= kept < 40 and not out.exists()
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted: {kept} finished rows are kept in {partial} (interrupted); {out} was "
        "not written"
    )
    assert "Traceback" not in stderr


# ----------------------------------------------------------------------------- item 5
@pytest.mark.parametrize(
    "content", [b"", os.urandom(300), b"hello, not a model\n", b"\x08\x07\x12\x04trun"]
)
def test_corrupt_onnx_is_exit_2_with_one_line(tmp_path, capsys, content):
    model = tmp_path / "model.onnx"
    model.write_bytes(content)
    photo = _jpeg(tmp_path / "a.jpg")
    fv = flags.FlagValues()
    classify.define_flags(fv)
    argv = fv(["classify", f"--model={model}", str(photo), f"--output={tmp_path}/s.csv"])
    with pytest.raises(SystemExit) as raised:
        classify.main(argv, fv)
    assert raised.value.code == cli.EXIT_USAGE
    message = _last_error(capsys)
    assert message.startswith(f"error: {model} is not a readable ONNX model (ONNX Runtime: ")
    assert message.endswith("export the checkpoint again with marco_jax.export.")
    assert not (tmp_path / "s.csv").exists() and not list(tmp_path.glob("*.partial*"))


# ----------------------------------------------------------------------------- item 6
NASTY_NAMES = [
    '=HYPERLINK("http://x","y").jpg',
    "+1.jpg",
    "-2.jpg",
    "@SUM(A1).jpg",
    "'quoted.jpg",
    "\tlead.jpg",
    "line\rbreak.jpg",
    "line\nfeed.jpg",
    'comma, "quote".jpg',
    "100%.jpg",
    "caf\udce9 %E9.jpg",  # a Latin-1 byte and a literal "%E9"
    "plain.jpg",
]


def test_path_cells_round_trip_and_are_never_formulas():
    for name in NASTY_NAMES:
        cell = csv_file.path_cell(name)
        assert csv_file.path_from_cell(cell) == name, name
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
        assert cell.encode("utf-8")  # always encodable
    assert csv_file.path_cell("plain.jpg") == "plain.jpg"
    assert csv_file.path_cell("=1+1.jpg") == "'=1+1.jpg"
    assert csv_file.text_cell("=cmd") == "'=cmd" and csv_file.text_cell("ok") == "ok"


def test_cr_and_formula_names_give_one_row_each_and_read_back(monkeypatch, tmp_path):
    _use_fake_model(monkeypatch)
    folder = tmp_path / "plate"
    folder.mkdir()
    names = [n for n in NASTY_NAMES if "/" not in n and not n.startswith("'")]
    for i, name in enumerate(names):
        _jpeg(folder / (name if "\udce9" not in name else os.fsdecode(os.fsencode(name))), i)
    out = tmp_path / "s.csv"
    assert _classify(folder, f"--output={out}") == 0
    rows = _rows(out)
    assert len(rows) == len(names)  # a CR in a name no longer splits its row
    paths = [csv_file.path_from_cell(r["path"]) for r in rows]
    assert sorted(os.path.basename(p) for p in paths) == sorted(names)
    text = out.read_bytes().decode("utf-8")  # no newline translation: the CR stays a CR
    assert "\n=" not in text and "\n+" not in text and "\n-" not in text and "\n@" not in text
    assert '"' + str(folder) + '/line\rbreak.jpg"' in text  # quoted, as RFC 4180 says
    for row in rows:
        assert row["error"] == "" and row["prediction"] in CLASS_NAMES


# ----------------------------------------------------------------------------- item 7
def test_workdir_config_not_matching_its_checkpoint_is_refused(trained_workdir, tmp_path, capsys):
    workdir = tmp_path / "workdir"
    shutil.copytree(trained_workdir, workdir)
    config_path = workdir / "config.json"
    config = json.loads(config_path.read_text())
    config["model"]["depth_multiplier"] = config["model"]["depth_multiplier"] * 2
    config_path.write_text(json.dumps(config))
    photo = _jpeg(tmp_path / "a.jpg")
    code = classify_main(f"--workdir={workdir}", photo, f"--output={tmp_path}/s.csv")
    assert code == cli.EXIT_USAGE
    depth = config["model"]["depth_multiplier"]
    assert f"model.depth_multiplier is {depth} there but was {depth / 2}" in _last_error(capsys)
    # A checkpoint without that record (older, or imported): the shapes tell.
    for record in workdir.glob("checkpoints/*/integrity/*"):
        try:
            saved = json.loads(record.read_text())
        except (UnicodeDecodeError, ValueError):
            continue  # Orbax's own files beside the JSON
        if isinstance(saved, dict) and "trained_for" in saved:
            record.write_text(json.dumps({"leaves": saved["leaves"]}))
    code = classify_main(f"--workdir={workdir}", photo, f"--output={tmp_path}/s.csv")
    assert code == cli.EXIT_USAGE
    message = _last_error(capsys)
    found = re.fullmatch(
        rf"error: {re.escape(str(workdir))} \(step \d+\): the checkpoint does not match "
        r"config.json: (\S+) has shape (\([\d, ]+\)) in the checkpoint but (\([\d, ]+\)) for "
        r"the model config.json describes \(config.json was changed after training\?\)\. "
        r"Restore the run's own config.json\.",
        message,
    )
    assert found, message
    assert found.group(2) != found.group(3)  # both shapes named, and they differ
    assert not (tmp_path / "s.csv").exists()


# ----------------------------------------------------------------------------- item 8
def test_empty_list_is_exit_3_like_an_empty_folder(monkeypatch, tmp_path, capsys):
    _use_fake_model(monkeypatch)
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    (tmp_path / "empty").mkdir()
    for target in ("empty.txt", "empty"):
        out = tmp_path / f"{target}.csv"
        assert _classify(tmp_path / target, f"--output={out}") == engine.EXIT_SOME_FAILED
        (row,) = _rows(out)
        assert row["error"] in (
            "is a list file with no paths in it (only blank or # lines)",
            "is a directory with no image files in it",
        )
        assert capsys.readouterr().out.splitlines()[-1] == "scored 0, failed 1, skipped 0"


def test_skipped_folder_entries_are_counted_in_the_summary(monkeypatch, tmp_path, capsys):
    _use_fake_model(monkeypatch)
    folder = tmp_path / "plate"
    folder.mkdir()
    for name in ["a.jpg", "b.jfif", "c.jpe", "d.jpg "]:
        _jpeg(folder / name)
    for name in ["notes.txt", ".DS_Store", "._a.jpg"]:
        (folder / name).write_bytes(b"x")
    assert _classify(folder, f"--output={tmp_path / 's.csv'}") == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "scored 4, failed 0, skipped 3 (2 hidden, 1 .txt)"
    )


def test_max_megapixels_flag_raises_the_limit(monkeypatch, tmp_path, capsys):
    _use_fake_model(monkeypatch)
    photo = _jpeg(tmp_path / "a.jpg")  # 768 pixels
    out = tmp_path / "s.csv"
    assert _classify(photo, f"--output={out}", "--max_megapixels=0.0005") == 3
    assert (
        "over the limit of 0.0; if the file is trusted, raise the limit (classify "
        in (_rows(out)[0]["error"])
    )
    assert _classify(photo, f"--output={out}", "--max_megapixels=0.001") == 0
    assert _classify(photo, f"--output={out}", "--max_megapixels=0") == cli.EXIT_USAGE
    assert "--max_megapixels (0.0) and --memory_gb" in _last_error(capsys)


def test_memory_budget_bounds_the_images_in_flight(monkeypatch, tmp_path):
    paths = [str(_jpeg(tmp_path / f"{i}.jpg", i)) for i in range(12)]
    in_flight, peak, lock = [0], [0], threading.Lock()
    load = engine.image_io.load_image

    def counting_load(*args, **kwargs):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.02)
        try:
            return load(*args, **kwargs)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(engine.image_io, "load_image", counting_load)
    monkeypatch.setattr(engine.image_io, "decode_cost", lambda path: 600)
    rows = list(
        engine.iter_scores(
            paths, _fake_predict, preprocessing=PREPROCESSING, batch_size=4, num_workers=8,
            memory_budget=1000, progress=False,
        )
    )  # fmt: skip
    assert [r.path for r in rows] == paths and all(r.probs for r in rows)
    assert peak[0] == 1  # 8 workers, but the budget holds one 600-byte image at a time
    budget = engine.MemoryBudget(100)
    with budget.reserve(10**9):  # larger than the whole budget: runs, alone
        pass


def test_help_exits_0():
    result = subprocess.run(
        [sys.executable, "-m", "marco_jax.classify", "--help"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--memory_gb" in result.stdout + result.stderr


def test_rows_stream_in_input_order_as_they_finish(tmp_path):
    paths = [str(_jpeg(tmp_path / f"{i}.jpg", i)) for i in range(5)] + [str(tmp_path / "no.jpg")]
    scores = engine.iter_scores(
        paths, _fake_predict, preprocessing=PREPROCESSING, batch_size=2, progress=False
    )
    first = next(scores)  # available after the first batch, not at the end
    assert first.path == paths[0] and first.probs is not None
    rest = list(scores)
    assert [r.path for r in rest] == paths[1:] and rest[-1].error == "no such file"
    buffer = io.StringIO()
    engine.write_csv([first, *rest], buffer)
    assert len(list(csv.DictReader(io.StringIO(buffer.getvalue())))) == 6


def test_crash_while_scoring_says_where_the_finished_rows_are(monkeypatch, tmp_path, capsys):
    for i in range(6):
        _jpeg(tmp_path / f"{i}.jpg", seed=i)
    calls = []

    def predict(images):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("the model broke")
        return _fake_predict(images)

    monkeypatch.setattr(
        predictors,
        "exported_predictor",
        lambda path, **options: predictors.Predictor(predict, PREPROCESSING),
    )
    out = tmp_path / "out.csv"
    with pytest.raises(ValueError, match="the model broke"):  # a crash stays a crash (exit 1)
        _classify(tmp_path, f"--output={out}", "--batch_size=2")
    partial = Path(f"{out}.partial")
    assert _last_error(capsys) == (
        f"error: ValueError while scoring: 2 finished rows are kept in {partial} (the model "
        f"broke); {out} was not written"
    )
    assert len(_rows(partial)) == 2 and not out.exists()


def test_image_size_changed_in_config_json_is_refused_naming_both_values(
    trained_workdir, tmp_path, capsys
):
    """Same arrays at any image size (global pooling): only the checkpoint's record tells."""
    workdir = tmp_path / "workdir"
    shutil.copytree(trained_workdir, workdir)
    config_path = workdir / "config.json"
    config = json.loads(config_path.read_text())
    trained_size = config["model"]["image_size"]
    config["model"]["image_size"] = trained_size + 32
    config_path.write_text(json.dumps(config))
    photo = _jpeg(tmp_path / "a.jpg")
    code = classify_main(f"--workdir={workdir}", photo, f"--output={tmp_path}/s.csv")
    assert code == cli.EXIT_USAGE
    message = _last_error(capsys)
    assert "config.json does not match checkpoint" in message
    assert f"model.image_size is {trained_size + 32} there but was {trained_size}" in message
    assert "preprocessing.image_size" in message
    assert not (tmp_path / "s.csv").exists()


def test_a_corrupted_checkpoint_is_refused_for_scoring(trained_workdir, tmp_path, capsys):
    """Inference loads verify the checkpoint's integrity record, as training's restores do."""
    workdir = tmp_path / "workdir"
    shutil.copytree(trained_workdir, workdir)
    step_dir = max((workdir / "checkpoints").iterdir(), key=lambda p: int(p.name))
    chunks = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    chunk = max(chunks, key=lambda p: p.stat().st_size)
    data = bytearray(chunk.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    chunk.write_bytes(bytes(data))
    photo = _jpeg(tmp_path / "a.jpg")
    code = classify_main(
        f"--workdir={workdir}", "--checkpoint=latest", photo, f"--output={tmp_path}/s.csv"
    )
    assert code == cli.EXIT_USAGE
    message = _last_error(capsys)
    assert f"checkpoint {step_dir.name} in {workdir} is corrupt" in message, message
    assert not (tmp_path / "s.csv").exists()


def test_exports_get_unpadded_batches_and_the_stats_say_where_the_time_went(tmp_path):
    paths = [str(_jpeg(tmp_path / f"{i}.jpg", i)) for i in range(5)]
    for pad, expected in ((True, [2, 2, 2]), (False, [2, 2, 1])):
        sizes, stats = [], engine.ScoringStats()

        def predict(images, sizes=sizes):
            sizes.append(len(images))
            return _fake_predict(images)

        rows = list(
            engine.iter_scores(
                paths, predict, preprocessing=PREPROCESSING, batch_size=2, progress=False,
                pad_batches=pad, stats=stats,
            )
        )  # fmt: skip
        assert [r.path for r in rows] == paths and sizes == expected
        assert stats.images == 5 and stats.read_cpu_s > 0 and 0 < stats.read_share <= 1
        assert stats.wall_s >= stats.predict_s > 0 and stats.cpu_s >= stats.read_cpu_s
