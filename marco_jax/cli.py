"""What the commands share: one way to define and run them, their common flags, and the exit
code for wrong input.

Every command module has `define_flags(fv)`, `main(argv, fv) -> exit code or None` and `run()`
(= `cli.run(main, define_flags)`), so that a test runs it on a private `flags.FlagValues`. The
flags that name a run mean the same everywhere: `--workdir DIR` (a training workdir) and, where a
checkpoint is read, `--checkpoint best|latest|STEP` and `--raw_weights`, parsed by
`parse_checkpoint` and loaded by `runs.store.load`, with the same errors in every command.

A wrong argument (a workdir without checkpoints, an unknown step, a bad flag) ends the run with
EXIT_USAGE and one line naming the fault, never with a traceback: the user has to fix the
invocation, not the code. absl exits with 1 on flag errors; 1 stays Python's code for a crash.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import app, flags

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
    """Ends the program with EXIT_USAGE after printing `message` to stderr."""
    sys.stderr.write(f"error: {message}\n")
    sys.exit(EXIT_USAGE)


HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def asked_for_help(argv: Sequence[str]) -> bool:
    """Whether the command line asks for absl's help (which exits 1, the crash code)."""
    return any(arg.split("=", 1)[0] in HELP_FLAGS for arg in argv)


def run(
    main: Callable[[Sequence[str], flags.FlagValues], int | None],
    define_flags: Callable[[flags.FlagValues], None],
) -> None:
    """app.run(main) with the flags defined only now (so that the commands can be imported
    together without clashing flag names) and flag errors exiting with EXIT_USAGE."""
    fv = flags.FLAGS
    define_flags(fv)

    def parse(argv: list[str]) -> list[str]:
        try:
            return fv(argv)
        except flags.Error as error:
            fail(f"{error} (pass --helpshort for the flags)")

    try:
        app.run(lambda argv: main(argv, fv), flags_parser=parse)
    except SystemExit as e:  # absl's help exits 1, which the commands reserve for a crash
        if e.code == 1 and asked_for_help(sys.argv[1:]):
            raise SystemExit(0) from None
        raise
