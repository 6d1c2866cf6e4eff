"""A picture of synthetic drops beside real photographs, to judge the renderer by eye.

Written by `python -m marco_jax.synthetic --contact-sheet docs/synthetic_vs_real.png`.
"""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image, ImageDraw

from marco_jax.labels import CLASS_NAMES
from marco_jax.synthetic import render_drop


def _square_tile(img: Image.Image, tile: int) -> Image.Image:
    """Centre crop to a square and resize: real photographs are 4:3."""
    w, h = img.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2)
    return img.convert("RGB").resize((tile, tile), Image.BILINEAR, box=box)


def contact_sheet(
    real_dir: pathlib.Path | None, per_class: int = 5, max_real: int = 4, tile: int = 144
) -> Image.Image:
    """Synthetic examples of each class (left) beside real photographs of it (right)."""
    real = {}
    if real_dir is not None:
        for path in sorted(real_dir.glob("*/*/*")):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
                real.setdefault(path.parent.name, []).append(path)
    label_w, gap, head = 96, 12, 22
    sheet = Image.new(
        "RGB",
        (label_w + (per_class + max_real) * tile + gap, head + len(CLASS_NAMES) * tile),
        "white",
    )
    draw = ImageDraw.Draw(sheet)
    draw.text((label_w, 5), f"synthetic (render_drop, {tile} px)", fill="black")
    where = f"{real_dir.parent.name}/{real_dir.name}" if real_dir else "none found"
    draw.text((label_w + per_class * tile + gap, 5), f"real photographs ({where})", fill="black")
    for row, name in enumerate(CLASS_NAMES):
        top = head + row * tile
        draw.text((6, top + tile // 2 - 6), name, fill="black")
        for i in range(per_class):
            img = Image.fromarray(render_drop(seed=i, label=row, size=tile))
            sheet.paste(img, (label_w + i * tile, top))
        paths = real.get(name, [])
        picks = [paths[int(k)] for k in np.linspace(0, len(paths) - 1, min(max_real, len(paths)))]
        for i, path in enumerate(picks):
            with Image.open(path) as img:
                sheet.paste(_square_tile(img, tile), (label_w + (per_class + i) * tile + gap, top))
    return sheet
