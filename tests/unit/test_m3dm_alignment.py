"""Point feature alignment: 3-NN inverse-squared-distance interpolation, scatter, pooling shapes."""

from __future__ import annotations

import torch

from adray.detectors.m3dm.alignment import (
    align_points_to_grid,
    interpolate_point_features,
    pool_point_grid,
    scatter_to_grid,
    upsample_rgb_grid,
)


def test_interpolation_by_hand():
    centers = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.0, 2, 0], [10.0, 10, 10]])
    feats = torch.tensor([[1.0], [2.0], [4.0], [100.0]])
    point = torch.tensor([[0.5, 0.0, 0.0]])
    # squared distances 0.25, 0.25, 4.25 -> weights 4, 4, 1/4.25 (the far centre is not among the 3)
    w = torch.tensor([4.0, 4.0, 1 / 4.25])
    expected = (w * torch.tensor([1.0, 2.0, 4.0])).sum() / w.sum()
    out = interpolate_point_features(point, centers, feats)
    assert torch.allclose(out[0, 0], expected)
    on_centre = interpolate_point_features(centers[:1], centers, feats)
    assert torch.allclose(on_centre, torch.tensor([[1.0]]), atol=1e-6)


def test_scatter_and_pooling_shapes():
    feats = torch.arange(6, dtype=torch.float32).view(3, 2)
    grid = scatter_to_grid(feats, torch.tensor([0, 5, 15]), 4, 4)
    assert grid.shape == (2, 4, 4)
    assert grid[1, 1, 1] == 3 and grid[0, 3, 3] == 4 and grid.sum() == feats.sum()
    big = torch.rand(16, 224, 224)
    assert pool_point_grid(big, 56).shape == (16, 56, 56)  # 224 -> 222 (3x3, stride 1) -> 56
    assert pool_point_grid(big[None], 56).shape == (1, 16, 56, 56)


def test_align_whole_scan_and_rgb_upsampling():
    h = w = 32
    pixel_index = torch.arange(0, h * w, 3)
    points = torch.rand(len(pixel_index), 3)
    centers = points[:16]
    feats = torch.rand(16, 8)
    out = align_points_to_grid(points, pixel_index, centers, feats, (h, w), 8)
    assert out.shape == (8, 8, 8) and out.abs().sum() > 0
    rgb = torch.arange(4, dtype=torch.float32).view(1, 1, 2, 2)
    up = upsample_rgb_grid(rgb, 4)
    assert torch.equal(up[0, 0], torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]))
