"""Image and mask handling for BGAD: resize to the model size, normalise, copy-paste anomalies.

Copy-paste (simplified from the official ``MVTecFSCopyPasteDataset``): the defect pixels of a real
anomaly (its mask), after a brightness/contrast jitter, are pasted onto a normal training image, by
default at the same position (``in_place``; or flipped and anywhere with ``random``); the new mask is the
pasted region. The official version applies three random albumentations ops and keeps pastes in place
when they fall inside a per-class foreground mask (``fg_mask.zip``), which arbitrary datasets lack.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[H, W, 3]`` (or ``[H, W]`` grey, stacked to 3 channels) -> uint8 ``[size, size, 3]`` (Lanczos)."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image, dtype=np.uint8)
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    return np.asarray(pil.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """bool ``[H, W]`` -> bool ``[size, size]`` by nearest sampling."""
    if mask.shape == (size, size):
        return mask.astype(bool)
    pil = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(pil.resize((size, size), Image.Resampling.NEAREST)) > 127


def normalise(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 ``[S, S, 3]`` -> float32 ``[3, S, S]`` with the backbone's mean/std."""
    x = image.astype(np.float32).transpose(2, 0, 1) / 255.0
    m = np.asarray(mean, dtype=np.float32)[:, None, None]
    s = np.asarray(std, dtype=np.float32)[:, None, None]
    return ((x - m) / s).astype(np.float32)


def patch_labels(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel masks ``[N, S, S]`` -> patch labels ``[N, h, w]`` by nearest downsampling (official)."""
    return F.interpolate(masks[:, None].float(), size=(height, width), mode="nearest")[:, 0] > 0.5


def copy_paste(
    anomaly: np.ndarray,
    mask: np.ndarray,
    normal: np.ndarray,
    rng: np.random.Generator,
    placement: str = "in_place",
) -> tuple[np.ndarray, np.ndarray]:
    """Paste the masked defect of ``anomaly`` onto ``normal`` (all ``[S, S, ...]``) -> (image, mask).

    ``placement="in_place"`` keeps the defect where it was (right for aligned objects: a defect moved onto
    the background would teach the flows that background is anomalous); ``"random"`` also flips it and moves
    it anywhere (textures).
    """
    size = normal.shape[0]
    defect, dmask = anomaly.astype(np.float32), mask.astype(bool)
    if placement == "random":
        if rng.random() < 0.5:
            defect, dmask = defect[:, ::-1], dmask[:, ::-1]
        if rng.random() < 0.5:
            defect, dmask = defect[::-1], dmask[::-1]
    contrast, brightness = rng.uniform(0.9, 1.1), rng.uniform(-12.0, 12.0)
    defect = np.clip((defect - 127.5) * contrast + 127.5 + brightness, 0, 255)
    ys, xs = np.nonzero(dmask)
    out, out_mask = normal.copy(), np.zeros((size, size), dtype=bool)
    if ys.size == 0:
        return out, out_mask
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    h, w = y1 - y0, x1 - x0
    ty, tx = y0, x0
    if placement == "random":
        ty = int(rng.integers(0, size - h + 1))
        tx = int(rng.integers(0, size - w + 1))
    region = dmask[y0:y1, x0:x1]
    target = out[ty : ty + h, tx : tx + w]
    target[region] = defect[y0:y1, x0:x1][region].astype(np.uint8)
    out_mask[ty : ty + h, tx : tx + w] = region
    return out, out_mask
