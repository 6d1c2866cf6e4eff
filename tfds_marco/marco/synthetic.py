"""Procedural images of crystallization drops, for the `synthetic` MARCO config and for tests.

The real MARCO images cannot be downloaded here, yet the whole framework (input pipeline,
training, evaluation, export) must run end to end. These images imitate what matters for the
task (paper section 2): a drop inside a well seen by one of several imagers, whose content is
clear, crystalline, precipitated, or a process failure ("other"). The imager style (zoom,
colour or greyscale, illumination tint and level, vignetting, noise, JPEG) is drawn
independently of the class, so that a classifier has to look at edges and texture inside the
drop rather than at the mean colour (tests/test_synthetic.py checks that).

Everything is float32 numpy or PIL, one function per phenomenon; scalars are Python floats so
that nothing silently promotes a whole image to float64 (that halves the speed).

Compare with the real photographs:
`python -m tfds_marco.marco.contact_sheet --contact-sheet out.png`.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from marco_jax.labels import CLASS_NAMES

CRYSTALS, PRECIPITATE, CLEAR, OTHER = (
    CLASS_NAMES.index(n) for n in ("crystals", "precipitate", "clear", "other")
)
# Process failures scored "other" (paper section 2, "Relabeling"): imaging failures, dispensing
# errors, and the phase separation and skins that the relabeling also put there.
IMAGING_FAILURES = ("dark", "overexposed", "defocus")
DISPENSING_FAILURES = ("no_drop", "off_centre", "smeared", "split")
FAILURES = IMAGING_FAILURES + DISPENSING_FAILURES + ("skin", "oil")
TAU = 2.0 * math.pi


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1]; cached because every layer needs them."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(c, c)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _log_u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Noise in [-1, 1] varying over ~size/cells pixels (clouds, stains, light gradients)."""
    coarse = rng.uniform(-1.0, 1.0, (cells + 3, cells + 3)).astype(np.float32)
    step = size / cells
    big = Image.fromarray(coarse, mode="F").resize(
        (size, size), Image.BICUBIC, box=(1.0, 1.0, 1.0 + size / step, 1.0 + size / step)
    )
    return np.asarray(big)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a non-negative float map through PIL's fast 8-bit filter."""
    peak = max(float(a.max()), 1e-6)
    img = Image.fromarray((a * (255.0 / peak)).clip(0, 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(sigma)), np.float32) * (peak / 255.0)


def _sample_style(rng: np.random.Generator) -> dict:
    """An imager: plate geometry, optics and illumination, drawn independently of the class."""
    return dict(
        zoom=_u(rng, 0.7, 1.5),  # well radius / half image; > 1: field of view inside the well
        squareness=float(rng.choice([2.0, 2.0, 3.0, 6.0])),  # superellipse exponent of the well
        centre=(float(rng.normal(0, 0.06)), float(rng.normal(0, 0.06))),
        background=_u(rng, 0.02, 0.15) if rng.random() < 0.5 else _u(rng, 0.3, 0.8),
        wall=_u(rng, 0.05, 0.45),  # width of the dark well wall, in well radii
        grey=bool(rng.random() < 0.3),
        level=_u(rng, 0.45, 1.1),
        tints=rng.uniform(0.55, 1.0, (2, 3)).astype(np.float32),
        rainbow=_u(rng, 0.1, 0.5) if rng.random() < 0.2 else 0.0,
        vignette=_u(rng, 0.0, 0.7),
        noise=_u(rng, 0.004, 0.04),
        optics_blur=_u(rng, 0.3, 1.0),
        jpeg=int(rng.integers(40, 96)),
    )


def _well(rng: np.random.Generator, size: int, style: dict) -> tuple[np.ndarray, np.ndarray]:
    """Luminance of the plate (bright well floor, dark wall, plastic around) and the floor mask."""
    x, y = _grid(size)
    p, zoom = style["squareness"], style["zoom"]
    dx, dy = np.abs(x - style["centre"][0]), np.abs(y - style["centre"][1])
    d = (np.hypot(dx, dy) if p == 2.0 else (dx**p + dy**p) ** (1.0 / p)) * (1.0 / zoom)
    px = 2.0 / size / zoom
    floor = np.clip((1.0 - d) / (1.5 * px) + 0.5, 0.0, 1.0)
    outer = np.clip((1.0 + style["wall"] - d) / (3 * px) + 0.5, 0.0, 1.0)
    mottle = 1.0 + 0.25 * _smooth_noise(rng, size, size // 4) + 0.15 * _smooth_noise(rng, size, 6)
    plastic = style["background"] * mottle
    wall = _u(rng, 0.01, 0.08) * (1.0 + 0.5 * _smooth_noise(rng, size, size // 3))
    lum = floor + (1.0 - floor) * (outer * wall + (1.0 - outer) * plastic)
    rim = _u(rng, 0.0, 0.5) * np.exp(-0.5 * ((d - 1.0) * (1.0 / px)) ** 2)  # bright rim line
    return lum + rim, floor


def _drop_field(rng, size, cx, cy, radius, stretch=1.0, angle=0.0):
    """Signed distance (> 0 inside, image units) to a wobbly ellipse, and the polar angle."""
    x, y = _grid(size)
    ca, sa = math.cos(angle), math.sin(angle)
    u = (x - cx) * ca + (y - cy) * sa
    v = ((y - cy) * ca - (x - cx) * sa) * stretch
    theta = np.arctan2(v, u)
    wobble = 1.0
    for k in (2, 3, 4):
        wobble = wobble + (0.08 / k * float(rng.normal())) * np.cos(k * theta + _u(rng, 0, TAU))
    return radius * wobble - np.hypot(u, v), theta


def _meniscus(rng, size, sdist, theta, radius) -> np.ndarray:
    """Dark crescent inside the drop edge (refraction at the curved surface), bright halo out."""
    side = _u(rng, 0, TAU)
    crescent = np.maximum(np.cos(theta - side), 0.0) ** _u(rng, 1.0, 4.0)
    strength = _u(rng, 0.1, 0.45) + _u(rng, 0.2, 0.9) * crescent
    width = radius * (_u(rng, 0.02, 0.08) + _log_u(rng, 0.01, 0.35) * crescent)
    inside = np.maximum(sdist, 0.0)
    dark = np.where(sdist > 0, strength * np.exp(-inside / width), 0.0)
    halo = _u(rng, 0.0, 0.3) * np.exp(-((sdist * (size / 3.0)) ** 2))
    return 1.0 - dark + halo


def _striations(rng, theta, sdist, radius) -> np.ndarray:
    """Faint radial streaks, as plate bottoms and drop surfaces show in real images."""
    n = 720
    streaks = np.convolve(rng.normal(0, 1, n), np.ones(5) / 5, "same").astype(np.float32)
    idx = ((theta + math.pi) * (n / TAU)).astype(np.int32) % n
    return 1.0 + _u(rng, 0.0, 0.06) * streaks[idx] * np.clip(1.0 - sdist / radius, 0, 1)


def _disc(draw: ImageDraw.ImageDraw, centre, radius: float, **style) -> None:
    draw.ellipse(
        [centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius], **style
    )


def _points_in_drop(rng, n, drop, size, spread=0.85) -> np.ndarray:
    """Pixel positions spread uniformly over the inner part of a drop (cx, cy, radius)."""
    cx, cy, radius = drop
    r = radius * spread * np.sqrt(rng.random(n))
    a = rng.uniform(0, TAU, n)
    return np.stack([cx + r * np.cos(a) + 1, cy + r * np.sin(a) + 1], 1) * (size / 2)


def _polyhedron(draw, rng, centre, length):
    """A faceted crystal: a polygon cut into triangles lit from one side, with dark edges."""
    n = int(rng.choice([3, 4, 4, 5, 6, 6, 8]))
    if rng.random() < 0.3:
        angles = np.sort(rng.uniform(0, TAU, n))
    else:
        angles = np.arange(n) * (TAU / n) + _u(rng, 0, TAU)
    aspect, rot = _u(rng, 0.3, 1.0), _u(rng, 0, math.pi)
    pts = np.stack([np.cos(angles), aspect * np.sin(angles)], 1) * (length / 2)
    rotation = np.array([[math.cos(rot), math.sin(rot)], [-math.sin(rot), math.cos(rot)]])
    pts = pts @ rotation + centre
    apex = centre + rng.uniform(-0.3, 0.3, 2) * length
    light, contrast = _u(rng, 0, TAU), _u(rng, 0.3, 0.8)
    for a, b in zip(pts, np.roll(pts, -1, axis=0), strict=True):
        mid = (a + b) / 2 - apex
        shade = 1.0 + contrast * math.cos(math.atan2(mid[1], mid[0]) - light)
        draw.polygon([tuple(apex), tuple(a), tuple(b)], fill=shade)
    width = 1 + int(length > 40 and rng.random() < 0.5)
    draw.polygon([tuple(p) for p in pts], outline=_u(rng, 0.05, 0.35), width=width)


def _needles(draw, rng, centre, length):
    """A spray of thin needles from a common point, or a single needle."""
    n = int(rng.choice([1, 2, 3, int(rng.integers(4, 14))]))
    base, spread = _u(rng, 0, TAU), float(rng.choice([0.3, 1.0, math.pi]))
    for _ in range(n):
        a = base + _u(rng, -spread, spread)
        direction = np.array([math.cos(a), math.sin(a)]) * length * _u(rng, 0.4, 1.2)
        start = centre - _u(rng, 0, 0.5) * direction
        width = 1 + int(rng.random() < 0.2)
        draw.line([tuple(start), tuple(centre + direction)], fill=_u(rng, 0.1, 0.45), width=width)


def _plate(draw, rng, centre, length):
    """A thin elongated plate (a parallelogram): bright body, dark edges."""
    a, w = _u(rng, 0, math.pi), length * _u(rng, 0.1, 0.35)
    u = np.array([math.cos(a), math.sin(a)]) * (length / 2)
    v = np.array([-math.sin(a), math.cos(a)]) * (w / 2) + u * _u(rng, -0.3, 0.3)
    pts = [centre + u + v, centre + u - v, centre - u - v, centre - u + v]
    draw.polygon([tuple(p) for p in pts], fill=_u(rng, 0.9, 1.3), outline=_u(rng, 0.1, 0.4))


def _crystals(rng, size, drop) -> np.ndarray:
    """Transmission of crystals of one habit: from one small crystal to a few dozen large."""
    layer = Image.new("F", (size, size), 1.0)
    draw = ImageDraw.Draw(layer)
    habit = [_polyhedron, _polyhedron, _needles, _plate][int(rng.integers(4))]
    count = int(_log_u(rng, 1, 40))
    drop_px = drop[2] * size / 2
    # Fewer crystals grow larger; none is under 8 px at 256 px, so that a lone small crystal still
    # spans a few pixels at the embedded default model's input.
    typical = drop_px * _log_u(rng, 0.08, 0.4) / count**0.25
    for p in _points_in_drop(rng, count, drop, size):
        habit(draw, rng, p, max(8.0 * size / 256, typical * _u(rng, 0.6, 1.4)))
    return np.asarray(layer)


def _precipitate(rng, size, drop) -> tuple[np.ndarray, np.ndarray]:
    """Granular or cloudy matter; returns (transmission, absorbance that tints it brown)."""
    level = _u(rng, 0.0, 0.6)
    cloud = np.clip(_smooth_noise(rng, size, int(rng.integers(2, 7))) + level, 0.1, 1)
    cloud = cloud ** _u(rng, 0.5, 2.0)
    n = int(_log_u(rng, 1500, 20000) * (size / 256) ** 2)
    pts = _points_in_drop(rng, n, drop, size, spread=1.0).astype(np.int32).clip(0, size - 1)
    pts = pts[rng.random(n) < cloud[pts[:, 1], pts[:, 0]]]
    grains = np.bincount(
        pts[:, 1] * size + pts[:, 0], rng.uniform(0.2, 0.8, len(pts)), minlength=size * size
    ).astype(np.float32)
    absorb = _blur(grains.reshape(size, size), _u(rng, 0.4, 1.5) * size / 256) * 2.0
    if rng.random() < 0.5:
        absorb = absorb + cloud * _u(rng, 0.1, 0.5)  # amorphous haze around the grains
    absorb = np.clip(absorb, 0.0, 0.9)
    return 1.0 - 0.6 * absorb, absorb


def _debris(rng, size, floor) -> np.ndarray:
    """Dust specks, fibres and air bubbles: in every class, so none gives a class away."""
    layer = Image.new("F", (size, size), 1.0)
    draw = ImageDraw.Draw(layer)
    s = size / 256
    for _ in range(rng.poisson(5)):
        _disc(draw, rng.uniform(0.1, 0.9, 2) * size, _u(rng, 0.5, 2.0) * s, fill=_u(rng, 0.2, 0.7))
    for _ in range(rng.poisson(0.5)):  # a fibre: a curved random walk
        p, a = rng.uniform(0.1, 0.9, 2) * size, _u(rng, 0, TAU)
        path = [tuple(p)]
        for _ in range(int(rng.integers(4, 12))):
            a += float(rng.normal(0, 0.4))
            p = p + 4 * s * np.array([math.cos(a), math.sin(a)])
            path.append(tuple(p))
        draw.line(path, fill=_u(rng, 0.3, 0.7), width=1)
    for _ in range(rng.poisson(0.6)):  # an air bubble: dark ring, bright centre
        r = _u(rng, 2, 10) * s
        _disc(
            draw, rng.uniform(0.2, 0.8, 2) * size, r, fill=1.15, outline=0.35, width=1 + int(r / 5)
        )
    return 1.0 + (np.asarray(layer) - 1.0) * floor


def _oil_or_skin(rng, size, drop, kind) -> np.ndarray:
    """Phase separation (dark oil droplets) or a wrinkled protein skin, both scored "other"."""
    layer = Image.new("F", (size, size), 1.0)
    draw = ImageDraw.Draw(layer)
    drop_px = drop[2] * size / 2
    if kind == "oil":
        for p in _points_in_drop(rng, int(rng.integers(3, 30)), drop, size):
            r = drop_px * _log_u(rng, 0.02, 0.12)
            _disc(draw, p, r, fill=_u(rng, 0.1, 0.9), outline=0.15, width=1 + int(r / 5))
        return np.asarray(layer)
    for p in _points_in_drop(rng, int(rng.integers(3, 10)), drop, size):
        a, path = _u(rng, 0, TAU), [tuple(p)]
        for _ in range(20):
            a += float(rng.normal(0, 0.25))
            p = p + drop_px * 0.05 * np.array([math.cos(a), math.sin(a)])
            path.append(tuple(p))
        draw.line(path, fill=_u(rng, 0.2, 0.6), width=int(rng.integers(1, 4)))
    return 1.0 - _blur(1.0 - np.asarray(layer), _u(rng, 0.5, 2.0))


def _illumination(rng, size, style) -> np.ndarray:
    """RGB light: a two-tint gradient, an optional birefringence rainbow, and vignetting."""
    x, y = _grid(size)
    a = _u(rng, 0, TAU)
    t = np.clip(0.5 + 0.5 * (x * math.cos(a) + y * math.sin(a)), 0, 1)[..., None]
    tint0, tint1 = style["tints"]
    light = tint0 + (tint1 - tint0) * t
    if style["rainbow"]:
        phase = _smooth_noise(rng, size, 3)[..., None] * 6.0 + np.float32([0.0, 2.1, 4.2])
        light = light * (1 - style["rainbow"] + style["rainbow"] * (0.6 + 0.4 * np.cos(phase)))
    vignette = 1.0 - style["vignette"] * 0.5 * np.minimum(x * x + y * y, 2.0)
    return light * (vignette * (style["level"] / float(light.max())))[..., None]


def _camera(rng, rgb, style, failure) -> np.ndarray:
    """Exposure failures, optics, sensor noise, greyscale sensors, JPEG storage."""
    size = rgb.shape[0]
    if failure == "dark":
        rgb = rgb * _u(rng, 0.04, 0.2)
    elif failure == "overexposed":
        rgb = rgb * _u(rng, 2.5, 6.0)
    noise = rng.standard_normal((size, size), dtype=np.float32) * style["noise"]
    img = Image.fromarray(((rgb + noise[..., None]).clip(0, 1) * 255 + 0.5).astype(np.uint8))
    defocus = _u(rng, 3.0, 8.0) * size / 256 if failure == "defocus" else 0.0
    img = img.filter(ImageFilter.GaussianBlur(style["optics_blur"] * size / 256 + defocus))
    if style["grey"]:
        img = img.convert("L").convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=style["jpeg"])
    return np.asarray(Image.open(buf).convert("RGB"))


def _drops(rng, style, failure) -> list[tuple[float, float, float]]:
    """Where the drop(s) landed: (centre x, centre y, radius), dispensing errors included."""
    zoom, (wx, wy) = style["zoom"], style["centre"]
    if failure == "no_drop":
        return []
    if failure == "split":
        spots = rng.uniform(-0.6, 0.6, (int(rng.integers(2, 6)), 2)) * zoom
        return [(wx + dx, wy + dy, zoom * _u(rng, 0.1, 0.3)) for dx, dy in spots.tolist()]
    # The drop edge stays in view (image half-width 1): a drop filling the field would look like an
    # empty well, and imagers are set up to frame the drop.
    radius = min(zoom * _u(rng, 0.4, 0.95), _u(rng, 0.55, 0.8))
    if failure == "off_centre":  # landed on the well wall
        a, r = _u(rng, 0, TAU), zoom * _u(rng, 0.75, 1.0)
    else:
        a, r = _u(rng, 0, TAU), zoom * abs(float(rng.normal(0, 0.12)))
    return [(wx + r * math.cos(a), wy + r * math.sin(a), radius)]


def _content(rng, size, label, failure, drop) -> tuple[np.ndarray, np.ndarray | float]:
    """What grew in the drop: (transmission, brown absorbance)."""
    if failure in ("skin", "oil"):
        return _oil_or_skin(rng, size, drop, failure), 0.0
    if failure in IMAGING_FAILURES:  # the failed picture hides whatever the outcome was
        label = int(rng.choice([CRYSTALS, PRECIPITATE, CLEAR, CLEAR, CLEAR]))
    elif label == OTHER:  # a misplaced drop with a visible outcome would be scored by it
        label = CLEAR
    if label == CRYSTALS:
        if rng.random() < 0.25:  # crystals growing out of precipitate are still "crystals"
            trans, absorb = _precipitate(rng, size, drop)
            return _crystals(rng, size, drop) * trans, absorb
        return _crystals(rng, size, drop), 0.0
    if label == PRECIPITATE:
        return _precipitate(rng, size, drop)
    return np.float32(1.0), 0.0


def render_drop(seed: int, label: int, size: int = 256, failure: str | None = None) -> np.ndarray:
    """Renders one drop image of class `label` (index into CLASS_NAMES): uint8 (size, size, 3).

    The pixels depend only on the arguments (for one Pillow build: its JPEG codec is part of the
    camera). `failure` forces the process failure of an "other" image (one of FAILURES); None
    draws one.
    """
    if not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"label must be in [0, {len(CLASS_NAMES)}), got {label}")
    if failure is not None and (label != OTHER or failure not in FAILURES):
        raise ValueError(f"failure={failure!r}: only 'other' images fail, in one of {FAILURES}")
    rng = np.random.default_rng([seed, label, size])
    style = _sample_style(rng)
    if label == OTHER and failure is None:
        failure = FAILURES[int(rng.integers(len(FAILURES)))]
    lum, floor = _well(rng, size, style)
    mask = np.zeros_like(lum)
    drops = _drops(rng, style, failure)
    stretch = _u(rng, 2.5, 5.0) if failure == "smeared" else _u(rng, 1.0, 1.25)
    angle = _u(rng, 0, math.pi)
    for drop in drops:
        sdist, theta = _drop_field(rng, size, *drop, stretch=stretch, angle=angle)
        inside = np.clip(sdist * (size / 3.0) + 0.5, 0.0, 1.0) * floor
        lum *= 1.0 + floor * (_meniscus(rng, size, sdist, theta, drop[2]) - 1.0)
        lum *= 1.0 + inside * (_striations(rng, theta, sdist, drop[2]) - 1.0)
        mask = np.maximum(mask, inside)
    if drops:
        content, absorb = _content(rng, size, label, failure, drops[0])
        lum *= 1.0 + mask * (content - 1.0)
    else:
        absorb = 0.0
    lum *= _debris(rng, size, floor)
    brown = np.float32([0.75, 0.6, 0.45]) ** _u(rng, 0.5, 2.0)
    rgb = lum[..., None] * _illumination(rng, size, style)
    if not isinstance(absorb, float):
        rgb *= 1.0 - (mask * absorb)[..., None] * (1.0 - brown)
    return _camera(rng, rgb, style, failure)


def class_counts(num_images: int, class_weights: Sequence[float]) -> list[int]:
    """Images per class in proportion to the weights (largest remainders), summing exactly."""
    w = np.asarray(class_weights, np.float64)
    if w.shape != (len(CLASS_NAMES),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"class_weights needs {len(CLASS_NAMES)} non-negative numbers, got {w}")
    exact = num_images * w / w.sum()
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact)[: num_images - counts.sum()]] += 1
    return counts.tolist()


def generate(
    num_images: int, size: int, seed: int | Sequence[int], class_weights: Sequence[float]
) -> Iterator[tuple[int, str, np.ndarray]]:
    """(label, failure or "", image) for a whole split, classes shuffled, exactly reproducible."""
    counts = class_counts(num_images, class_weights)
    root = np.random.SeedSequence(seed)
    order_rng, image_seeds = (np.random.default_rng(s) for s in root.spawn(2))
    labels = order_rng.permutation(np.repeat(np.arange(len(CLASS_NAMES)), counts))
    seeds = image_seeds.integers(0, 2**63, num_images)
    for label, image_seed in zip(labels.tolist(), seeds.tolist(), strict=True):
        failure = FAILURES[image_seed % len(FAILURES)] if label == OTHER else None
        yield label, failure or "", render_drop(int(image_seed), label, size, failure)
