"""Image resizes that shrink a photo antialias like the official pipelines (PIL), not point-sample it.

M3DM's loader and BGAD's loader resize PIL images (bicubic / ``Image.ANTIALIAS`` = Lanczos), and
anomalib's WinCLIP resizes bicubic with ``antialias=True``; PIL widens its filter by the scale factor when
it shrinks. A resize without antialiasing aliases fine texture (moire), so features differ from the
official ones on real 800-1024 px photos.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from adray.detectors.bgad.images import resize_image
from adray.detectors.m3dm.features import resize_rgb
from adray.detectors.winclip.scoring import preprocess_image


def _textured(side: int = 800, seed: int = 0) -> np.ndarray:
    """uint8 ``[side, side, 3]``: stripes of several periods (2-40 px) plus pixel noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float64)
    img = np.zeros((side, side, 3))
    for c in range(3):
        for period in (2.0, 3.3, 7.0, 40.0):
            angle = rng.uniform(0, np.pi)
            img[..., c] += np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
    img = 127.5 + 25.0 * img + rng.normal(0, 20, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _pil(img: np.ndarray, size: int, resample: Image.Resampling) -> np.ndarray:
    out = np.asarray(Image.fromarray(img).resize((size, size), resample), dtype=np.float32)
    return out.transpose(2, 0, 1) / 255.0


def test_m3dm_rgb_resize_matches_pil_bicubic():
    img = _textured()
    ours = resize_rgb(img, 224).numpy()
    ref = _pil(img, 224, Image.Resampling.BICUBIC)
    assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 1e-2
    # the former resize (bicubic, no antialiasing) is far from PIL on this texture: the check can fail
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    aliased = F.interpolate(t, size=(224, 224), mode="bicubic", align_corners=False).clamp(0, 1)[0]
    assert np.abs(aliased.numpy() - ref).max() > 0.1


def test_m3dm_rgb_resize_grey_and_same_size():
    grey = _textured(224)[..., 0]
    out = resize_rgb(grey, 224).numpy()
    np.testing.assert_allclose(out[0], grey / 255.0, atol=1e-6)
    np.testing.assert_array_equal(out[0], out[2])


def test_winclip_resize_matches_pil_bicubic():
    img = _textured()
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    ours = preprocess_image(img, (240, 240), mean, std)
    assert np.abs(ours - _pil(img, 240, Image.Resampling.BICUBIC)).max() < 1e-2


def test_bgad_resize_is_pil_antialias():
    """BGAD's official loader uses ``Image.ANTIALIAS`` (Lanczos, removed in Pillow 10) to 256 px."""
    img = _textured()
    ours = resize_image(img, 256).astype(np.float32).transpose(2, 0, 1) / 255.0
    assert np.abs(ours - _pil(img, 256, Image.Resampling.LANCZOS)).max() < 1e-2
    # 2-px stripes are above Nyquist at 256 px: an antialiased resize averages them out
    stripes = np.zeros((800, 800, 3), np.uint8)
    stripes[:, ::2] = 255
    flat = resize_image(stripes, 256).astype(np.float32)
    assert abs(flat.mean() - 127.5) < 2 and flat.std() < 10
