"""A SmoothGrad map shown where a person can judge it: over the photograph at the photograph's
own resolution, beside the untouched photograph, with a colour bar.

The map is computed on the model's input (e.g. 599 x 599 px resampled from the photograph's
central square, `preprocess.Preprocessing.eval_square`); it is mapped back onto that square of
the original pixels (bilinear, `scipy.ndimage.affine_transform`: output pixel centres in input
coordinates), so a micro-crystal's few pixels carry their own heat. Pixels the model never saw
(outside the square) are dimmed and the square is outlined. The heat scale is the map's own
(`saliency.relative_heat`: 1 = its 99th percentile), computed on the model's map so that the
unseen border does not shift it. Images smaller than MIN_PANEL_SIDE are enlarged by a whole
factor (nearest neighbour), so that every pixel stays a visible block and the text fits.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw

from marco_jax.serving import saliency

MIN_PANEL_SIDE = 256  # px: below this the titles and colour bar would not fit
UNSEEN_BRIGHTNESS = 0.55  # pixels outside the model's square, dimmed
PANEL_TOP = 30  # px above the panels, for their titles
_GAP, _BOTTOM, _BAR, _BAR_LABELS = 16, 8, 18, 62  # layout, pixels


def heat_on_original(
    heat: np.ndarray, height: int, width: int, square: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """(heat [height, width] over the original's pixels, mask of the pixels inside the square).

    `heat` [S, S] covers the source square (top, left, side); pixel centres are matched:
    original pixel y sits at (y + 0.5 - top) * S / side - 0.5 in the map.
    """
    from scipy import ndimage  # only where a figure is drawn

    top, left, side = square
    scale = heat.shape[0] / side
    resampled = ndimage.affine_transform(
        np.asarray(heat, np.float64),
        [scale, scale],
        offset=[(0.5 - top) * scale - 0.5, (0.5 - left) * scale - 0.5],
        output_shape=(height, width),
        order=1,
        mode="nearest",
    )
    rows = (np.arange(height) + 0.5 >= top) & (np.arange(height) + 0.5 < top + side)
    cols = (np.arange(width) + 0.5 >= left) & (np.arange(width) + 0.5 < left + side)
    inside = rows[:, None] & cols[None, :]
    return np.where(inside, resampled, 0.0), inside


def _panels(
    original: np.ndarray, saliency_map: np.ndarray, square: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """(the photograph, the heat over it), both [H, W, 3] uint8 at the photograph's size."""
    height, width = original.shape[:2]
    heat, inside = heat_on_original(saliency.relative_heat(saliency_map), height, width, square)
    heated = saliency.blend(original, heat)
    if not inside.all():
        heated = np.where(inside[..., None], heated, heated * UNSEEN_BRIGHTNESS).astype(np.uint8)
        picture = Image.fromarray(heated)
        top, left, side = square
        line = max(1, round(min(height, width) / 300))
        last = max(side - 1, 0)  # a square under a pixel wide (a 1 x 8 px image) is one pixel
        ImageDraw.Draw(picture).rectangle(
            [left, top, left + last, top + last], outline=(0, 255, 255), width=line
        )
        heated = np.asarray(picture)
    return original, heated


def figure_png(
    original: np.ndarray,
    saliency_map: np.ndarray,
    square: tuple[float, float, float],
    *,
    title: str,
) -> bytes:
    """The photograph and the heat over it side by side, pixel for pixel, with a colour bar."""
    import io

    from matplotlib import cm, colors
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    original = np.asarray(original)
    left_panel, right_panel = _panels(original, saliency_map, square)
    height, width = original.shape[:2]
    factor = max(1, math.ceil(MIN_PANEL_SIDE / max(height, width)))
    if factor > 1:
        left_panel, right_panel = (
            np.repeat(np.repeat(p, factor, axis=0), factor, axis=1)
            for p in (left_panel, right_panel)
        )
    panel_h, panel_w = left_panel.shape[:2]
    fig_w = 2 * panel_w + 2 * _GAP + _BAR + _BAR_LABELS
    fig_h = panel_h + PANEL_TOP + _BOTTOM
    dpi = 100
    fig = Figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)
    fig.figimage(left_panel, xo=0, yo=_BOTTOM)
    fig.figimage(right_panel, xo=panel_w + _GAP, yo=_BOTTOM)
    text_y = 1 - 0.5 * PANEL_TOP / fig_h
    fig.text(2 / fig_w, text_y, f"image, {width} x {height} px", va="center", fontsize=10)
    fig.text((panel_w + _GAP + 2) / fig_w, text_y, title, va="center", fontsize=10)
    bar = fig.add_axes(
        ((2 * panel_w + 2 * _GAP) / fig_w, _BOTTOM / fig_h, _BAR / fig_w, panel_h / fig_h)
    )
    mappable = cm.ScalarMappable(colors.Normalize(0.0, 1.0), saliency.DEFAULT_COLORMAP)
    fig.colorbar(mappable, cax=bar).set_label(
        f"saliency (1 = {saliency.DEFAULT_CLIP_PERCENTILE:g}th pct.)", fontsize=8
    )
    bar.tick_params(labelsize=8)
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()


def write_figure_png(
    path: str | os.PathLike,
    original: np.ndarray,
    saliency_map: np.ndarray,
    square: tuple[float, float, float],
    *,
    title: str,
) -> None:
    """Writes `figure_png` to `path`, creating its folder."""
    png = figure_png(original, saliency_map, square, title=title)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(png)
