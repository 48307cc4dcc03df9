"""Inline SVG charts and anomaly-map overlays for the self-contained HTML report (no scripts, no CDN).

Charts are plain SVG strings; images are PNG ``data:`` URIs, so the report opens offline from one file.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

#: Category colours (colour-blind friendly Tableau 10); normal / anomalous histogram colours.
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
NORMAL_COLOR, ANOMALOUS_COLOR = "#1f77b4", "#d62728"
_W, _H, _PAD = 360, 280, 44


def line_chart(
    series: Sequence[tuple[str, Sequence[float], Sequence[float], str]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    xmax: float = 1.0,
    diagonal: bool = False,
) -> str:
    """An SVG line chart over [0, xmax] x [0, 1]; ``series`` = (label, xs, ys, colour)."""
    pw, ph = _W - 2 * _PAD, _H - 2 * _PAD

    def px(x: float) -> float:
        return _PAD + pw * min(max(x / xmax, 0.0), 1.0)

    def py(y: float) -> float:
        return _H - _PAD - ph * min(max(y, 0.0), 1.0)

    parts = [_frame(title, xlabel, ylabel, [(px(t * xmax), f"{t * xmax:g}") for t in (0, 0.5, 1)])]
    if diagonal:
        parts.append(f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(xmax)}" y2="{py(xmax)}" class="diag"/>')
    for i, (label, xs, ys, color) in enumerate(series):
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
        parts.append(
            f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2.5">'
            f"<title>{html.escape(label)}</title></polyline>"
        )
        ly = _PAD + 4 + 14 * i
        parts.append(f'<rect x="{_W - _PAD - 92}" y="{ly}" width="10" height="10" fill="{color}"/>')
        parts.append(
            f'<text x="{_W - _PAD - 78}" y="{ly + 9}" class="legend">{html.escape(label[:14])}</text>'
        )
    return _svg(parts)


def histogram_chart(
    edges: Sequence[float], normal: Sequence[int], anomalous: Sequence[int], *, title: str
) -> str:
    """Overlaid bars of image-score counts: normal items vs anomalous items."""
    if not edges:
        return _svg([_frame(title, "image score", "items", [])])
    pw, ph = _W - 2 * _PAD, _H - 2 * _PAD
    top = max(max(normal, default=0), max(anomalous, default=0), 1)
    n = len(edges) - 1
    bw = pw / n
    ticks = [(_PAD, f"{edges[0]:.3g}"), (_PAD + pw, f"{edges[-1]:.3g}")]
    parts = [_frame(title, "image score", "items", ticks, ymax=top)]
    for counts, color, off in ((normal, NORMAL_COLOR, 0.0), (anomalous, ANOMALOUS_COLOR, 0.5)):
        for i, c in enumerate(counts):
            if c:
                h = ph * c / top
                x = _PAD + i * bw + off * bw
                parts.append(
                    f'<rect x="{x:.1f}" y="{_H - _PAD - h:.1f}" width="{bw / 2:.1f}" height="{h:.1f}" '
                    f'fill="{color}"/>'
                )
    for i, (label, color) in enumerate((("normal", NORMAL_COLOR), ("anomalous", ANOMALOUS_COLOR))):
        ly = _PAD + 4 + 14 * i
        parts.append(f'<rect x="{_W - _PAD - 92}" y="{ly}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{_W - _PAD - 78}" y="{ly + 9}" class="legend">{label}</text>')
    return _svg(parts)


def overlay_png(
    image: np.ndarray,
    amap: np.ndarray | None,
    gt_mask: np.ndarray | None,
    map_range: tuple[float, float] | None,
    size: int = 192,
) -> str:
    """A data: URI of the image with the anomaly map (jet, alpha by value) and the ground-truth outline."""
    img = Image.fromarray(image).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    rgb = np.asarray(img, dtype=np.float32) / 255.0
    if amap is not None:
        m = np.asarray(
            Image.fromarray(amap.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR)
        )
        lo, hi = map_range if map_range else (float(m.min()), float(m.max()))
        v = np.clip((m - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(m)
        alpha = (0.15 + 0.55 * v)[..., None]
        rgb = rgb * (1 - alpha) + _jet(v) * alpha
    if gt_mask is not None and gt_mask.any():
        mk = np.asarray(Image.fromarray(gt_mask.astype(np.uint8) * 255).resize((size, size))) > 127
        edge = mk & ~ndimage.binary_erosion(mk, iterations=2)
        rgb[edge] = (0.0, 1.0, 0.2)
    return png_data_uri((np.clip(rgb, 0, 1) * 255).astype(np.uint8))


def png_data_uri(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _jet(v: np.ndarray) -> np.ndarray:
    """Blue -> cyan -> yellow -> red colour map for values in [0, 1]."""
    anchors = np.array([0.0, 0.35, 0.65, 1.0])
    colors = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    return np.stack([np.interp(v, anchors, colors[:, c]) for c in range(3)], axis=-1).astype(np.float32)


def _frame(title: str, xlabel: str, ylabel: str, xticks: list[tuple[float, str]], ymax: float = 1.0) -> str:
    pw, ph = _W - 2 * _PAD, _H - 2 * _PAD
    p = [
        f'<rect x="{_PAD}" y="{_PAD}" width="{pw}" height="{ph}" class="plot"/>',
        f'<text x="{_W / 2}" y="{_PAD - 14}" class="title">{html.escape(title)}</text>',
        f'<text x="{_W / 2}" y="{_H - 8}" class="axis">{html.escape(xlabel)}</text>',
        f'<text x="14" y="{_H / 2}" class="axis" transform="rotate(-90 14 {_H / 2})">{html.escape(ylabel)}</text>',
    ]
    for x, label in xticks:
        p.append(f'<text x="{x:.1f}" y="{_H - _PAD + 14}" class="tick">{html.escape(label)}</text>')
    for t in (0.0, 0.5, 1.0):
        y = _H - _PAD - ph * t
        p.append(f'<line x1="{_PAD}" y1="{y:.1f}" x2="{_PAD + pw}" y2="{y:.1f}" class="grid"/>')
        p.append(f'<text x="{_PAD - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{t * ymax:.3g}</text>')
    return "".join(p)


def _svg(parts: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}">' + "".join(parts) + "</svg>"
    )
