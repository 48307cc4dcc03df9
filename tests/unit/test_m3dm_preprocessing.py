"""Scan preprocessing: removes a known plane, works on a copy, idempotent, clear statuses."""

from __future__ import annotations

import numpy as np
import pytest

from adray.detectors.m3dm.preprocessing import (
    STATUS_NO_BORDER_PLANE,
    STATUS_OK,
    EmptyScanError,
    PreprocessConfig,
    preprocess_scan,
)

CFG = PreprocessConfig(
    units="raw", plane_distance=0.004, removal_distance=0.005, dbscan_eps=0.02, dbscan_min_points=5, border=4
)


def _scan(h: int = 48, w: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A tilted plane (metres) with a box 2 cm above it in the middle and a far-away speck of outliers."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = (xx - w / 2) * 0.002, (yy - h / 2) * 0.002
    z = 0.5 + 0.1 * x - 0.05 * y
    obj = (np.abs(yy - h / 2) < 8) & (np.abs(xx - w / 2) < 8)
    z = np.where(obj, z - 0.02, z)
    xyz = np.stack([x, y, z], axis=-1).astype(np.float32)
    xyz[obj & (yy > h / 2 + 6) & (xx > w / 2 + 6)] += np.float32([0, 0, -0.2])  # outliers, 20 cm off
    return xyz, obj


def test_removes_the_plane_keeps_the_object_and_pads_to_a_square():
    xyz, obj = _scan()
    before = xyz.copy()
    rgb = np.full((48, 40, 3), 200, np.uint8)
    res = preprocess_scan(xyz, rgb, None, CFG)
    np.testing.assert_array_equal(xyz, before)  # input untouched
    assert res.status == STATUS_OK
    a, b, c, d = res.plane
    assert abs(abs(c) - 0.9938) < 0.01  # the fitted normal is the plane's (0.1, -0.05, -1) normalised
    assert res.xyz.shape == (100, 100, 3) and res.rgb.shape == (100, 100, 3)
    valid = np.any(res.xyz != 0, axis=-1)
    assert 0 < valid.sum() <= obj.sum()
    assert res.removed_outliers > 0  # the speck 20 cm away is not the largest cluster
    assert res.rgb[~valid].max() == 0 and res.rgb[valid].min() == 200


def test_idempotent_and_empty_border_gets_a_status():
    xyz, _ = _scan()
    once = preprocess_scan(xyz, None, None, CFG)
    twice = preprocess_scan(once.xyz, None, None, CFG)
    assert twice.status == STATUS_NO_BORDER_PLANE
    np.testing.assert_array_equal(once.xyz, twice.xyz)


def test_empty_scan_raises_a_value_error():
    with pytest.raises(EmptyScanError):
        preprocess_scan(np.zeros((8, 8, 3), np.float32), config=CFG)
    nan = np.full((8, 8, 3), np.nan, np.float32)
    with pytest.raises(ValueError, match="no valid points"):
        preprocess_scan(nan, config=CFG)


def test_millimetre_scans_scale_the_metre_thresholds():
    xyz, _ = _scan()
    cfg = PreprocessConfig(units="auto").scaled_for(xyz * 1000)
    assert cfg.removal_distance == pytest.approx(5.0) and cfg.units == "raw"
    assert PreprocessConfig(units="auto").scaled_for(xyz).removal_distance == pytest.approx(0.005)
