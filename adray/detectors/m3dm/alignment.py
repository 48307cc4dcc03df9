"""Point Feature Alignment (M3DM §3.2): Point-MAE group features onto the image grid.

1. every valid point takes the inverse-squared-distance weighted mean of its 3 nearest group centres'
   features (PointNet++ feature propagation; w_i = 1 / (d_i^2 + 1e-8), normalised);
2. the per-point features are scattered to their pixels of the (resized) organised cloud, zeros elsewhere;
3. 3 x 3 average pooling (stride 1, no padding: 224 -> 222) and adaptive average pooling to 56 x 56.

The official code sorts a full N x 1024 distance matrix; we take a chunked ``topk``, which is the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def interpolate_point_features(
    points: torch.Tensor, centers: torch.Tensor, features: torch.Tensor, k: int = 3, chunk: int = 8192
) -> torch.Tensor:
    """``[N, C]`` features for ``points [N, 3]`` from ``centers [G, 3]`` with ``features [G, C]``."""
    k = min(k, centers.shape[0])
    out = []
    for part in points.split(chunk):
        d2 = torch.cdist(part, centers) ** 2
        near, idx = d2.topk(k, dim=1, largest=False)
        w = 1.0 / (near + 1e-8)
        w = w / w.sum(dim=1, keepdim=True)
        out.append((features[idx] * w[..., None]).sum(dim=1))
    return torch.cat(out)


def scatter_to_grid(
    features: torch.Tensor, pixel_index: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """``[C, H, W]`` with ``features [N, C]`` at flat pixel indices ``pixel_index [N]``, zeros elsewhere."""
    grid = features.new_zeros(features.shape[1], height * width)
    grid[:, pixel_index] = features.T
    return grid.view(-1, height, width)


def pool_point_grid(grid: torch.Tensor, out_size: int) -> torch.Tensor:
    """3 x 3 average pool (stride 1) then adaptive average pool to ``out_size``; ``[..., C, H, W]``."""
    squeeze = grid.ndim == 3
    x = grid[None] if squeeze else grid
    x = F.adaptive_avg_pool2d(F.avg_pool2d(x, 3, stride=1), out_size)
    return x[0] if squeeze else x


def align_points_to_grid(
    points: torch.Tensor,
    pixel_index: torch.Tensor,
    centers: torch.Tensor,
    features: torch.Tensor,
    grid_hw: tuple[int, int],
    out_size: int,
) -> torch.Tensor:
    """The whole alignment for one scan: valid ``points [N, 3]`` at flat pixels ``pixel_index [N]`` of an
    ``grid_hw`` organised cloud, group ``centers [G, 3]`` / ``features [G, C]`` -> ``[C, out, out]``."""
    per_point = interpolate_point_features(points, centers, features)
    return pool_point_grid(scatter_to_grid(per_point, pixel_index, *grid_hw), out_size)


def upsample_rgb_grid(grid: torch.Tensor, out_size: int) -> torch.Tensor:
    """RGB patch grid ``[..., C, h, w]`` to ``out_size`` by adaptive average pooling (M3DM; 28 -> 56 is a
    nearest 2x upsample). This is the correct pairing of RGB and point patches used for fusion training
    too (the official training pairs are scrambled by a repeat/reshape, ``docs/official-code/m3dm.md`` §3)."""
    return F.adaptive_avg_pool2d(grid, out_size)
