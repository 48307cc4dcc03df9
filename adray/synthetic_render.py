"""The pictures behind :mod:`adray.synthetic`: procedural 2D textures and objects, the 2D defect shapes
(scratch, hole, stain, missing piece) and their masks, and the 3D scenes (a cookie or potato on a tilted
plane, as height in mm) with their defects. Plain numpy/scipy, drawn from the generator given; no files.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

SCENE_WIDTH_MM = 40.0  # 3D scenes span this width whatever the image size


# ------------------------------------------------------------------------------------------ 2D rendering


def _shape(n: int | tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` of a grid given as a side (square) or a shape."""
    return (n, n) if isinstance(n, int) else (int(n[0]), int(n[1]))


def _coords(n: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = _shape(n)
    yy, xx = np.mgrid[0:h, 0:w]
    return yy.astype(np.float64), xx.astype(np.float64)


def _noise(rng: np.random.Generator, n: int | tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth noise with unit standard deviation (wrap-around, so textures have no border seam)."""
    field_ = ndimage.gaussian_filter(rng.standard_normal(_shape(n)), sigma, mode="wrap")
    return field_ / (field_.std() + 1e-12)


def _tint(lum: np.ndarray, color) -> np.ndarray:
    return lum[..., None] * np.asarray(color, dtype=np.float64)[None, None, :]


def _render_carpet(rng, n):
    yy, xx = _coords(n)
    period = max(4.0, n / 20)
    px, py = rng.uniform(0, period, 2)
    weave = np.sin(2 * np.pi * (xx + px) / period) * np.sin(2 * np.pi * (yy + py) / period)
    lum = 1 + 0.12 * weave + 0.07 * _noise(rng, n, 0.8) + 0.04 * _noise(rng, n, n / 16)
    return _tint(lum, np.array([150, 75, 62]) * rng.uniform(0.97, 1.03)), np.ones((n, n), bool), None


def _render_grid(rng, n):
    yy, xx = _coords(n)
    period = max(5.0, n / 10)
    px, py = rng.uniform(0, period, 2)
    dist = np.minimum(_line_dist(xx + px, period), _line_dist(yy + py, period))
    lum = 165 + 6 * _noise(rng, n, 1.0) - 105 * np.clip(1.6 - dist, 0, 1)
    return _tint(lum / 165, [165, 162, 158]), np.ones((n, n), bool), None


def _line_dist(coord: np.ndarray, period: float) -> np.ndarray:
    phase = np.mod(coord, period)
    return np.minimum(phase, period - phase)


def _render_leather(rng, n):
    creases = _noise(rng, n, max(1.5, n / 64)) > 1.7
    lum = 1 + 0.10 * _noise(rng, n, n / 24) + 0.06 * _noise(rng, n, 1.0) - 0.15 * creases
    return _tint(lum, np.array([125, 82, 52]) * rng.uniform(0.97, 1.03)), np.ones((n, n), bool), None


def _render_bottle(rng, n):
    yy, xx = _coords(n)
    background = _tint(30 + 4 * _noise(rng, n, 1.0), [1.0, 1.0, 1.0])
    cy, cx = n / 2 + rng.uniform(-0.03, 0.03, 2) * n
    radius = 0.40 * n * rng.uniform(0.98, 1.02)
    r = np.hypot(yy - cy, xx - cx) / radius
    fg = r <= 1.0
    lum = 85 + 45 * (1 - r) + 22 * np.cos(2 * np.pi * 3 * r) + 40 * (r > 0.88) + 5 * _noise(rng, n, 1.5)
    img = np.where(fg[..., None], _tint(lum, [0.82, 0.72, 0.55]), background)
    return img, fg, background


def _render_nut(rng, n):
    yy, xx = _coords(n)
    background = _tint(200 + 5 * _noise(rng, n, 1.0), [1.0, 1.0, 1.0])
    cy, cx = n / 2 + rng.uniform(-0.03, 0.03, 2) * n
    theta = rng.uniform(0, np.pi / 3)
    apothem = 0.34 * n
    hexagon = np.ones((n, n), bool)
    for k in range(3):
        a = theta + k * np.pi / 3
        hexagon &= np.abs((xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)) <= apothem
    r = np.hypot(yy - cy, xx - cx)
    fg = hexagon & (r > 0.15 * n)
    threads = 18 * np.cos(2 * np.pi * r / max(2.5, n / 40)) * (r < 0.21 * n)
    lum = 120 + 45 * ((xx - yy) / n) + 10 * _noise(rng, n, 2.0) + threads
    img = np.where(fg[..., None], _tint(lum, [0.95, 0.97, 1.0]), background)
    return img, fg, background


_RENDER_2D: dict[str, Callable] = {
    "carpet": _render_carpet,
    "grid": _render_grid,
    "leather": _render_leather,
    "bottle": _render_bottle,
    "nut": _render_nut,
}


# ------------------------------------------------------------------------------------------ 2D defects


def _pick_center(rng: np.random.Generator, allowed: np.ndarray) -> tuple[float, float]:
    idx = np.flatnonzero(allowed)
    if idx.size == 0:
        raise ValueError("no room for a defect at this image size; use a larger size")
    y, x = np.unravel_index(idx[rng.integers(idx.size)], allowed.shape)
    return float(y), float(x)


def _interior(fg: np.ndarray, margin: int) -> np.ndarray:
    inner = np.zeros_like(fg)
    inner[margin:-margin, margin:-margin] = True
    eroded = ndimage.binary_erosion(fg, iterations=margin) if not fg.all() else fg
    return inner & eroded


def _disc(n: int | tuple[int, int], cy: float, cx: float, radius: float) -> np.ndarray:
    yy, xx = _coords(n)
    return np.hypot(yy - cy, xx - cx) <= radius


def _curve(rng, n: int | tuple[int, int], allowed: np.ndarray, length: float, width: int) -> np.ndarray:
    """A slightly bent line (quadratic Bezier) through a point of ``allowed``, rasterised ``width`` wide."""
    cy, cx = _pick_center(rng, allowed)
    angle = rng.uniform(0, np.pi)
    d = np.array([np.sin(angle), np.cos(angle)]) * length / 2
    bend = np.array([-d[1], d[0]]) * rng.uniform(-0.3, 0.3)
    p0, p1, p2 = np.array([cy, cx]) - d, np.array([cy, cx]) + bend, np.array([cy, cx]) + d
    t = np.linspace(0, 1, int(4 * length) + 2)[:, None]
    pts = np.rint((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2).astype(int)
    pts = pts[(pts >= 0).all(1) & (pts < np.array(_shape(n))).all(1)]
    line = np.zeros(_shape(n), bool)
    line[pts[:, 0], pts[:, 1]] = True
    return ndimage.binary_dilation(line, iterations=width - 1) if width > 1 else line


def _blob(rng, n: int | tuple[int, int], allowed: np.ndarray, radius: float) -> np.ndarray:
    """An irregular blob: a noisy ellipse around a point of ``allowed``."""
    cy, cx = _pick_center(rng, allowed)
    yy, xx = _coords(n)
    ry, rx = radius * rng.uniform(0.7, 1.3, 2)
    q = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    blob = q + 0.3 * _noise(rng, n, max(1.0, radius / 3)) < 1.0
    blob[int(cy), int(cx)] = True
    labels, _ = ndimage.label(blob)
    return labels == labels[int(cy), int(cx)]


def _apply_2d_defect(img, fg, background, defect: str, rng) -> np.ndarray:
    """Draw ``defect`` into ``img`` (in place) and return its mask: every changed pixel is in the mask."""
    n = img.shape[0]
    margin = max(2, n // 10)
    allowed = _interior(fg, margin)
    if defect == "scratch":
        mask = _curve(rng, n, allowed, rng.uniform(0.25, 0.4) * n, int(rng.integers(1, 3))) & fg
        dark = img[fg].mean() > 110
        img[mask] = img[mask] * 0.3 if dark else np.minimum(img[mask] + 110, 255)
    elif defect == "hole":
        radius = max(2.0, rng.uniform(0.035, 0.06) * n)
        mask = _disc(n, *_pick_center(rng, allowed), radius) & fg
        img[mask] = rng.uniform(12, 28)
    elif defect == "stain":
        mask = _blob(rng, n, allowed, max(2.5, rng.uniform(0.05, 0.09) * n)) & fg
        color = np.array([[70, 40, 20], [200, 60, 50], [50, 80, 190]])[rng.integers(3)]
        img[mask] = 0.4 * img[mask] + 0.6 * color
    elif defect == "missing":
        edge = fg & ~ndimage.binary_erosion(fg)
        mask = _disc(n, *_pick_center(rng, edge), rng.uniform(0.12, 0.16) * n) & fg
        img[mask] = background[mask]
    else:  # pragma: no cover - callers validate
        raise ValueError(defect)
    return mask


# ------------------------------------------------------------------------------------------ 3D rendering


def _xy_mm(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    (h, w), yy_xx = shape, _coords(shape)
    pitch = SCENE_WIDTH_MM / min(h, w)
    return (yy_xx[1] - w / 2) * pitch, (yy_xx[0] - h / 2) * pitch


def _render_3d(category: str, shape: tuple[int, int], rng):
    """rgb (float), object height above the plane (mm), foreground, plane depth z (mm), missing points.

    Sizes follow the shorter side ``n``; the object is centred on the ``H x W`` grid."""
    h, w = shape
    n = min(h, w)
    yy, xx = _coords(shape)
    cy, cx = np.array([h / 2, w / 2]) + rng.uniform(-0.04, 0.04, 2) * n
    if category == "cookie":
        q = (np.hypot(yy - cy, xx - cx) / (0.33 * n)) ** 2
        height = 5.0 * np.sqrt(np.clip(1 - q**2, 0, None))
        chips = _noise(rng, shape, max(1.0, n / 40)) > 1.5
        color = np.where(chips[..., None], [75, 45, 30], [195, 145, 85])
    else:  # potato
        a = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
        v = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
        q = (u / (0.38 * n)) ** 2 + (v / (0.26 * n)) ** 2
        height = 8.0 * np.sqrt(np.clip(1 - q, 0, None))
        color = np.array([200, 170, 110]) * (1 + 0.06 * _noise(rng, shape, 1.0))[..., None]
    fg = q < 1.0
    height = height + 0.03 * _noise(rng, shape, 1.5) * fg
    gy, gx = np.gradient(height, SCENE_WIDTH_MM / n)
    normal_z = 1 / np.sqrt(1 + gx**2 + gy**2)
    light = np.array([0.3, -0.4, 1.0]) / np.linalg.norm([0.3, -0.4, 1.0])
    shade = 0.35 + 0.65 * np.clip((-gx * light[0] - gy * light[1] + light[2]) * normal_z, 0, 1)
    background = _tint(150 + 6 * _noise(rng, shape, 1.0), [1.0, 1.0, 1.0])
    rgb = np.where(fg[..., None], color * shade[..., None], background)
    x, y = _xy_mm(shape)
    tilt_x, tilt_y = rng.uniform(-0.15, 0.15, 2)
    plane_z = 500.0 + tilt_x * x + tilt_y * y
    missing = np.zeros(shape, bool)
    top, bottom, left, right = rng.integers(0, max(2, n // 16), 4)
    top = max(int(top), 1)
    missing[:top] = True
    missing[h - bottom :] = True
    missing[:, :left] = True
    missing[:, w - right :] = True
    for _ in range(int(rng.integers(2, 5))):
        missing |= _disc(shape, *(rng.uniform(0, 1, 2) * np.array([h, w])), rng.uniform(0.8, 2.0))
    return rgb, height, fg, plane_z, missing


def _apply_3d_defect(rgb, height, fg, defect: str, rng) -> np.ndarray:
    """Deform ``height`` and/or recolour ``rgb`` in place; return the ground-truth mask."""
    shape = rgb.shape[:2]
    n = min(shape)
    allowed = _interior(fg, max(2, n // 8))
    if defect in ("dent", "bump", "dent_3d_only", "bump_3d_only"):
        radius = max(2.5, rng.uniform(0.07, 0.11) * n)
        cy, cx = _pick_center(rng, allowed)
        yy, xx = _coords(shape)
        r = np.hypot(yy - cy, xx - cx) / radius
        mask = (r < 1) & fg
        weight = np.where(mask, (1 - np.minimum(r, 1) ** 2) ** 2, 0.0)
        sign = -1.0 if defect.startswith("dent") else 1.0
        height += sign * rng.uniform(0.8, 1.4) * weight
        if not defect.endswith("_3d_only"):
            rgb *= (1 + sign * 0.35 * weight)[..., None]
    elif defect == "crack":
        mask = _curve(rng, shape, allowed, rng.uniform(0.25, 0.4) * n, 1) & fg
        rgb[mask] *= 0.3
        height[mask] -= 0.4
    elif defect == "color":
        mask = _blob(rng, shape, allowed, max(2.5, rng.uniform(0.06, 0.1) * n)) & fg
        rgb[mask] = 0.4 * rgb[mask] + 0.6 * np.array([[60, 110, 60], [170, 40, 40]])[rng.integers(2)]
    else:  # pragma: no cover - callers validate
        raise ValueError(defect)
    return mask
