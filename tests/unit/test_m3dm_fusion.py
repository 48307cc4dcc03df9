"""UFF: the patch InfoNCE falls on correctly paired patches and stays near chance on shuffled pairs."""

from __future__ import annotations

import torch

from adray.detectors.m3dm.fusion import (
    FeatureFusion,
    FusionConfig,
    chance_loss,
    make_optimizer,
    paired_patches,
    patch_info_nce,
)


def _train(shuffle: bool, steps: int = 25) -> tuple[float, float]:
    torch.manual_seed(0)
    cfg = FusionConfig(xyz_dim=24, rgb_dim=16, head_dim=16, lr=1e-2)
    model = FeatureFusion(cfg)
    opt = make_optimizer(model, cfg)
    mix = torch.randn(24, 16)
    first = last = 0.0
    for step in range(steps):
        xyz = torch.randn(64, 24)
        rgb = xyz @ mix + 0.1 * torch.randn(64, 16)  # the two modalities see the same patch
        if shuffle:
            rgb = rgb[torch.randperm(64)]
        loss = model.loss(xyz, rgb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss.detach()) if step == 0 else first
        last = float(loss.detach())
    return first, last


def test_loss_falls_on_paired_patches():
    first, last = _train(shuffle=False)
    # with T = 1 the logits are cosines in [-1, 1], so the floor is 2 log(1 + 63 e^-2) ~ 4.5, chance 8.3
    assert last < first - 1.2
    assert last < chance_loss(64) - 1.2


def test_loss_stays_near_chance_on_shuffled_pairs():
    _, last = _train(shuffle=True)
    assert last > chance_loss(64) - 0.4


def test_info_nce_values():
    q = torch.eye(4)
    assert float(patch_info_nce(q, q, 0.1)) < 0.01  # perfect alignment
    assert abs(float(patch_info_nce(torch.ones(4, 3), torch.ones(4, 3))) - chance_loss(4)) < 1e-5


def test_paired_patches_keep_position_and_foreground_only():
    xyz = torch.zeros(2, 3, 4, 4)
    xyz[1, :, 2, 3] = 5.0  # one foreground patch: image 1, row 2, col 3
    rgb = torch.arange(2 * 1 * 2 * 2, dtype=torch.float32).view(2, 1, 2, 2)
    x_rows, r_rows = paired_patches(xyz, rgb)
    assert x_rows.shape == (1, 3) and r_rows.shape == (1, 1)
    assert float(r_rows[0, 0]) == float(rgb[1, 0, 1, 1])  # 4x4 position (2,3) <- 2x2 position (1,1)
    fused = FeatureFusion(FusionConfig(xyz_dim=3, rgb_dim=1, head_dim=2)).fuse(x_rows, r_rows)
    assert fused.shape == (1, 4)
