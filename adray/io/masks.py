"""Anomaly maps as 16-bit grayscale PNG, ground-truth masks as 0/255 PNG, and their storage keys.

Ground-truth mask files of any format are read by :func:`read_ground_truth_mask` (binarised at half range).

An anomaly map (float32 ``[H, W]``) is stored as a 16-bit grayscale PNG plus two floats: pixel ``p``
decodes to ``map_min + p / 65535 * (map_max - map_min)`` (the ``map_min`` / ``map_max`` columns of
``schemas/results``). ``map_min`` and ``map_max`` are the map's own float32 extremes, so a float32 column
holds them exactly and the decoded map is within ``(map_max - map_min) / 65535`` of the original. A
constant map encodes as all zeros with ``map_min == map_max``.

A detector's map is on its model grid; :func:`map_to_image` brings it to the image's own pixels (a
resize, after cutting off any padding the preprocessing added: :data:`MAP_FRAME_KEY`).

Mask keys derive from ``(detector_version, item_id)`` only, so a retried or repeated scoring of an item
by the same detector overwrites its map instead of leaving orphans.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MASKS_PREFIX = "masks"
_LEVELS = 65535


def encode_map_png16(amap: np.ndarray) -> tuple[bytes, float, float]:
    """Encode a float map ``[H, W]`` as a 16-bit PNG; returns ``(png_bytes, map_min, map_max)``.

    The map is taken as float32 (float64 input is rounded to float32 first). NaN or infinite values raise
    ValueError: a detector that produced them has a bug, and storing them would hide it.
    """
    amap = _as_map(amap)
    map_min, map_max = float(amap.min()), float(amap.max())
    span = map_max - map_min
    if span > 0:
        scaled = (amap.astype(np.float64) - map_min) * (_LEVELS / span)
        pixels = np.clip(np.rint(scaled), 0, _LEVELS).astype(np.uint16)
    else:
        pixels = np.zeros(amap.shape, dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue(), map_min, map_max


def decode_map_png16(data: bytes, map_min: float, map_max: float) -> np.ndarray:
    """Decode a map written by :func:`encode_map_png16` back to float32 ``[H, W]``."""
    map_min, map_max = float(map_min), float(map_max)
    if not (np.isfinite(map_min) and np.isfinite(map_max)) or map_max < map_min:
        raise ValueError(f"map_min/map_max must be finite with map_min <= map_max, got {map_min}, {map_max}")
    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
            raise ValueError(
                f"expected a 16-bit grayscale anomaly-map PNG, got mode {img.mode!r}; "
                "was it written by encode_map_png16?"
            )
        pixels = np.asarray(img).astype(np.float64)
    if pixels.ndim != 2 or pixels.min(initial=0) < 0 or pixels.max(initial=0) > _LEVELS:
        raise ValueError("anomaly-map PNG holds values outside 16-bit grayscale")
    return (map_min + pixels * ((map_max - map_min) / _LEVELS)).astype(np.float32)


def resize_map(amap: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``[H, W]`` or ``[N, H, W]`` maps to ``size = (H, W)``; float32 numpy out.

    Uses ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` without antialiasing,
    the upsampling the detectors' reference code uses to bring patch maps to image resolution.
    """
    height, width = (int(s) for s in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"resize_map needs a positive (H, W) size, got {size}")
    tensor = torch.as_tensor(np.asarray(amap) if not torch.is_tensor(amap) else amap)
    if tensor.ndim not in (2, 3):
        raise ValueError(f"resize_map wants a [H, W] or [N, H, W] map, got shape {tuple(tensor.shape)}")
    squeeze = tensor.ndim == 2
    batch = tensor.detach().to(torch.float32).reshape(-1, 1, *tensor.shape[-2:])
    if tuple(batch.shape[-2:]) != (height, width):
        batch = F.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False)
    out = batch[:, 0].cpu().numpy()
    return out[0] if squeeze else out


#: Optional key of a detector's ``preprocess`` output: int ``[4]`` = ``(canvas_h, canvas_w, top, left)``
#: in image pixels, when the model's grid covers a canvas larger than the image (M3DM pads scans to a
#: square). The pipeline's decode stage takes it out of the arrays, carries it with the item and the last
#: stage brings the map back with :func:`map_to_image`. Absent: the grid covers the image (a plain resize).
MAP_FRAME_KEY = "map_frame"


def map_to_image(
    amap: np.ndarray | torch.Tensor, size: tuple[int, int], frame: Sequence[int] | None = None
) -> np.ndarray:
    """A model-grid map ``[h, w]`` (or ``[N, h, w]``) in the image's own pixels, float32 ``size = (H, W)``.

    ``frame = (canvas_h, canvas_w, top, left)`` (:data:`MAP_FRAME_KEY`): the map covers a
    ``canvas_h x canvas_w`` canvas (in image pixels) on which the image sits at ``(top, left)``, as after
    M3DM's zero-padding of a scan to a square (the official preprocessing); the map is resized bilinearly
    to the canvas (:func:`resize_map`) and the image's ``H x W`` window cut out, so the padding never
    stretches the map. ``None``: the map covers the image, a plain :func:`resize_map`. Raises
    ``ValueError`` for a frame that does not hold the image.
    """
    height, width = (int(s) for s in size)
    if frame is None:
        return resize_map(amap, (height, width))
    canvas_h, canvas_w, top, left = (int(v) for v in frame)
    if top < 0 or left < 0 or top + height > canvas_h or left + width > canvas_w:
        raise ValueError(f"map frame {tuple(frame)} does not hold a {height}x{width} image")
    canvas = resize_map(amap, (canvas_h, canvas_w))
    return np.ascontiguousarray(canvas[..., top : top + height, left : left + width])


def mask_key(detector_version: str, item_id: str) -> str:
    """The storage key (relative to a results root) of an item's anomaly map.

    >>> mask_key("bgad-3f2a", "carpet/test/hole/000")
    'masks/detector_version=bgad-3f2a/carpet/test/hole/000.png'
    """
    for name, value in (("detector_version", detector_version), ("item_id", item_id)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"mask_key needs a non-empty {name}, got {value!r}")
        if "\\" in value or value.startswith("/") or ".." in value.split("/"):
            raise ValueError(f"{name} {value!r} would escape the masks folder; use a plain relative id")
    if "/" in detector_version:
        raise ValueError(f"detector_version {detector_version!r} must not contain '/'")
    return f"{MASKS_PREFIX}/detector_version={detector_version}/{item_id}.png"


def encode_mask_png(mask: np.ndarray) -> bytes:
    """A boolean ground-truth mask ``[H, W]`` as an 8-bit PNG with 0 (normal) and 255 (anomalous)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask is [H, W], got shape {mask.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.where(mask.astype(bool), 255, 0).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def decode_mask_png(data: bytes) -> np.ndarray:
    """A ground-truth mask PNG (any nonzero pixel, in any channel, is anomalous) as bool ``[H, W]``."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        pixels = np.asarray(img)
    if pixels.ndim == 3:
        channels = pixels[..., :3] if pixels.shape[-1] >= 3 else pixels[..., :1]
        return (channels > 0).any(-1)
    return pixels > 0


def read_ground_truth_mask(data: bytes, *, max_pixels: int = 100_000_000) -> np.ndarray:
    """A ground-truth mask file (PNG, JPEG, TIFF, BMP, ...) as bool ``[H, W]``, binarised at half range.

    A pixel is anomalous when it reaches half of its type's range: 128 of 255 for 8-bit masks, 32768 of
    65535 for 16-bit ones, 0.5 for float masks in [0, 1]. "Any nonzero" would count a JPEG mask's compression
    noise around every edge as defect. Colour masks: any colour
    channel at half range; alpha is ignored; 1-bit masks are read as stored. MVTec 3D-AD's class values
    (253, 254, 255) are all anomalous.

    A lossless mask whose values all lie below half range holds class ids (0/1, 0/1/2, ...): any nonzero
    pixel is anomalous. A JPEG is never read that way, since its low values are noise.

    Raises ValueError when the bytes are not a readable image or hold more than ``max_pixels`` pixels
    (checked from the header, before decoding).
    """
    if not data:
        raise ValueError("ground-truth mask file has zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Exception as exc:  # Pillow raises many types for unreadable headers
        raise ValueError(f"ground-truth mask is not a readable image ({type(exc).__name__})") from exc
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise ValueError(f"ground-truth mask is {width}x{height} pixels, over the limit of {max_pixels}")
        lossy = img.format in _LOSSY_FORMATS
        try:
            pixels, half = _mask_values(img)
        except Exception as exc:  # truncated or broken pixel data
            raise ValueError(f"ground-truth mask cannot be decoded ({type(exc).__name__}: {exc})") from exc
    if pixels.ndim == 3:
        pixels = pixels.max(axis=-1)
    anomalous = pixels >= half
    if not lossy and not anomalous.any():
        return pixels != 0  # class ids, or empty
    return anomalous


_LOSSY_FORMATS = frozenset({"JPEG", "MPO"})


def _mask_values(img: Image.Image) -> tuple[np.ndarray, float]:
    """The mask's colour values (``[H, W]`` or ``[H, W, C]`` without alpha) and half of their type's range."""
    if img.mode == "1":
        return np.asarray(img.convert("L")), 128
    if img.mode in ("L", "LA"):
        return np.asarray(img.convert("L")), 128
    if img.mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16), 32768
    if img.mode == "I":  # 16-bit PNGs open as "I" in some Pillow versions
        return np.asarray(img).astype(np.int64), 32768
    if img.mode == "F":
        pixels = np.asarray(img).astype(np.float64)
        top = pixels.max(initial=0.0)
        return pixels, 0.5 if top <= 1.0 else (128 if top <= 255 else 32768)
    return np.asarray(img.convert("RGB")), 128


def _as_map(amap: np.ndarray) -> np.ndarray:
    amap = np.asarray(amap)
    if amap.ndim != 2 or amap.size == 0:
        raise ValueError(f"an anomaly map is a non-empty [H, W] array, got shape {amap.shape}")
    if not np.issubdtype(amap.dtype, np.number) or np.iscomplexobj(amap):
        raise ValueError(f"an anomaly map holds real numbers, got dtype {amap.dtype}")
    amap = amap.astype(np.float32, copy=False)
    bad = ~np.isfinite(amap)
    if bad.any():
        kinds = "NaN" if np.isnan(amap).any() else "infinite values"
        raise ValueError(
            f"anomaly map has {kinds} at {int(bad.sum())} of {amap.size} pixels; "
            "fix the detector (or mark the item as failed) instead of storing it"
        )
    return amap
