"""What `classify` checks before it scores anything, so that a run never destroys an input and
never fails only after all the work. (That a checkpoint matches its workdir's config.json is
checked by every loader: `runs.store.load`.)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

from marco_jax import cli
from marco_jax.serving import csv_file

# The first bytes of the formats classify reads (a file starting so is a picture, not a CSV).
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"BM")


def check_output_is_not_an_input(
    output: str, arguments: Sequence[str], inputs: Sequence[str]
) -> None:
    """Refuses an --output that names an input: an image or list to score, or a PATH given.

    Also refuses an existing output whose content is an image (a photograph the CSV would
    replace), even when that image is not among the inputs.

    Raises:
      cli.ArgumentError: naming the input and what to do.
    """
    target = os.path.realpath(output)
    for path in (*arguments, *inputs):
        if os.path.realpath(path) == target or _same_file(path, output):
            raise cli.ArgumentError(
                f"--output {csv_file.display(output)} is the input "
                f"{csv_file.display(path)}: the CSV would overwrite it. Choose another "
                "output file (e.g. scores.csv)."
            )
    if os.path.isfile(output) and _starts_like_an_image(output):
        raise cli.ArgumentError(
            f"--output {csv_file.display(output)} exists and is an image, not a CSV: "
            "the CSV would overwrite it. Choose another output file (e.g. scores.csv)."
        )


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _starts_like_an_image(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(8).startswith(_IMAGE_SIGNATURES)
    except OSError:
        return False


def probe_folder(folder: str, flag: str) -> None:
    """Creates `folder` if needed and writes (then removes) a file in it.

    Raises:
      cli.ArgumentError: the folder cannot be created or written, before any scoring.
    """
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".classify-probe-"):
            pass
    except OSError as e:
        raise cli.ArgumentError(
            f"{flag} {csv_file.display(folder)} cannot be written: {e.strerror or e} "
            "(checked before scoring; choose a writable folder)."
        ) from e
