"""What a `full` build was built from, stored beside the dataset, and how today's inputs differ.

Why: TFDS reuses a prepared dataset whenever its directory exists, so adding images or a
`corrected_labels.csv` to the manual directory and building again silently returned the old
dataset. The builder now records the inputs (every file's relative path, size and mtime, the
label map's and the corrections' contents) as BUILD_INPUTS_NAME, and refuses to reuse a dataset
whose inputs changed, naming what changed and how to rebuild.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from etils import epath

BUILD_INPUTS_NAME = "build_inputs.json"
_EXAMPLES = 3


class BuildInputsChangedError(ValueError):
    """The prepared dataset was built from other inputs than those there now."""


def manifest(
    manual_dir: epath.Path, label_map: epath.Path, corrections: epath.Path | None
) -> dict[str, Any]:
    """The record of a build's inputs (JSON-serialisable)."""
    files = {}
    root = epath.Path(manual_dir)
    stack = [root]
    while stack:
        for path in stack.pop().iterdir():
            if path.is_dir():
                stack.append(path)
            else:
                stat = path.stat()
                files[path.relative_to(root).as_posix()] = [int(stat.length), int(stat.mtime)]
    return {
        "manual_dir": str(root),
        "files": dict(sorted(files.items())),
        "label_map": _digest(label_map),
        "corrections": None if corrections is None else str(corrections),
        "corrections_digest": _digest(corrections),
    }


def _digest(path: epath.Path | None) -> str | None:
    if path is None or not epath.Path(path).exists():
        return None
    return hashlib.sha256(epath.Path(path).read_bytes()).hexdigest()


def write(path: epath.Path, record: dict[str, Any]) -> None:
    epath.Path(path).write_text(json.dumps(record, indent=1))


def read(path: epath.Path) -> dict[str, Any] | None:
    """The stored record, or None for a dataset built before records were kept."""
    path = epath.Path(path)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two records, in words (empty: the same inputs)."""
    found = []
    if old.get("manual_dir") != new.get("manual_dir"):
        found.append(f"manual_dir {old.get('manual_dir')} -> {new.get('manual_dir')}")
    before, after = old.get("files", {}), new.get("files", {})
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if list(before[k]) != list(after[k]))
    for what, names in (("added", added), ("removed", removed), ("changed", changed)):
        if names:
            found.append(f"{len(names)} files {what} (e.g. {', '.join(names[:_EXAMPLES])})")
    if old.get("label_map") != new.get("label_map"):
        found.append("the label map changed")
    if (old.get("corrections"), old.get("corrections_digest")) != (
        new.get("corrections"),
        new.get("corrections_digest"),
    ):
        found.append("the corrected labels changed")
    return found
