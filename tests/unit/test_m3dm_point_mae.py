"""Point-MAE encoder: torch farthest point sampling, grouping, shapes, checkpoint loading."""

from __future__ import annotations

import pytest
import torch

from adray.backbones.point_mae import (
    MiniPointNet,
    PointCheckpointError,
    PointMAEConfig,
    PointMAEEncoder,
    build_point_mae,
    farthest_point_sample,
    knn_indices,
    load_point_mae_checkpoint,
)


def _cloud(n: int = 2000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(n - 50, 3, generator=g) * 0.1  # a dense blob plus a sparse far shell
    far = torch.nn.functional.normalize(torch.randn(50, 3, generator=g), dim=1) * 2
    return torch.cat([dense, far])


def _coverage(points: torch.Tensor, idx: torch.Tensor) -> float:
    return float(torch.cdist(points, points[idx]).min(dim=1).values.max())


def test_fps_is_deterministic_and_covers_better_than_random():
    pts = _cloud()
    a = farthest_point_sample(pts, 64)
    b = farthest_point_sample(pts, 64)
    assert torch.equal(a, b) and int(a[0]) == 0
    assert len(set(a.tolist())) == 64
    g = torch.Generator().manual_seed(1)
    random_cov = min(_coverage(pts, torch.randperm(len(pts), generator=g)[:64]) for _ in range(10))
    assert _coverage(pts, a) < random_cov


def test_knn_matches_brute_force():
    pts = _cloud(300)
    q = pts[:10]
    idx = knn_indices(q, pts, 5, chunk=3)
    brute = torch.cdist(q, pts).argsort(dim=1)[:, :5]
    assert torch.equal(idx.sort(dim=1).values, brute.sort(dim=1).values)


def test_encoder_shapes_and_eval_determinism():
    cfg = PointMAEConfig.tiny()
    model, tag = build_point_mae("random", cfg, seed=3)
    assert tag == "random:seed=3" and not model.training
    feats, centers = model(_cloud(500))
    assert feats.shape == (cfg.num_group, cfg.out_dim) and centers.shape == (cfg.num_group, 3)
    again, _ = build_point_mae("random", cfg, seed=3)[0](_cloud(500))
    assert torch.equal(feats, again)
    small, _ = model(torch.rand(20, 3))  # fewer points than a group still works
    assert small.shape == (cfg.num_group, cfg.out_dim)


def test_checkpoint_keys_are_remapped_and_missing_keys_reported(tmp_path):
    cfg = PointMAEConfig.tiny()
    src = PointMAEEncoder(cfg)
    state = {f"module.MAE_encoder.{k}": v for k, v in src.state_dict().items()}
    state["module.MAE_decoder.extra.weight"] = torch.zeros(2)
    path = tmp_path / "pointmae.pth"
    torch.save({"base_model": state}, path)
    dst = PointMAEEncoder(cfg)
    unexpected = load_point_mae_checkpoint(dst, str(path))
    assert unexpected == ["MAE_decoder.extra.weight"]
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)
    del state["module.MAE_encoder.norm.weight"]
    torch.save({"base_model": state}, path)
    with pytest.raises(PointCheckpointError, match="norm.weight"):
        load_point_mae_checkpoint(PointMAEEncoder(cfg), str(path))


def test_sample_batchnorm_uses_per_cloud_statistics_and_keeps_running_stats():
    # official extractor: train-mode BN, statistics of the one cloud in the batch -> tokens do not depend
    # on the input units; eval-mode (running) BN with random init is an identity and they do
    torch.manual_seed(0)
    sample = MiniPointNet(16, "sample").eval()
    running = MiniPointNet(16, "running").eval()
    running.load_state_dict(sample.state_dict())
    groups = torch.randn(1, 8, 32, 3)
    before = {k: v.clone() for k, v in sample.state_dict().items()}
    a, b = sample(groups), sample(groups * 1000.0)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(running(groups), running(groups * 1000.0), rtol=1e-2)
    assert all(torch.equal(v, sample.state_dict()[k]) for k, v in before.items())  # running stats untouched
    with pytest.raises(ValueError, match="bn_stats"):
        PointMAEConfig(bn_stats="train")
