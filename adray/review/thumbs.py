"""Thumbnails for the review page: the image and its anomaly map over it, downscaled, as JPEG data URIs.

The map is drawn with one colour scale per page section (``map_range``: the same values look the same on
every card of a category and detector), blue → cyan → yellow → red, more opaque where higher, as in the
evaluation report.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from adray import storage
from adray.io.images import decode_image
from adray.io.masks import decode_map_png16

JPEG_QUALITY = 82


@dataclass
class Thumbs:
    """``image`` / ``overlay``: data URIs (``overlay`` None without a map); ``width``, ``height``: the
    original image in pixels (region boxes are in these); ``thumb_w``, ``thumb_h``: the thumbnails."""

    image: str
    overlay: str | None
    width: int
    height: int
    thumb_w: int
    thumb_h: int

    @property
    def nbytes(self) -> int:
        return len(self.image) + len(self.overlay or "")


def make_thumbs(
    uri: str,
    mask_uri: str | None,
    map_min: float | None,
    map_max: float | None,
    *,
    size: int,
    map_range: tuple[float, float] | None,
) -> Thumbs:
    """Read and decode the image at ``uri`` (and the 16-bit map at ``mask_uri``, decoded with
    ``map_min``/``map_max``), downscale so the longer side is at most ``size`` px (never upscaled), and
    return both as JPEG data URIs. Raises what the reads and decoders raise (``ImageDecodeError``,
    ``storage.StorageError``, ``OSError``)."""
    rgb = decode_image(storage.read_bytes(uri))
    h, w = rgb.shape[:2]
    scale = min(1.0, size / max(h, w))
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    small = np.asarray(Image.fromarray(rgb).resize((tw, th), Image.Resampling.LANCZOS))
    overlay = None
    if mask_uri and map_min is not None and map_max is not None:
        amap = decode_map_png16(storage.read_bytes(mask_uri), map_min, map_max)
        overlay = jpeg_data_uri(blend_map(small, amap, map_range))
    return Thumbs(jpeg_data_uri(small), overlay, w, h, tw, th)


def blend_map(rgb: np.ndarray, amap: np.ndarray, map_range: tuple[float, float] | None) -> np.ndarray:
    """``rgb`` (uint8 [h, w, 3]) with ``amap`` (float [H, W], any size, resized to [h, w]) blended over it;
    values scaled to [0, 1] by ``map_range`` (None: the map's own min and max)."""
    h, w = rgb.shape[:2]
    m = np.asarray(Image.fromarray(amap.astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR))
    lo, hi = map_range if map_range else (float(m.min()), float(m.max()))
    v = np.clip((m - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(m)
    alpha = (0.15 + 0.55 * v)[..., None]
    out = rgb.astype(np.float32) / 255.0 * (1 - alpha) + colour_scale(v) * alpha
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def colour_scale(v: np.ndarray) -> np.ndarray:
    """Blue → cyan → yellow → red for values in [0, 1]: float32 [..., 3] in [0, 1]."""
    anchors = np.array([0.0, 0.35, 0.65, 1.0])
    colours = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    return np.stack([np.interp(v, anchors, colours[:, c]) for c in range(3)], axis=-1).astype(np.float32)


def jpeg_data_uri(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
