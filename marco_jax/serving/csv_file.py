"""The CSV file `classify` writes: cells safe in a spreadsheet and exact for a program, written
row by row to a partial file beside the output and renamed over it only when the run ends.

Why each rule:
- A file name is bytes on Linux, and names from SMB shares are often Latin-1, not UTF-8: one such
  name used to kill the run at the very end. The file is UTF-8, and a name that is not UTF-8 is
  escaped in its cell (below), so every name can be written and read back.
- Fields holding a comma, a quote, a carriage return or a line feed are quoted as RFC 4180 says
  (Python's csv module leaves a lone CR unquoted when lines end in LF, so one input read back as
  two rows).
- A cell starting with "=", "+", "-" or "@" (or a tab or CR) is a formula to a spreadsheet:
  `=HYPERLINK(...).jpg` would run. Such cells get a leading apostrophe, which spreadsheets take
  as "this is text".
- Rows are written as they are scored, so an interruption (Ctrl-C) or a disk error keeps every
  finished row, in `<output>.partial`; a complete run renames that file over the output, so the
  output is never a half-written CSV and a failed run never destroys the previous one.

The path cell, exactly (`path_from_cell` undoes it):
- a path that is valid UTF-8 and does not start with one of `= + - @ TAB CR '` is written as
  it is;
- any other path is written as "'" followed by the path in which every byte that is not part
  of valid UTF-8 is written %XX (two upper-case hex digits) and every "%" is written %25.
So a program reads the path back as: if the cell starts with "'", drop that character and
percent-decode the rest to bytes (`urllib.parse.unquote_to_bytes`), then take those bytes as the
file name (`os.fsdecode`); otherwise the cell is the path.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from typing import TextIO

# Leading characters a spreadsheet treats as a formula (OWASP "CSV injection"), and the
# apostrophe itself, so that a leading apostrophe always means "escaped".
_FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r", "'")
_NEEDS_QUOTES = (",", '"', "\r", "\n")
PARTIAL_SUFFIX = ".partial"


def _has_undecodable_bytes(text: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in text)


def path_cell(path: str) -> str:
    """The CSV cell of an input path (module docstring); `path_from_cell` inverts it."""
    if not path.startswith(_FORMULA_LEADS) and not _has_undecodable_bytes(path):
        return path
    escaped = "".join(
        f"%{ord(c) - 0xDC00:02X}" if "\udc80" <= c <= "\udcff" else "%25" if c == "%" else c
        for c in path
    )
    return "'" + escaped


def path_from_cell(cell: str) -> str:
    """The exact path back from a path cell written by `path_cell`."""
    if not cell.startswith("'"):
        return cell
    return os.fsdecode(urllib.parse.unquote_to_bytes(cell[1:]))


def text_cell(text: str) -> str:
    """Any other text cell (the error column): never a formula, always encodable."""
    if _has_undecodable_bytes(text):
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "'" + text if text.startswith(_FORMULA_LEADS) else text


def display(path: str) -> str:
    """A path for a message on the terminal: bytes that are not UTF-8 shown as \\xNN."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def csv_line(cells: list[str]) -> str:
    """One RFC 4180 line (LF-terminated) of already-safe cells."""
    return (
        ",".join(
            '"' + cell.replace('"', '""') + '"' if any(c in cell for c in _NEEDS_QUOTES) else cell
            for cell in cells
        )
        + "\n"
    )


class OutputError(OSError):
    """The CSV could not be written; `partial` is the file holding the rows written so far
    (None when nothing was kept)."""

    def __init__(self, message: str, partial: str | None = None):
        super().__init__(message)
        self.partial = partial


class CsvSink:
    """Writes the CSV to `<output>.partial` (a free name beside it) as rows come, and renames
    it over `output` on `commit`. Opening it is the start-up probe: it creates the file and
    writes the header, so an unwritable folder or a full disk fails before any scoring.

    An output that exists and is not a regular file (/dev/stdout, a FIFO, /dev/full) is written
    directly, without a partial file: renaming over a device would replace the device.
    """

    def __init__(self, output: str, header: list[str]):
        self.output = output
        self.rows = 0
        self._direct = os.path.exists(output) and not os.path.isfile(output)
        try:
            if self._direct:
                self.partial = None
                self._stream: TextIO = open(output, "w", encoding="utf-8", newline="")  # noqa: SIM115
            else:
                if os.path.exists(output):  # replacing it must be allowed (chattr +i, chmod)
                    os.close(os.open(output, os.O_WRONLY | os.O_APPEND))
                self.partial, self._stream = _create_partial(output)
            self._stream.write(csv_line(header))
            self._stream.flush()
        except OSError as e:
            self._discard()
            raise OutputError(
                f"cannot write --output {display(output)}: {e.strerror or e} (checked before "
                "scoring; choose a writable file)"
            ) from e

    def write(self, cells: list[str]) -> None:
        """One row, flushed at once, so that every finished score survives an interruption."""
        self._stream.write(csv_line(cells))
        self._stream.flush()
        self.rows += 1

    def commit(self) -> None:
        """Makes the output complete: flush to disk, rename the partial file over the output.

        Raises:
          OutputError: the last writes or the rename failed; the partial file is kept.
        """
        try:
            self._stream.flush()
            if not self._direct:
                os.fsync(self._stream.fileno())
            self._stream.close()
            if self.partial is not None:
                os.replace(self.partial, self.output)
        except OSError as e:
            raise self.failure(e) from e

    def failure(self, error: BaseException | str) -> OutputError:
        """Closes what can be closed, keeps the partial file if it holds rows, and describes
        where the finished rows are, in one line; `error` says why (an exception or words)."""
        with contextlib.suppress(OSError):
            self._stream.close()
        if self.rows == 0:
            self._discard()
            return OutputError("no row was finished; nothing was written")
        where = display(self.partial) if self.partial else display(self.output)
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        if isinstance(error, OSError) and error.filename is None and not error.strerror:
            reason = str(error)
        return OutputError(
            f"{self.rows} finished rows are kept in {where} ({reason}); "
            f"{display(self.output)} was not written",
            self.partial,
        )

    def abandon(self) -> None:
        """Removes the partial file (a run that stopped before scoring anything)."""
        with contextlib.suppress(OSError):
            self._stream.close()
        self._discard()

    def _discard(self) -> None:
        partial = getattr(self, "partial", None)
        if partial is not None and os.path.exists(partial):
            os.remove(partial)


def _create_partial(output: str) -> tuple[str, TextIO]:
    """A new file `<output>.partial` (or .partial.1, ... if that exists: an earlier run's kept
    rows are never overwritten), created with the default permissions."""
    for attempt in range(1000):
        path = output + PARTIAL_SUFFIX + (f".{attempt}" if attempt else "")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        return path, open(fd, "w", encoding="utf-8", newline="")
    raise FileExistsError(f"{output}{PARTIAL_SUFFIX}.* all exist; remove old partial files")
