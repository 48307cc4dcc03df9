"""BGAD training reads labelled anomaly masks as the evaluation does: binarised at half range."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from adray import storage
from adray.detectors.bgad.data import load_items
from adray.io.images import read_mask


def _jpeg_mask(size: int = 64) -> tuple[bytes, np.ndarray]:
    mask = np.zeros((size, size), np.uint8)
    mask[20:40, 12:44] = 255
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="JPEG", quality=70)
    return buf.getvalue(), mask > 0


def test_anomaly_masks_from_jpeg_keep_the_defect_and_drop_compression_noise(tmp_path):
    data, truth = _jpeg_mask()
    image = np.full((64, 64, 3), 90, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    storage.write_bytes(str(tmp_path / "a.png"), buf.getvalue())
    storage.write_bytes(str(tmp_path / "a_mask.jpg"), data)
    row = {"item_id": "a", "uri": str(tmp_path / "a.png"), "gt_mask_uri": str(tmp_path / "a_mask.jpg")}
    (item,) = load_items([row], "anomaly", 64)
    assert item.mask.dtype == bool and item.mask.shape == (64, 64)
    assert np.array_equal(item.mask, truth)  # 640 defect pixels, no more
    # the old any-nonzero reading counts the JPEG's ringing around the square as defect
    assert read_mask(data).sum() > truth.sum()
