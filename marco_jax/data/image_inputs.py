"""Which files a `classify` run scores: command-line PATHs expanded into image files, and a
count of everything a folder scan passed over.

Why the counts: a scan that silently passes over files (a `.jfif`, a name ending `.jpg ` with a
trailing space, a stray `.txt`) makes a plate look complete when it is not, so every entry a scan
does not score is counted by kind, for the run's summary line (`Inputs.skipped_summary`).
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Iterator, Sequence

# Lower-case; matched case-insensitively against file names (trailing spaces ignored, as a
# Windows user never sees them) when a folder is scanned. .jfif/.jpe/.jif are JPEG's other
# registered extensions; .tif/.tiff and .bmp as usual.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".jif", ".png", ".tif", ".tiff", ".bmp")
# A PATH with one of these extensions is a text file listing paths, one per line.
LIST_EXTENSIONS = (".txt", ".lst", ".list")

SKIP_HIDDEN = "hidden"
SKIP_DUPLICATE = "listed twice"
SKIP_LINKED_AGAIN = "folder reached again by a link"


class InputListError(ValueError):
    """A list file (PATH ending in .txt/.lst/.list) that cannot be read: the user's invocation
    is wrong, so the run stops instead of guessing which images were meant."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"list file {path}: {reason}")
        self.path = path
        self.reason = reason


@dataclasses.dataclass
class Inputs:
    """The files to score, in order, and how many entries were passed over, by kind: a file
    extension (".txt"), SKIP_HIDDEN, SKIP_DUPLICATE or SKIP_LINKED_AGAIN."""

    paths: list[str]
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def skipped_summary(self) -> str:
        """Like "7 (3 .txt, 2 hidden, ...)", most first; "0" when nothing was skipped."""
        total = sum(self.skipped.values())
        if not total:
            return "0"
        counts = sorted((-n, kind) for kind, n in self.skipped.items() if n)
        kinds = ", ".join(f"{-n} {kind}" for n, kind in counts)
        return f"{total} ({kinds})"


def is_image_name(name: str) -> bool:
    return name.rstrip().lower().endswith(IMAGE_EXTENSIONS)


def is_list_name(name: str) -> bool:
    return name.lower().endswith(LIST_EXTENSIONS)


def scan_inputs(paths: Sequence[str]) -> Inputs:
    """Expands command-line PATHs into the image files to score, in order, each once.

    - A folder is scanned recursively (symbolic links followed, each real folder once) for
      names ending in IMAGE_EXTENSIONS, any case, trailing spaces ignored, sorted; names
      starting with "." (hidden files, macOS "._x.jpg" resource forks) are passed over. An
      entry with an image extension that is a directory, and a folder that cannot be listed,
      are kept as inputs so their rows say what is wrong; a folder with no image files at all
      is itself kept likewise. Every other entry is counted in `Inputs.skipped`.
    - A file ending in LIST_EXTENSIONS lists paths, one a line, taken exactly as written
      (leading and trailing spaces are part of a file name); lines that are empty or only
      white space, and lines starting with "#", are ignored; "~" is expanded, relative paths
      are relative to the list's folder. Each entry is expanded like a PATH (an image, a folder
      or another list). A list with no entries is kept as an input, as an empty folder is, so
      its row says so. Bytes that are not UTF-8 (a Latin-1 name) are kept as the file system
      keeps them, so the name still finds its file.
    - Anything else is taken as an image file as given, even if missing or oddly named: its
      row will say what is wrong.
    Paths naming the same file the same way after normalisation are kept once, at first sight.

    Raises:
      InputListError: a list file that cannot be read or that lists itself.
    """
    inputs = Inputs([])
    unique: dict[str, str] = {}
    for path in paths:
        for found in _expand(path, frozenset(), inputs.skipped):
            key = os.path.abspath(found)
            if key in unique:
                inputs.skipped[SKIP_DUPLICATE] += 1
            else:
                unique[key] = found
    inputs.paths = list(unique.values())
    return inputs


def collect_inputs(paths: Sequence[str]) -> list[str]:
    """`scan_inputs(paths).paths`: the files to score, without the skip counts."""
    return scan_inputs(paths).paths


def _expand(path: str, lists_open: frozenset[str], skipped: collections.Counter) -> Iterator[str]:
    if os.path.isdir(path):
        images = sorted(scan_folder(path, skipped))
        yield from images or [path]
    elif is_list_name(path):
        key = os.path.realpath(path)
        if key in lists_open:
            raise InputListError(path, "lists itself (directly or through another list)")
        entries = read_list(path)
        if not entries:
            yield path  # its row says it lists nothing, as an empty folder's does
        for entry in entries:
            yield from _expand(entry, lists_open | {key}, skipped)
    else:
        yield path


def read_list(path: str) -> list[str]:
    """The paths a list file names, resolved against its folder (see `scan_inputs`)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputListError(path, "no such file") from None
    except OSError as e:
        raise InputListError(path, f"cannot read it: {e.strerror}") from e
    not_text = "not a UTF-8 (or UTF-16) text file of paths, one per line"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # Windows Notepad's "Unicode"
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError:
            raise InputListError(path, not_text) from None
    elif b"\x00" in data:
        raise InputListError(path, f"{not_text} (binary content)")
    else:  # UTF-8 with an optional BOM; other bytes kept as the file system keeps them
        text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "surrogateescape")
    folder = os.path.dirname(path)
    lines = (line.removesuffix("\r") for line in text.split("\n"))
    return [
        os.path.normpath(os.path.join(folder, os.path.expanduser(line)))
        for line in lines
        if line.strip() and not line.startswith("#")
    ]


def scan_folder(folder: str, skipped: collections.Counter | None = None) -> list[str]:
    """Image-named entries under `folder`, and its sub-folders that cannot be listed, unsorted;
    what is passed over is counted into `skipped` (see `Inputs`)."""
    skipped = collections.Counter() if skipped is None else skipped
    found: list[str] = []
    seen: set[str] = set()
    for root, dirs, files in os.walk(
        folder, followlinks=True, onerror=lambda e: found.append(e.filename)
    ):
        real = os.path.realpath(root)
        if real in seen:  # a symbolic link back into a folder already scanned
            skipped[SKIP_LINKED_AGAIN] += 1
            dirs.clear()
            continue
        seen.add(real)
        for name in dirs:
            if name.startswith("."):
                skipped[SKIP_HIDDEN] += 1
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        found.extend(os.path.join(root, name) for name in dirs if is_image_name(name))
        for name in files:
            if name.startswith("."):
                skipped[SKIP_HIDDEN] += 1
            elif is_image_name(name):
                found.append(os.path.join(root, name))
            else:
                skipped[_kind(name)] += 1
    return found


def _kind(name: str) -> str:
    """How a passed-over file is counted: its extension, or "no extension"."""
    extension = os.path.splitext(name.rstrip())[1].lower()
    return extension if 1 < len(extension) <= 12 else "no extension"
