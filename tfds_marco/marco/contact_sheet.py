"""A picture of synthetic drops beside real photographs, to judge the renderer by eye.

Written by `python -m tfds_marco.marco.contact_sheet --contact-sheet docs/synthetic_vs_real.png`.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
from PIL import Image, ImageDraw

from marco_jax.labels import CLASS_NAMES
from tfds_marco.marco.synthetic import render_drop


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


def main(argv: list[str] | None = None) -> None:
    repo = pathlib.Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contact-sheet", type=pathlib.Path, required=True, help="PNG to write")
    parser.add_argument(
        "--real-dir",
        type=pathlib.Path,
        default=repo.parent / "shared/real_drops",
        help="real photographs, as <source>/<class>/<image>",
    )
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument("--tile", type=int, default=144)
    args = parser.parse_args(argv)
    real_dir = args.real_dir if args.real_dir.is_dir() else None
    if real_dir is None:
        print(f"no real photographs at {args.real_dir}: synthetic examples only")
    sheet = contact_sheet(real_dir, per_class=args.per_class, tile=args.tile)
    args.contact_sheet.parent.mkdir(parents=True, exist_ok=True)
    # An adaptive palette keeps the committed PNG small; the tiles are only for looking at.
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
        args.contact_sheet, optimize=True
    )
    print(f"wrote {args.contact_sheet} ({args.contact_sheet.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
