"""BGAD's data-parallel rule without Ray: chunk shards, and W ranks' averaged update = one worker's update.

The update comparison runs in float64, where the split rule is exact up to rounding (agreement ~1e-12);
in float32 the summation order alone moves single gradient entries by ~1e-5 relative.
"""

from __future__ import annotations

import copy

import pytest
import torch

from adray.detectors.bgad.config import BgadTrainConfig
from adray.detectors.bgad.fit import FeatureCache, _chunk_step, _LevelBatch, _Tally, gather_feature_cache
from adray.detectors.bgad.flows import build_conditional_flow, log_likelihood
from adray.detectors.bgad.losses import LossConfig
from adray.detectors.bgad.parallel import RankGroup, canonical_order, chunk_shard

C, POS, H, W_ = 6, 8, 4, 4


@pytest.mark.parametrize("n, world", [(4097, 3), (4096, 3), (10, 4), (2, 3), (0, 2), (7, 1)])
def test_rank_shards_are_the_whole_chunk_without_overlap(n, world):
    bounds = [chunk_shard(n, r, world) for r in range(world)]
    covered = [i for a, b in bounds for i in range(a, b)]
    assert covered == list(range(n))  # union = the chunk, in order, nothing twice
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_chunk_shard_rejects_a_rank_outside_the_group():
    with pytest.raises(ValueError):
        chunk_shard(10, 3, 3)


def _cache(n_items: int, seed: int = 0) -> FeatureCache:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n_items, C, H, W_, generator=g, dtype=torch.float64)
    labels = torch.zeros(n_items, H, W_, dtype=torch.bool)
    labels[-1, 1:3, 1:3] = True  # a few anomalous patches in the last image
    ids = [f"i{k}" for k in range(n_items)]
    return FeatureCache([feats], [labels], ids, ["normal"] * (n_items - 1) + ["anomaly"])


def _batch(cache: FeatureCache) -> _LevelBatch:
    batch = _LevelBatch(cache, torch.arange(len(cache.item_ids)), 0, 1, POS, "cpu")
    batch.cond = batch.cond.double()
    return batch


def _step(flow, cache, chunk, cfg, step2, group):
    """Parameter change of one ``_chunk_step`` with SGD lr 1 (= minus the gradient the rank applies)."""
    flow = copy.deepcopy(flow)
    before = [p.detach().clone() for p in flow.parameters() if p.requires_grad]
    opt = torch.optim.SGD([p for p in flow.parameters() if p.requires_grad], lr=1.0)
    batch = _batch(cache)
    _chunk_step(flow, opt, batch, chunk, cfg, step2, group, _Tally("cpu"))
    return [p.detach() - b for p, b in zip((p for p in flow.parameters() if p.requires_grad), before)]


@pytest.mark.parametrize("step2, n_chunk", [(True, 41), (False, 41), (True, 2)])
def test_world_3_averaged_update_equals_the_single_worker_update(step2, n_chunk):
    # 41 patches over 3 ranks (14/14/13); 2 patches leave rank 2 with an empty shard
    cfg = BgadTrainConfig(chunk_size=4096, loss=LossConfig(beta=0.1, focal_weighting=True))
    cache = _cache(3)
    flow = build_conditional_flow(C, cond_dim=POS, n_blocks=2, seed=0).double()
    labels = cache.labels[0].reshape(-1)
    anomalous = torch.nonzero(labels).flatten()
    rest = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(1))
    rest = rest[~torch.isin(rest, anomalous)]
    chunk = (
        torch.cat([anomalous[:2], rest[: n_chunk - 2]])[torch.randperm(n_chunk)] if n_chunk > 2 else rest[:2]
    )
    single = _step(flow, cache, chunk, cfg, step2, RankGroup())
    batch = _batch(cache)
    with torch.no_grad():
        all_ll = log_likelihood(flow, batch.rows[chunk], batch.cond[chunk])  # what the gather returns
    world = 3
    per_rank = [
        _step(flow, cache, chunk, cfg, step2, RankGroup(r, world, gather=lambda t: all_ll.clone()))
        for r in range(world)
    ]
    averaged = [sum(parts) / world for parts in zip(*per_rank)]  # what DDP's gradient average gives
    assert any(float(d.abs().max()) > 1e-4 for d in single)  # the step moved the flow
    for got, want in zip(averaged, single):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_gathered_cache_is_in_the_canonical_single_worker_order():
    full = _cache(5)
    canonical = list(full.item_ids)
    # two ranks own items 0,3,4 and 1,2: the gather concatenates in rank order
    parts = [[0, 3, 4], [1, 2]]
    gathered_ids = [canonical[k] for p in parts for k in p]
    order = torch.tensor([k for p in parts for k in p])

    def gather(t: torch.Tensor) -> torch.Tensor:
        src = full.features[0] if t.dtype != torch.uint8 else full.labels[0].to(torch.uint8)
        return src[order]

    local = FeatureCache([full.features[0][:3]], [full.labels[0][:3]], gathered_ids[:3], ["normal"] * 3)
    group = RankGroup(
        0,
        2,
        gather=gather,
        gather_list=lambda v: gathered_ids if v[0].startswith("i") else [full.roles[k] for k in order],
    )
    out = gather_feature_cache(local, canonical, group)
    assert out.item_ids == canonical and out.roles == full.roles
    assert torch.equal(out.features[0], full.features[0]) and torch.equal(out.labels[0], full.labels[0])


def test_canonical_order_refuses_missing_or_duplicated_items():
    with pytest.raises(RuntimeError, match="missing"):
        canonical_order(["a", "b"], ["a", "b", "c"])
    with pytest.raises(RuntimeError):
        canonical_order(["a", "b", "b"], ["a", "b"])
