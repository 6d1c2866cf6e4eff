"""What the inference command-line tools (evaluate, classify, relabel) share: exit codes for
wrong input, and the --checkpoint value (best, latest or a step) of every command.

A wrong argument (a workdir without checkpoints, an unknown step, a bad flag) ends the run with
EXIT_USAGE and one line naming the fault, never with a traceback: the user has to fix the
invocation, not the code. absl exits with 1 on flag errors; 1 stays Python's code for a crash.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import app, flags

EXIT_USAGE = 2  # as argparse's; classify_io's EXIT_SOME_FAILED (3) keeps clear of it
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


def fail(message: str) -> NoReturn:
    """Ends the program with EXIT_USAGE after printing `message` to stderr."""
    sys.stderr.write(f"error: {message}\n")
    sys.exit(EXIT_USAGE)


HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def asked_for_help(argv: Sequence[str]) -> bool:
    """Whether the command line asks for absl's help (which exits 1, the crash code)."""
    return any(arg.split("=", 1)[0] in HELP_FLAGS for arg in argv)


def run(
    main: Callable[[Sequence[str]], int | None], define_flags: Callable[[], None] | None = None
) -> None:
    """app.run(main) with the flags defined only now (so that the tools can be imported together
    without clashing flag names) and flag errors exiting with EXIT_USAGE."""
    if define_flags is not None:
        define_flags()

    def parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            fail(f"{error} (pass --helpshort for the flags)")

    try:
        app.run(main, flags_parser=parse)
    except SystemExit as e:  # absl's help exits 1, which the commands reserve for a crash
        if e.code == 1 and asked_for_help(sys.argv[1:]):
            raise SystemExit(0) from None
        raise
