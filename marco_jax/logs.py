"""What a command shows on the console, and the log file that keeps everything else.

The console is for the person who ran the command: one progress bar per long pass
(`progress`), the project's own messages (INFO and above from marco_jax and tfds_marco: the
metric lines, evaluation results, where things were written), errors from anyone, and the
outcome (`result`). Everything else goes to the command's log file, `WORKDIR/logs/<command>.log`
(appended, a header line per run): library INFO and warnings (Orbax, absl, clu's parameter table,
grain, JAX), Python warnings, what native code prints, and a copy of every console line, so
nothing is lost. `--verbosity 0` (absl's flag; 1 for DEBUG) shows it all on the console as well.

File descriptor 2 is the log file while a command runs, and `sys.stderr` a duplicate of the
terminal. TensorFlow's start-up banners ("oneDNN custom operations are on", absl's "All log
messages before absl::InitializeLog() is called are written to STDERR") are written by C++ at
import; TF_CPP_MIN_LOG_LEVEL does not silence them (TensorFlow 2.20, measured). With the
descriptor swapped, what Python writes (the bar, the project's lines, a traceback) reaches the
console, while what native code writes lands in the file, as does all output of the processes a
command starts (grain's workers), which inherit descriptor 2.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import IO

import tqdm
from absl import flags
from absl import logging as absl_logging
from absl.logging import converter

LOG_DIR = "logs"  # inside a workdir
_PACKAGE_DIR = Path(__file__).resolve().parent
_OWN_DIRS = tuple(str(path) + os.sep for path in (_PACKAGE_DIR, _PACKAGE_DIR.parent / "tfds_marco"))
_OWN_LOGGERS = ("marco_jax", "tfds_marco")
_SHOW = "marco_jax_console"  # a LogRecord attribute: False keeps the record off the console
_LOGGER = logging.getLogger("marco_jax")
# A bar redraws at most this often (seconds); off a terminal (a file, CI) far less often, since
# every redraw adds a line's worth of bytes.
_REDRAW_S, _REDRAW_OFF_TERMINAL_S = 0.2, 60.0

_active: CommandLog | None = None


def is_own(record: logging.LogRecord) -> bool:
    """Whether marco_jax or tfds_marco logged the record (absl logs everyone's as "absl")."""
    if record.name.startswith(_OWN_LOGGERS):
        return True
    return os.path.realpath(record.pathname).startswith(_OWN_DIRS)


class _ConsoleHandler(logging.Handler):
    """Writes through tqdm, which lifts an open progress bar above the line and redraws it."""

    def __init__(self, stream: IO[str], verbose: bool):
        super().__init__()
        self.stream = stream
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, _SHOW, True) or not super().filter(record):
            return False
        if self.verbose:
            return True
        return record.levelno >= logging.ERROR or (
            record.levelno >= logging.INFO and is_own(record)
        )

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging's own convention
            self.handleError(record)


class _PlainFormatter(logging.Formatter):
    """The message alone; "warning: " or "error: " in front of those."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.ERROR:
            return f"error: {text}"
        return f"warning: {text}" if record.levelno >= logging.WARNING else text


class _AbslFormatter(logging.Formatter):
    """absl's line prefix (level, time, thread, file:line) on every record, whoever logged it."""

    def format(self, record: logging.LogRecord) -> str:
        return absl_logging.get_absl_log_prefix(record) + super().format(record)


def _terminal_stream() -> tuple[IO[str], int | None]:
    """A stream on a duplicate of descriptor 2, if sys.stderr writes there; else sys.stderr
    itself (a test's capture), and no duplicate."""
    try:
        writes_to_2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        writes_to_2 = False
    if not writes_to_2:
        return sys.stderr, None
    sys.stderr.flush()
    duplicate = os.dup(2)
    stream = open(  # noqa: SIM115 - closed by CommandLog.__exit__
        duplicate,
        "w",
        buffering=1,
        encoding=sys.stderr.encoding or "utf-8",
        errors="backslashreplace",
        closefd=False,
    )
    return stream, duplicate


def _open_in(folder: str | os.PathLike, command: str) -> IO[str]:
    """FOLDER/logs/<command>.log, appended (OSError when it cannot be written)."""
    directory = Path(folder) / LOG_DIR
    directory.mkdir(parents=True, exist_ok=True)
    return open(directory / f"{command}.log", "a", buffering=1, encoding="utf-8")  # noqa: SIM115


def _open_log(command: str, folder: str | os.PathLike | None) -> IO[str]:
    """FOLDER/logs/<command>.log, or the same name in a temporary folder when FOLDER is None or
    cannot be written (a read-only shared model, say)."""
    for candidate in [folder] if folder is not None else []:
        try:
            return _open_in(candidate, command)
        except OSError:
            pass
    try:
        return _open_in(Path(tempfile.gettempdir()) / "marco_jax", command)
    except OSError:
        return open(os.devnull, "a", encoding="utf-8")  # noqa: SIM115 - nowhere writable at all


class CommandLog:
    """The console and the log file of one command run; `cli.run` enters it around `main`.

    verbosity: absl's --verbosity when given (then the console shows every record from that
    level up, as absl formats them), None for the quiet console of the module docstring.
    """

    def __init__(self, command: str, folder: str | os.PathLike | None, verbosity: int | None):
        self.command = command
        self.folder = folder
        self.verbose = verbosity is not None
        self.level = logging.INFO if verbosity is None else converter.absl_to_standard(verbosity)
        if verbosity is not None and verbosity > converter.ABSL_DEBUG:
            self.level = logging.DEBUG - (verbosity - 1)  # absl's vlog levels
        self.path: Path | None = None

    def __enter__(self) -> CommandLog:
        global _active
        self.file = _open_log(self.command, self.folder)
        self.path = Path(self.file.name) if self.file.name != os.devnull else None
        self.start = self.file.tell()  # where this run's lines begin (see move_to)
        now = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
        self.file.write(
            f"==== {now} {socket.gethostname()} pid {os.getpid()}: {' '.join(sys.argv)}\n"
        )
        self._stderr = sys.stderr
        self.console, self._terminal = _terminal_stream()
        if self._terminal is not None:
            os.dup2(self.file.fileno(), 2)
            sys.stderr = self.console
        root, absl_logger = logging.getLogger(), logging.getLogger("absl")
        self._saved = (root.level, list(root.handlers), absl_logger.level)
        root.removeHandler(absl_logging.get_absl_handler())
        to_file, to_console = (
            logging.StreamHandler(self.file),
            _ConsoleHandler(self.console, self.verbose),
        )
        to_file.setFormatter(_AbslFormatter())
        to_console.setFormatter(_AbslFormatter() if self.verbose else _PlainFormatter())
        to_console.setLevel(self.level)
        self._handlers, self.to_file = [to_file, to_console], to_file
        for handler in self._handlers:
            root.addHandler(handler)
        root.setLevel(min(self.level, logging.INFO))
        absl_logger.setLevel(logging.NOTSET)  # absl's records follow the root's level
        logging.captureWarnings(True)
        _active = self
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb) -> None:
        global _active
        if kind is not None and not issubclass(kind, SystemExit | KeyboardInterrupt):
            _LOGGER.error("%s: %s", kind.__name__, error, exc_info=error, extra={_SHOW: False})
            tqdm.tqdm.write(f"(the log {self.path} holds the details)", file=self.console)
        elif isinstance(error, SystemExit):
            self.file.write(f"==== exit {error.code}\n")
        _active = None
        logging.captureWarnings(False)
        root = logging.getLogger()
        level, handlers, absl_level = self._saved
        for handler in self._handlers:
            root.removeHandler(handler)
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
        logging.getLogger("absl").setLevel(absl_level)
        self.console.flush()
        if self._terminal is not None:
            os.dup2(self._terminal, 2)
            sys.stderr = self._stderr
            self.console.close()
            os.close(self._terminal)
        self.file.close()


def move_to(folder: str | os.PathLike) -> None:
    """Continues the running command's log in FOLDER/logs/, with the lines it has written so far
    (no-op outside a command, when it is there already, or when FOLDER cannot be written).

    Training calls it once its config is accepted: a new workdir does not exist before, and an
    invocation refused in one line leaves no folder behind.
    """
    active = _active
    target = Path(folder) / LOG_DIR / f"{active.command}.log" if active is not None else None
    if (
        target is None
        or "://" in str(folder)
        or (active.path is not None and active.path.resolve() == target.resolve())
    ):
        return
    try:
        new = _open_in(folder, active.command)
    except OSError:
        return
    active.file.flush()
    if active.path is not None:
        with open(active.path, encoding="utf-8", errors="replace") as old:
            old.seek(active.start)
            new.write(old.read())
    if active._terminal is not None:
        os.dup2(new.fileno(), 2)
    active.to_file.setStream(new)
    active.file.close()
    active.file, active.path, active.start = new, target, 0


def requested_verbosity(fv: flags.FlagValues) -> int | None:
    """absl's --verbosity (-v) when given on the command line, else None."""
    for values in (fv, flags.FLAGS):
        if "verbosity" in values and values["verbosity"].present:
            return values["verbosity"].value
    return None


def log_path() -> Path | None:
    """The running command's log file (None outside a command, or with nowhere to write)."""
    return _active.path if _active is not None else None


def result(text: str) -> None:
    """Prints a command's outcome on stdout (for the user, or a script reading the last line)
    and keeps it in the log file."""
    print(text, flush=True)
    if _active is not None:
        _LOGGER.info(text, extra={_SHOW: False})


def keep(text: str, level: int = logging.INFO) -> None:
    """Writes `text` into the log file only (e.g. an error line already on the console)."""
    if _active is not None:
        _LOGGER.log(level, text, extra={_SHOW: False})


def progress(
    total: int | None,
    description: str,
    unit: str,
    *,
    initial: int = 0,
    leave: bool = True,
    enabled: bool = True,
) -> tqdm.tqdm:
    """The bar of a long pass on the console (stderr), with rate and ETA; disabled (a no-op with
    the same methods) when not `enabled`, e.g. on the processes other than 0 of a cluster job."""
    stream = sys.stderr
    terminal = hasattr(stream, "isatty") and stream.isatty()
    return tqdm.tqdm(
        total=total,
        initial=initial,
        desc=description,
        unit=unit,
        file=stream,
        leave=leave,
        disable=not enabled,
        dynamic_ncols=terminal,
        mininterval=_REDRAW_S if terminal else _REDRAW_OFF_TERMINAL_S,
    )


@contextmanager
def library_output_to_file() -> Iterator[bool]:
    """Sends what Python code prints to stdout and stderr into the log file, while a quiet
    command runs a library that prints its own progress (TFDS's dataset build: its bars and
    "Downloading and preparing dataset ..." lines). Yields whether it did."""
    if _active is None or _active.verbose:
        yield False
        return
    with redirect_stdout(_active.file), redirect_stderr(_active.file):
        yield True
