"""What the commands share: one way to define and run them, their common flags, --help, the
console and log file, and the exit code for wrong input.

Every command module has `define_flags(fv)`, `main(argv, fv) -> exit code or None`, `EXAMPLE`
and `run()` (= `cli.run(main, define_flags, EXAMPLE)`), so that a test runs it on a private
`flags.FlagValues` (`parse_flags`, then `run_parsed`, as `run` does). The flags that name a run
mean the same everywhere: `--workdir DIR` (a training workdir) and, where a checkpoint is read,
`--checkpoint best|latest|STEP` and `--raw_weights`, parsed by `parse_checkpoint` and loaded by
`runs.store.load`, with the same errors in every command. `run_parsed` runs `main` inside the
command's console/log-file split (`marco_jax.logs`), its log in WORKDIR/logs/.

A wrong argument (an unknown flag or config field, a bad value, a workdir without checkpoints,
an unknown step) ends the run with EXIT_USAGE and one line naming the fault, never with a
traceback: the user has to fix the invocation, not the code. absl exits with 1 on flag errors;
1 stays Python's code for a crash.
"""

from __future__ import annotations

import logging
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import app, flags

from marco_jax import logs

EXIT_USAGE = 2  # as argparse's; serving.engine's EXIT_SOME_FAILED (3) keeps clear of it
CHECKPOINT_NAMES = ("best", "latest")


class ArgumentError(ValueError):
    """Wrong input (a flag value, a missing workdir or checkpoint): the tools print it and exit
    with EXIT_USAGE."""


def parse_checkpoint(text: str) -> str | int:
    """A --checkpoint value: "best", "latest" or a step number; anything else: ArgumentError."""
    value = str(text).strip().lower()
    if value in CHECKPOINT_NAMES:
        return value
    if value.isdigit():
        return int(value)
    raise ArgumentError(f"checkpoint {text!r} is neither 'best', 'latest' nor a step number.")


def define_workdir_flag(
    fv: flags.FlagValues, help: str = "Training workdir (config.json and checkpoints/)."
) -> None:
    flags.DEFINE_string("workdir", None, help, flag_values=fv)


def define_checkpoint_flags(fv: flags.FlagValues, weights_help: str = "the raw weights") -> None:
    """--checkpoint and --raw_weights, for commands that read a workdir's checkpoint (the value is
    parsed where it is used, by `runs.store.load`, so every command reports it alike)."""
    flags.DEFINE_string(
        "checkpoint", "best", "Which checkpoint: best, latest or a step number.", flag_values=fv
    )
    flags.DEFINE_bool(
        "raw_weights", False, f"Use {weights_help} instead of their EMA.", flag_values=fv
    )


def check_no_positional(argv: Sequence[str]) -> None:
    """Fails (EXIT_USAGE) when a command that takes only flags is given more."""
    if len(argv) > 1:
        fail(f"unexpected arguments {list(argv[1:])}")


def fail(message: str) -> NoReturn:
    """Ends the program with EXIT_USAGE after printing `message` to stderr (and the log file)."""
    sys.stderr.write(f"error: {message}\n")
    logs.keep(message, logging.ERROR)
    sys.exit(EXIT_USAGE)


HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort")
_ABSL_HELP_FLAGS = ("--helpfull", "--helpxml")
_HELP_WIDTH = 100
_NAME_WIDTH = 22
# Console scripts (pyproject.toml) by module; logs/<name>.log in the workdir.
COMMAND_NAMES = {"main": "train"}


def asked_for_help(argv: Sequence[str]) -> bool:
    """Whether the command line asks for help (absl's --helpfull included)."""
    return any(arg.split("=", 1)[0] in HELP_FLAGS + _ABSL_HELP_FLAGS for arg in argv)


def command_name(main: Callable[..., object]) -> str:
    """The name of `main`'s command: its module's ("evaluate", ...; "train" for marco_jax.main),
    also when it runs as __main__ (`python -m`)."""
    spec = getattr(sys.modules.get(main.__module__), "__spec__", None)
    module = (spec.name if spec is not None else main.__module__).rsplit(".", 1)[-1]
    return COMMAND_NAMES.get(module, module)


def _required(flag: flags.Flag) -> bool:
    return any("must have a value other than None" in str(v.message) for v in flag.validators)


def _help_line(name: str, text: str) -> str:
    return textwrap.fill(
        text,
        _HELP_WIDTH,
        initial_indent=f"  {name:<{_NAME_WIDTH}} ",
        subsequent_indent=" " * (_NAME_WIDTH + 3),
    )


def _flag_line(flag: flags.Flag) -> str:
    text = flag.help
    if _required(flag):
        text += " (required)"
    elif flag.default not in (None, "", [], False) and not flag.boolean:
        default = (
            ",".join(map(str, flag.default)) if isinstance(flag.default, list) else flag.default
        )
        text += f" (default {default})"
    return _help_line(f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}", text)


def help_text(
    doc: str | None, define_flags: Callable[[flags.FlagValues], None], example: str
) -> str:
    """--help: what the command does (its docstring's first paragraph), one example and its own
    flags, one screen. absl lists a module's flags only when it is __main__, so a console script
    (`marco-train`) printed just a usage line; this reads them from `define_flags` instead."""
    summary = (doc or "").strip().split("\n\n", 1)[0]
    own = flags.FlagValues()
    define_flags(own)
    lines = [textwrap.fill(" ".join(summary.split()), _HELP_WIDTH), "", "Example:", f"  {example}"]
    lines += ["", "Flags:"]
    lines += [_flag_line(own[name]) for name in own if own[name].name == name]
    lines.append(
        _help_line(
            "--verbosity, -v",
            "absl's: also show library messages on the console, 0 INFO, 1 DEBUG (by default "
            "they go only to the log file, WORKDIR/logs/<command>.log).",
        )
    )
    lines.append(_help_line("--helpfull", "Every flag, absl's included."))
    return "\n".join(lines)


def parse_flags(fv: flags.FlagValues, argv: Sequence[str]) -> list[str]:
    """fv(argv), with a wrong flag, value or config field ending the run in one line and
    EXIT_USAGE (absl would exit 1, the crash code, or show a traceback)."""
    try:
        return fv(list(argv))
    except flags.Error as error:
        fail(f"{error} (see --help)")


def _log_folder(fv: flags.FlagValues) -> str | None:
    """The workdir, where the command has one that exists; else None: the log goes to a
    temporary folder (training moves it into the workdir it creates, `logs.move_to`)."""
    workdir = fv["workdir"].value if "workdir" in fv else None
    return workdir if workdir and "://" not in workdir and os.path.isdir(workdir) else None


def run_parsed(
    main: Callable[[Sequence[str], flags.FlagValues], int | None],
    argv: Sequence[str],
    fv: flags.FlagValues,
) -> int | None:
    """`main` on parsed flags inside its console/log-file split (`logs.CommandLog`)."""
    with logs.CommandLog(command_name(main), _log_folder(fv), logs.requested_verbosity(fv)):
        return main(argv, fv)


def run(
    main: Callable[[Sequence[str], flags.FlagValues], int | None],
    define_flags: Callable[[flags.FlagValues], None],
    example: str,
) -> None:
    """app.run(main) with the flags defined only now (so that the commands can be imported
    together without clashing flag names), our --help, flag errors exiting with EXIT_USAGE and
    the console/log-file split around main."""
    if any(arg.split("=", 1)[0] in HELP_FLAGS for arg in sys.argv[1:]):
        print(help_text(sys.modules[main.__module__].__doc__, define_flags, example))
        sys.exit(0)
    fv = flags.FLAGS
    define_flags(fv)
    try:
        app.run(
            lambda argv: run_parsed(main, argv, fv),
            flags_parser=lambda argv: parse_flags(fv, argv),
        )
    except SystemExit as e:  # absl's --helpfull exits 1, which the commands reserve for a crash
        if e.code == 1 and asked_for_help(sys.argv[1:]):
            raise SystemExit(0) from None
        raise
