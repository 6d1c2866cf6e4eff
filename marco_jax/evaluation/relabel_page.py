"""The relabeling page: one HTML file that an expert labels with, in any browser, offline.

Beside it, `images/` holds each candidate's photograph as the dataset stores it (full size: a
micro-crystal needs every pixel) and `thumbnails/` the grid's small copies; the page links both
relatively and loads thumbnails lazily, so the folder opens from a disk, a share or a USB stick,
with no server, however many candidates there are. The page (`relabel_page.html`, `.css`, `.js`,
package data, inlined here) filters by confusion pair, shows a picture full size on click, labels
with the keys 1-4 or a click, and saves the builder's `corrected_labels.csv` (`filename,label`,
the format `tfds_marco/marco/manual_sources.load_corrected_labels` reads) through the browser's
download. Choices survive a reload (the browser's localStorage) until saved.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

from PIL import Image

from marco_jax.data import preprocess
from marco_jax.evaluation.per_image import thumbnail_jpeg
from marco_jax.labels import CLASS_NAMES

if TYPE_CHECKING:  # the type only: relabel imports this module
    from marco_jax.evaluation.relabel import Candidate

IMAGES_DIR = "images"
THUMBNAILS_DIR = "thumbnails"
CORRECTIONS_NAME = "corrected_labels.csv"  # what the builder looks for in the manual directory
CARDS_PER_PAGE = 200  # cards drawn at once: keeps the page quick with thousands of candidates
_MAGIC_EXTENSIONS = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"))


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _write_original(encoded: bytes, path_stem: str) -> str:
    """The stored bytes as they are (JPEG or PNG, as the `full` builder keeps them); anything
    else as a PNG of the decoded pixels, which every browser shows. Returns the file's path."""
    for magic, extension in _MAGIC_EXTENSIONS:
        if encoded.startswith(magic):
            with open(path_stem + extension, "wb") as f:
                f.write(encoded)
            return path_stem + extension
    Image.fromarray(preprocess.decode_image(encoded)).save(path_stem + ".png", format="PNG")
    return path_stem + ".png"


def _item(rank: int, candidate: Candidate, image: str, thumbnail: str) -> dict[str, Any]:
    return {
        "rank": rank,
        "split": candidate.split,
        "filename": candidate.filename,
        "source": candidate.source,
        "label": CLASS_NAMES[candidate.label],
        "original": candidate.original_label,
        "predicted": CLASS_NAMES[candidate.predicted],
        "probs": [round(p, 6) for p in candidate.probs],
        "disagreement": round(candidate.disagreement, 6),
        "image": image,
        "thumb": thumbnail,
    }


def _page(items: list[dict[str, Any]], *, title: str, intro: str, key: str) -> str:
    data = {
        "classes": list(CLASS_NAMES),
        "items": items,
        "key": key,
        "page_size": CARDS_PER_PAGE,
        "csv_name": CORRECTIONS_NAME,
    }
    # "</" would end the <script> element early, whatever a filename holds.
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    keys = " ".join(
        f"<kbd>{number}</kbd> {html.escape(name)}," for number, name in enumerate(CLASS_NAMES, 1)
    )
    save_help = (
        f"Save writes {CORRECTIONS_NAME} (<code>filename,label</code>), the file the dataset "
        "builder reads: put it in the dataset's manual directory and rebuild "
        "(<code>build('full', ..., rebuild=True)</code>), or merge it into an existing one "
        "with <code>python -m marco_jax.relabel --export_corrections "
        f"{CORRECTIONS_NAME} --out MANUAL_DIR/{CORRECTIONS_NAME}</code>."
    )
    replacements = {
        "@@TITLE@@": html.escape(title),
        "@@INTRO@@": html.escape(intro),
        "@@KEYS@@": keys,
        "@@SAVE_HELP@@": save_help,
        "@@CSV_NAME@@": CORRECTIONS_NAME,
        "@@STYLE@@": _asset("relabel_page.css"),
        "@@SCRIPT@@": _asset("relabel_page.js"),
        "@@DATA@@": payload,  # last: data never passes through another replacement
    }
    page = _asset("relabel_page.html")
    for marker, text in replacements.items():
        page = page.replace(marker, text)
    return page


def write_page(
    candidates: Sequence[Candidate],
    sources: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str,
    *,
    thumbnail_size: int,
) -> str:
    """Writes the page to `path` and the candidates' pictures into images/ and thumbnails/
    beside it (named by rank); returns `path`. `sources[split][index]["image"]` are the stored
    images the candidates point at."""
    out_dir = os.path.dirname(os.path.abspath(path))
    for folder in (IMAGES_DIR, THUMBNAILS_DIR):
        os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
    items = []
    for rank, candidate in enumerate(candidates, start=1):
        encoded = sources[candidate.split][candidate.index]["image"]
        stem = f"{rank:06d}"
        original = _write_original(encoded, os.path.join(out_dir, IMAGES_DIR, stem))
        thumbnail = f"{THUMBNAILS_DIR}/{stem}.jpg"
        with open(os.path.join(out_dir, thumbnail), "wb") as f:
            f.write(thumbnail_jpeg(encoded, thumbnail_size))
        items.append(
            _item(rank, candidate, f"{IMAGES_DIR}/{os.path.basename(original)}", thumbnail)
        )
    # The browser keeps unsaved choices per candidate list, so two rounds never mix.
    key = hashlib.sha256(
        "\n".join(f"{c.split}/{c.filename}" for c in candidates).encode()
    ).hexdigest()[:16]
    intro = (
        f"{len(candidates)} images most in disagreement with the model (disagreement = "
        "1 - p(label)), most disputed first. Label each with its true class."
    )
    with open(path, "w", encoding="utf-8") as f:
        f.write(_page(items, title="Relabeling candidates", intro=intro, key=key))
    return path
