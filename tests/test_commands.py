"""What every command shares: --help fits a screen and exits 0, and a wrong flag, config field,
value or path is one line that says what to change, with exit 2. In this process (the parse and
`cli.run_parsed`, as `cli.run` calls them) except where the real console entry matters."""

from __future__ import annotations

import importlib
import pathlib
import subprocess
import sys

import pytest
from absl import flags
from helpers import invoke_command

from marco_jax import cli, config_utils
from tfds_marco.marco import Builder

COMMANDS = ("main", "evaluate", "classify", "export", "relabel", "summary", "import_release")
SCREEN_LINES = 40


def _module(command: str):
    return importlib.import_module(f"marco_jax.{command}")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_says_what_the_command_does_with_an_example_and_every_flag(command):
    module = _module(command)
    text = cli.help_text(module.__doc__, module.define_flags, module.EXAMPLE)
    own = flags.FlagValues()
    module.define_flags(own)
    assert len(text.splitlines()) <= SCREEN_LINES, text
    assert f"python -m marco_jax.{command}" in text
    for name in own:
        assert f"--{name}" in text or f"--[no]{name}" in text, name
    assert "--verbosity" in text


def test_console_script_help_lists_its_flags_and_exits_0():
    """absl lists flags only for __main__: a console script printed just a usage line."""
    script = pathlib.Path(sys.executable).with_name("marco-train")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--config" in result.stdout and "--workdir" in result.stdout
    assert "python -m marco_jax.main --config synthetic" in result.stdout
    assert len(result.stdout.splitlines()) <= SCREEN_LINES


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--config=ci", "--workdir=W", "--bogus"], "Unknown command line flag 'bogus'"),
        (["--config=ci"], "--workdir must have a value other than None"),
        (
            ["--config=ci", "--workdir=W", "--config.model.depth_multipler=0.2"],
            "config.model has no field 'depth_multipler'; did you mean depth_multiplier?",
        ),
        (
            ["--config=ci", "--workdir=W", "--config.modle.image_size=151"],
            "config has no field 'modle'; did you mean model?",
        ),
        (
            ["--config=ci", "--workdir=W", "--config.model.depth_multiplier=abc"],
            "could not convert string to float: 'abc'",
        ),
        (
            ["--config=nope", "--workdir=W"],
            "'nope' is neither a config file nor one of " + ", ".join(config_utils.config_names()),
        ),
        (
            ["--config=ci", "--workdir=W", "--config.input.global_batch_size=-8"],
            "config.input.global_batch_size=-8 must be an integer >= 1",
        ),
        (["--config=ci", "--workdir=W", "extra"], "unexpected arguments ['extra']"),
    ],
)
def test_training_refuses_a_wrong_flag_field_or_value_in_one_line(
    args, expected, monkeypatch, capsys, tmp_path
):
    args = [arg.replace("=W", f"={tmp_path / 'w'}") for arg in args]
    code, lines, _ = invoke_command("main", args, monkeypatch, capsys)
    assert code == cli.EXIT_USAGE
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not (tmp_path / "w").exists()  # the log of a refused run goes to a temporary folder


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--format=onnx"], "{missing} is not a marco_jax training workdir"),
        (["--format=onnx", "--checkpoint=bset"], "'bset' is neither 'best', 'latest'"),
        (["--format=pdf"], "value should be one of <saved_model|tflite|onnx|openvino>"),
    ],
)
def test_export_refuses_a_wrong_workdir_or_value_in_one_line(
    args, expected, monkeypatch, capsys, tmp_path
):
    missing = tmp_path / "nope"
    code, lines, _ = invoke_command("export", [f"--workdir={missing}", *args], monkeypatch, capsys)
    assert code == cli.EXIT_USAGE
    assert len(lines) == 1 and expected.format(missing=missing) in lines[0], lines


def test_shipped_configs_are_named_without_a_checkout_path():
    assert config_utils.resolve("synthetic") == config_utils.CONFIG_DIR / "synthetic.py"
    assert config_utils.CONFIG_DIR.parent.name == "marco_jax"  # package data, installed with it
    by_name, by_path = config_utils.load_config("ci"), config_utils.load_config("configs/ci.py")
    assert by_name.to_dict() == by_path.to_dict()


def test_a_tfrecord_build_is_refused_with_how_to_convert_it(
    trained_workdir, tmp_path, monkeypatch, capsys
):
    """The stock `tfds build` writes TFRecord files, which cannot be read by index."""
    builder = Builder(config="synthetic_tiny", data_dir=str(tmp_path))
    builder.download_and_prepare(file_format="tfrecord")  # what `tfds build` does by default
    code, lines, _ = invoke_command(
        "evaluate",
        [f"--workdir={trained_workdir}", f"--data_dir={tmp_path}", f"--out={tmp_path / 'r'}"],
        monkeypatch,
        capsys,
    )
    assert code == cli.EXIT_USAGE
    assert len(lines) == 1, lines
    assert f"{builder.data_dir} holds marco/synthetic_tiny as tfrecord files" in lines[0]
    assert "tfds convert_format --dataset_version_dir=" in lines[0]
