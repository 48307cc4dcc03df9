"""Unsupervised Feature Fusion (UFF, M3DM §3.3): patch-wise contrastive fusion of point and RGB features.

Per modality: LayerNorm + two-layer MLP with a 4x hidden width (chi), then a linear head to 256-d
(sigma) used only in the loss. The loss is InfoNCE with temperature T over the foreground patches of a
batch: query = RGB head, key = point head, positives on the diagonal (same image, same patch), every other
foreground patch of the batch a negative, scaled by 2T as in the official code. The fused feature is
``concat[chi_xyz(xyz), chi_rgb(rgb)]``.

Departures from the official code, on purpose:

- training pairs are built with the correct 28 -> 56 RGB upsampling (:func:`paired_patches`); the official
  feature dump scrambles the RGB rows, so only ~0.3% of pairs were spatially matched (``docs/official-code/m3dm.md`` §3);
- the loss needs no process group and has no rank-offset labels: under DDP each rank contrasts its own
  patches and gradients are averaged (the official label offset without an all-gather is wrong for >1 GPU);
- a patch is foreground when its point feature is not all-zero (any point landed in it); the official
  code requires every channel to be nonzero, which with float features is the same in practice.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import ConfigDict
from torch import nn

from adray.backbones.point_mae import Mlp
from adray.config import Config, Real
from adray.detectors.m3dm.alignment import upsample_rgb_grid


class FusionConfig(Config):
    """Architecture + training defaults of the paper / official script (AdamW betas 0.9/0.95, T = 1).
    A frozen pydantic :class:`~adray.config.Config`."""

    model_config = ConfigDict(frozen=True)

    xyz_dim: int = 1152
    rgb_dim: int = 768
    mlp_ratio: Real = 4.0
    head_dim: int = 256
    temperature: Real = 1.0
    lr: Real = 3e-3
    weight_decay: Real = 0.01
    warmup_steps: int = 250
    steps: int = 750
    batch_items: int = 16
    max_patches: int = 4096  # foreground patches per step and rank (caps the N x N logits)
    seed: int = 0

    @property
    def fused_dim(self) -> int:
        return self.xyz_dim + self.rgb_dim


class FeatureFusion(nn.Module):
    """``fuse(xyz [P, Cx], rgb [P, Cr]) -> [P, Cx + Cr]``; ``loss(xyz, rgb)`` for training."""

    def __init__(self, config: FusionConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or FusionConfig()
        self.xyz_norm = nn.LayerNorm(cfg.xyz_dim)
        self.xyz_mlp = Mlp(cfg.xyz_dim, int(cfg.xyz_dim * cfg.mlp_ratio))
        self.rgb_norm = nn.LayerNorm(cfg.rgb_dim)
        self.rgb_mlp = Mlp(cfg.rgb_dim, int(cfg.rgb_dim * cfg.mlp_ratio))
        self.xyz_head = nn.Linear(cfg.xyz_dim, cfg.head_dim)
        self.rgb_head = nn.Linear(cfg.rgb_dim, cfg.head_dim)

    def embed(self, xyz: torch.Tensor, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.xyz_mlp(self.xyz_norm(xyz)), self.rgb_mlp(self.rgb_norm(rgb))

    def fuse(self, xyz: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.embed(xyz, rgb), dim=-1)

    def loss(self, xyz: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        chi_xyz, chi_rgb = self.embed(xyz, rgb)
        return patch_info_nce(self.rgb_head(chi_rgb), self.xyz_head(chi_xyz), self.config.temperature)

    def forward(self, xyz: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:  # DDP calls forward
        return self.loss(xyz, rgb)


def patch_info_nce(query: torch.Tensor, key: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """InfoNCE over ``[P, D]`` pairs (row i of query matches row i of key), times 2T as in M3DM."""
    q = F.normalize(query, dim=1)
    k = F.normalize(key, dim=1)
    logits = q @ k.T / temperature
    labels = torch.arange(q.shape[0], device=q.device)
    return F.cross_entropy(logits, labels) * (2 * temperature)


def chance_loss(n_patches: int, temperature: float = 1.0) -> float:
    """The loss of an uninformative embedding (uniform logits): ``2T log P``."""
    return 2 * temperature * math.log(max(n_patches, 1))


def paired_patches(xyz_grid: torch.Tensor, rgb_grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground patch pairs ``([P, Cx], [P, Cr])`` from point grids ``[B, Cx, S, S]`` and RGB grids
    ``[B, Cr, s, s]`` (upsampled to S): row i of both comes from the same image and the same position."""
    size = xyz_grid.shape[-1]
    rgb = upsample_rgb_grid(rgb_grid, size)
    xyz_rows = xyz_grid.flatten(2).transpose(1, 2).reshape(-1, xyz_grid.shape[1])
    rgb_rows = rgb.flatten(2).transpose(1, 2).reshape(-1, rgb.shape[1])
    fg = xyz_rows.abs().sum(dim=1) > 0
    return xyz_rows[fg], rgb_rows[fg]


def lr_at(step: int, config: FusionConfig) -> float:
    """Linear warm-up then half-cycle cosine to zero (per step, as the official ``lr_sched``)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(model: nn.Module, config: FusionConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay
    )
