"""Defect regions (adray.regions) and pixel thresholds (adray.detectors.thresholds) on hand-made maps."""

from __future__ import annotations

import numpy as np
import pytest

from adray.detectors.thresholds import Decision, calibrate, pixel_threshold_at_fpr
from adray.regions import find_regions, region_mask


def test_regions_boxes_areas_peaks_and_order():
    m = np.zeros((10, 12), np.float32)
    m[1:3, 2:5] = 0.6  # 6 px
    m[2, 3] = 0.9
    m[5:9, 6:10] = 0.7  # 16 px, largest
    m[9, 11] = 0.55  # 1 px
    m[4, 5] = 0.8  # diagonal to (5, 6): joins the 16-px region (8-connected)
    regions, count = find_regions(m, 0.5, pixel_size_mm=0.5)
    assert count == 3 and [r["area_px"] for r in regions] == [17, 6, 1]
    big = regions[0]
    assert (big["x0"], big["y0"], big["x1"], big["y1"]) == (5, 4, 10, 9)
    assert big["peak"] == pytest.approx(0.8) and big["mean"] == pytest.approx((16 * 0.7 + 0.8) / 17)
    assert big["area_mm2"] == pytest.approx(17 * 0.25)
    assert regions[1]["peak"] == pytest.approx(0.9) and (regions[1]["x0"], regions[1]["x1"]) == (2, 5)
    assert region_mask(m, 0.5, regions[1]).sum() == 6


def test_regions_cap_threshold_edge_and_no_pixel_size():
    m = np.zeros((9, 9), np.float32)
    m[::2, ::2] = 1.0  # 25 isolated pixels (diagonal neighbours are 2 apart)
    m[0, 0] = 2.0
    regions, count = find_regions(m, 1.0, max_regions=4)
    assert count == 25 and len(regions) == 4
    assert regions[0]["peak"] == 2.0 and regions[0]["area_mm2"] is None  # equal areas: higher peak first
    assert find_regions(m, 2.001) == ([], 0)
    assert find_regions(m, 2.0)[1] == 1  # >= threshold is in
    with pytest.raises(ValueError, match="2-D"):
        find_regions(m[None], 0.5)
    with pytest.raises(ValueError, match="pixel_size_mm"):
        find_regions(m, 0.5, pixel_size_mm=0.0)


def test_pixel_threshold_flags_at_most_the_rate_of_normal_pixels():
    rng = np.random.default_rng(0)
    maps = rng.random((4, 50, 50)).astype(np.float32)
    t = pixel_threshold_at_fpr(maps, 0.01)
    assert (maps >= t).mean() <= 0.01 and (maps >= np.nextafter(t, -1)).mean() > 0.0095
    t_sub = pixel_threshold_at_fpr(maps, 0.01, max_pixels=1000)  # an even stride of 1 in 10
    assert abs((maps >= t_sub).mean() - 0.01) < 0.005
    d = calibrate(rng.random(20), maps, method="heldout_normals", target_fpr=0.05, target_pixel_fpr=0.01)
    assert d.source == "heldout_normals_fpr_0.05" and d.pixel_threshold == t and d.n_calibration == 20
    assert Decision.from_dict(d.to_dict()) == d
    assert Decision.from_dict(None, 0.3) == Decision(0.3, None, "legacy")
    with pytest.raises(ValueError, match="target_pixel_fpr"):
        pixel_threshold_at_fpr(maps, 2.0)
