"""16-bit anomaly-map PNG codec, ground-truth mask codec, bilinear resize and mask keys."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from adray.io.masks import (
    decode_map_png16,
    decode_mask_png,
    encode_map_png16,
    encode_mask_png,
    mask_key,
    resize_map,
)


@pytest.mark.parametrize("scale, offset", [(1.0, 0.0), (1e-4, 3.0), (250.0, -1e3), (1e6, 1e7)])
def test_map_round_trip_error_is_within_one_level(scale, offset):
    rng = np.random.default_rng(0)
    amap = (rng.standard_normal((37, 53)) * scale + offset).astype(np.float32)
    data, lo, hi = encode_map_png16(amap)
    assert (lo, hi) == (float(amap.min()), float(amap.max()))
    assert np.float32(lo) == lo and np.float32(hi) == hi  # a float32 results column holds them exactly
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG" and img.mode.startswith("I;16") and img.size == (53, 37)
    decoded = decode_map_png16(data, lo, hi)
    assert decoded.dtype == np.float32 and decoded.shape == amap.shape
    err = np.abs(decoded.astype(np.float64) - amap.astype(np.float64)).max()
    assert err <= (hi - lo) / 65535
    assert decoded.min() == amap.min() and decoded.max() == amap.max()


def test_constant_map_round_trips_exactly():
    amap = np.full((8, 9), 0.25, np.float32)
    data, lo, hi = encode_map_png16(amap)
    assert lo == hi == 0.25
    np.testing.assert_array_equal(decode_map_png16(data, lo, hi), amap)


def test_float64_maps_are_taken_as_float32():
    amap = np.linspace(0, 1, 64, dtype=np.float64).reshape(8, 8) + 1e-12
    data, lo, hi = encode_map_png16(amap)
    assert lo == float(np.float32(amap.min()))
    assert np.abs(decode_map_png16(data, lo, hi) - amap).max() <= (hi - lo) / 65535 + 1e-7


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "infinite")])
def test_nan_or_inf_in_a_map_is_a_clear_error(bad, word):
    amap = np.zeros((4, 4), np.float32)
    amap[1, 2] = bad
    with pytest.raises(ValueError, match=f"{word}.*1 of 16 pixels"):
        encode_map_png16(amap)


def test_bad_map_shapes_and_ranges_are_rejected():
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        encode_map_png16(np.zeros((2, 3, 3), np.float32))
    with pytest.raises(ValueError, match="map_min <= map_max"):
        decode_map_png16(encode_map_png16(np.eye(3))[0], 1.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        decode_map_png16(encode_map_png16(np.eye(3))[0], 0.0, float("nan"))
    with pytest.raises(ValueError, match="16-bit"):
        decode_map_png16(encode_mask_png(np.eye(3, dtype=bool)), 0.0, 1.0)


def test_ground_truth_mask_round_trip_and_foreign_encodings():
    mask = np.random.default_rng(1).random((20, 30)) > 0.7
    data = encode_mask_png(mask)
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "L" and set(np.unique(np.asarray(img))) == {0, 255}
    np.testing.assert_array_equal(decode_mask_png(data), mask)
    for img in (
        Image.fromarray(mask.astype(np.uint8)),  # 0/1 masks
        Image.fromarray(np.repeat(mask[..., None].astype(np.uint8) * 255, 3, -1)),  # RGB masks
        Image.fromarray(mask.astype(np.uint8) * 255).convert("P"),  # palette masks
    ):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        np.testing.assert_array_equal(decode_mask_png(buf.getvalue()), mask)


def test_resize_map_is_bilinear_like_torch_and_keeps_batches():
    amap = np.random.default_rng(2).random((3, 7, 5)).astype(np.float32)
    out = resize_map(amap, (14, 10))
    expected = F.interpolate(torch.from_numpy(amap)[:, None], size=(14, 10), mode="bilinear")[:, 0].numpy()
    assert out.shape == (3, 14, 10) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    single = resize_map(amap[0], (4, 4))
    assert single.shape == (4, 4)
    np.testing.assert_array_equal(resize_map(amap[1], (7, 5)), amap[1])
    ramp = np.tile(np.arange(4, dtype=np.float32), (2, 1))  # bilinear keeps a linear ramp linear inside
    up = resize_map(ramp, (2, 8))
    np.testing.assert_allclose(np.diff(up[0, 1:-1]), 0.5, atol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        resize_map(amap[0], (0, 3))


def test_mask_key_depends_only_on_version_and_item():
    assert mask_key("winclip-ab12", "bottle/test/hole/003") == (
        "masks/detector_version=winclip-ab12/bottle/test/hole/003.png"
    )
    assert mask_key("v1", "x") == mask_key("v1", "x")
    assert mask_key("v1", "x") != mask_key("v2", "x")
    for version, item in (("", "x"), ("v", ""), ("v", "../x"), ("v", "/abs"), ("a/b", "x"), ("v", "a\\b")):
        with pytest.raises(ValueError):
            mask_key(version, item)
