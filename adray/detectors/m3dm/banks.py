"""M3DM memory banks (RGB, XYZ, fused) and PatchCore-style scoring (M3DM §3.4; Roth et al. 2022).

A bank holds coreset-selected, scalar-normalised patch features. A test grid is scored by:

- patch score = L2 distance to the nearest bank row; image s* = max over patches at patch m_test;
- reweighting: m* = m_test's nearest bank row, n_1, n_2 = m*'s next two nearest bank rows,
  w = 1 - exp(s*/D) / sum_j exp(|m_test - n_j| / D) with D = sqrt(feature dim); image score w * s*;
- map: the patch-score grid, bilinear to the output size (align_corners=False), Gaussian blur (sigma 4 at 224).

Departures, on purpose: each bank is normalised by its *own* scalar mean / std (official: crossed
statistics between banks, issue #18); the XYZ coreset is taken over the foreground rows only (any
nonzero value) and one all-zero (background) row is appended, so its ratio counts foreground patches;
the official code takes 10 % of *all* patches, background included, then drops every selected row with a
zero in it and appends the zero row (``docs/official-code/m3dm.md`` §4.1); maps are not quantised to 8 bits
before the blur.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from adray.memory.coreset import coreset_size, greedy_coreset_indices
from adray.memory.knn import KnnIndex


@dataclass
class MemoryBank:
    """Normalised bank rows ``[M, C]`` and the scalars applied to raw features before search."""

    name: str
    rows: torch.Tensor
    mean: float
    std: float
    knn_backend: str = "auto"
    _index: KnnIndex | None = field(default=None, repr=False)

    def normalise(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std

    def index(self, device: str | torch.device | None = None) -> KnnIndex:
        if self._index is None:
            self._index = KnnIndex(self.rows, backend=self.knn_backend, device=device)  # type: ignore[arg-type]
        return self._index

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {
            f"{self.name}.rows": self.rows.contiguous(),
            f"{self.name}.stats": torch.tensor([self.mean, self.std], dtype=torch.float64),
        }

    @classmethod
    def from_tensors(
        cls, name: str, tensors: dict[str, torch.Tensor], knn_backend: str = "auto"
    ) -> MemoryBank:
        mean, std = (float(v) for v in tensors[f"{name}.stats"])
        return cls(name, tensors[f"{name}.rows"].float().cpu(), mean, std, knn_backend)


def build_bank(
    name: str,
    features: np.ndarray,
    ratio: float,
    *,
    foreground_only: bool = False,
    seed: int = 0,
    projection_dim: int | None = 128,
    knn_backend: str = "auto",
    device: str | None = None,
) -> MemoryBank:
    """Normalise ``features [N, C]`` (raw patch rows of every training item) and keep a greedy coreset."""
    feats = np.asarray(features, dtype=np.float32)
    if foreground_only:
        feats = feats[np.abs(feats).sum(axis=1) > 0]
        if len(feats) == 0:
            raise ValueError(f"{name} bank: no foreground patches in the training features")
    mean, std = _scalar_stats(feats)
    n_keep = coreset_size(len(feats), ratio)
    idx = greedy_coreset_indices(feats, n_keep, projection_dim=projection_dim, seed=seed, device=device)
    rows = (torch.from_numpy(feats[np.sort(idx)]) - mean) / std
    if foreground_only:  # one background row: where no point landed, a test patch matches it exactly
        rows = torch.cat([rows, torch.full((1, rows.shape[1]), -mean / std)])
    return MemoryBank(name, rows.contiguous(), mean, std, knn_backend)


def score_grids(
    bank: MemoryBank, grids: torch.Tensor, out_size: int, blur_sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score feature grids ``[B, C, h, w]``: ``(image_scores [B], maps [B, out_size, out_size])``."""
    b, c, h, w = grids.shape
    patches = bank.normalise(grids.flatten(2).transpose(1, 2).reshape(-1, c).float().cpu())
    index = bank.index()
    dist, nn_idx = index.search(patches, 1)
    dist_t = torch.from_numpy(dist[:, 0]).view(b, h * w)
    nearest = torch.from_numpy(nn_idx[:, 0]).view(b, h * w)
    per_item = patches.view(b, h * w, c)
    scores = torch.empty(b, dtype=torch.float32)
    root_d = math.sqrt(c)
    for i in range(b):
        s_star, m = dist_t[i].max(dim=0)
        m_star = bank.rows[nearest[i, m]]
        _, nbr = index.search(m_star[None], 3)
        neighbours = bank.rows[torch.from_numpy(nbr[0, 1:])]
        if len(neighbours) == 0:
            scores[i] = s_star
            continue
        d_nbr = torch.linalg.norm(per_item[i, m][None] - neighbours, dim=1)
        weight = 1.0 - torch.exp(s_star / root_d) / torch.exp(d_nbr / root_d).sum()
        scores[i] = weight * s_star
    maps = dist_t.view(b, 1, h, w)
    maps = F.interpolate(maps, size=(out_size, out_size), mode="bilinear", align_corners=False)
    return scores, gaussian_blur(maps, blur_sigma)[:, 0]


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, 1, H, W]`` (radius 4 sigma, reflect padding)."""
    if sigma <= 0:
        return maps
    radius = max(1, int(math.ceil(4 * sigma)))
    radius = min(radius, maps.shape[-1] - 1, maps.shape[-2] - 1)
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    out = F.conv2d(F.pad(maps, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))


def _scalar_stats(feats: np.ndarray, chunk: int = 1 << 16) -> tuple[float, float]:
    total, sq, n = 0.0, 0.0, 0
    for start in range(0, len(feats), chunk):
        part = feats[start : start + chunk].astype(np.float64)
        total += float(part.sum())
        sq += float((part * part).sum())
        n += part.size
    mean = total / max(n, 1)
    std = math.sqrt(max(sq / max(n, 1) - mean * mean, 0.0)) or 1.0
    return mean, std
