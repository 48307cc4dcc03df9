"""Plain-torch BGAD fitting steps, shared by the single-process fit and the Ray Train loop.

The backbone is frozen, so its features are computed once per item and cached (:class:`FeatureCache`);
an epoch is then cheap. One *meta-epoch* = ``sub_epochs`` passes over the entries; meta-epochs below
``ml_meta_epochs`` (and all of them without anomalies) are step 1: ``-log sigmoid(ll)`` on normal patches.
Later ones are step 2: normal + anomalous images with :func:`~adray.detectors.bgad.losses.push_pull_chunk_loss`.
Per image batch and level, patches are shuffled and cut into ``chunk_size`` chunks, one optimiser step each
(the remainder chunk included). Distributed callers pass DDP-wrapped flows (one wrapper per level, one
shared Adam), the same global cache and entries on every rank, and a :class:`~.parallel.RankGroup`: each
rank then trains its shard of every global chunk (the rule is in :mod:`adray.detectors.bgad.parallel`).
Collectives come in as callables, so nothing here needs Ray or an initialised process group.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from adray.detectors.bgad.config import BgadTrainConfig
from adray.detectors.bgad.flows import log_likelihood
from adray.detectors.bgad.images import normalise, patch_labels
from adray.detectors.bgad.losses import ml_loss, push_pull_chunk_loss
from adray.detectors.bgad.model import BgadModel, Normaliser, image_scores
from adray.detectors.bgad.parallel import (
    DIGEST_PRIME,
    RankGroup,
    canonical_order,
    chunk_shard,
    global_chunk_ll,
    patch_digest,
)
from adray.detectors.bgad.positional import condition_rows

Reduce = Callable[[torch.Tensor], torch.Tensor]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass
class TrainItem:
    """One decoded training image at model size. ``role``: normal | anomaly | synthetic | calibration."""

    item_id: str
    image: np.ndarray  # uint8 [S, S, 3]
    mask: np.ndarray | None  # bool [S, S]; None = all normal
    role: str


@dataclass
class FeatureCache:
    """Frozen backbone features and patch labels of every cached item (CPU tensors)."""

    features: list[torch.Tensor]  # per level [M, C, h, w]
    labels: list[torch.Tensor]  # per level [M, h, w] bool
    item_ids: list[str]
    roles: list[str]

    def indices(self, *roles: str) -> torch.Tensor:
        return torch.tensor([i for i, r in enumerate(self.roles) if r in roles], dtype=torch.long)

    def __add__(self, other: FeatureCache) -> FeatureCache:
        return FeatureCache(
            [torch.cat([a, b]) for a, b in zip(self.features, other.features)],
            [torch.cat([a, b]) for a, b in zip(self.labels, other.labels)],
            self.item_ids + other.item_ids,
            self.roles + other.roles,
        )


def gather_feature_cache(local: FeatureCache, canonical_ids: Sequence[str], group: RankGroup) -> FeatureCache:
    """Every rank's cached items, all-gathered and put in ``canonical_ids`` order (the single-worker order).

    Raises ``RuntimeError`` when the ranks' items are not exactly ``canonical_ids``."""
    if group.world == 1 and list(local.item_ids) == list(canonical_ids):
        return local
    ids = group.gather_list(list(local.item_ids))
    roles = group.gather_list(list(local.roles))
    order = canonical_order(ids, canonical_ids)
    features = [group.gather(f)[order] for f in local.features]
    labels = [group.gather(lab.to(torch.uint8))[order].bool() for lab in local.labels]
    return FeatureCache(features, labels, list(canonical_ids), [roles[int(k)] for k in order])


@torch.no_grad()
def build_feature_cache(
    model: BgadModel, items: Sequence[TrainItem], *, batch_size: int = 16, device: torch.device | str = "cpu"
) -> FeatureCache:
    """Run the frozen backbone once per item; labels come from masks by nearest downsampling."""
    from adray.backbones.timm_features import input_normalisation

    mean, std = input_normalisation(model.backbone)
    per_level: list[list[torch.Tensor]] = [[] for _ in model.channels]
    size = model.cfg.image_size
    if not items:  # a rank that owns nothing still needs the per-level shapes (for gathers)
        x = torch.zeros(1, 3, size, size, device=device)
        per_level = [[feat[:0].cpu()] for feat in model.features(x)]
    masks = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        x = torch.from_numpy(np.stack([normalise(it.image, mean, std) for it in chunk])).to(device)
        for level, feat in enumerate(model.features(x)):
            per_level[level].append(feat.cpu())
        for it in chunk:
            m = it.mask if it.mask is not None else np.zeros((size, size), dtype=bool)
            masks.append(torch.from_numpy(np.ascontiguousarray(m)))
    features = [torch.cat(f) for f in per_level]
    mask_t = torch.stack(masks) if masks else torch.zeros(0, size, size, dtype=torch.bool)
    labels = [patch_labels(mask_t, f.shape[2], f.shape[3]) for f in features]
    return FeatureCache(features, labels, [it.item_id for it in items], [it.role for it in items])


def epoch_entries(cache: FeatureCache, cfg: BgadTrainConfig, step2: bool) -> torch.Tensor:
    """Cache indices seen once per sub-epoch: normals (+ anomalies x ``anomaly_repeats`` + synthetic)."""
    entries = [cache.indices("normal")]
    if step2:
        entries += [cache.indices("anomaly")] * cfg.anomaly_repeats + [cache.indices("synthetic")]
    return torch.cat(entries)


def is_step2(cfg: BgadTrainConfig, meta_epoch: int) -> bool:
    return cfg.supervised and meta_epoch >= cfg.ml_meta_epochs


def learning_rate(cfg: BgadTrainConfig, meta_epoch: int, progress: float) -> float:
    """Cosine over meta-epochs to ``lr * rate^3``; linear warm-up from ``lr / 10`` over the first
    ``warmup_meta_epochs`` (``progress`` in [0, 1) = fraction of the current meta-epoch done)."""
    eta_min = cfg.lr * cfg.lr_decay_rate**3

    def cosine(e: float) -> float:
        return eta_min + (cfg.lr - eta_min) * (1 + math.cos(math.pi * e / cfg.meta_epochs)) / 2

    if meta_epoch < cfg.warmup_meta_epochs:
        p = (meta_epoch + progress) / cfg.warmup_meta_epochs
        start = cfg.lr * 0.1
        return start + p * (cosine(cfg.warmup_meta_epochs) - start)
    return cosine(meta_epoch)


def make_optimizer(flows: Sequence[nn.Module], lr: float) -> torch.optim.Adam:
    params = [p for f in flows for p in f.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=lr)


def train_meta_epoch(
    flows: Sequence[nn.Module],
    optimizer: torch.optim.Optimizer,
    cache: FeatureCache,
    entries: torch.Tensor,
    cfg: BgadTrainConfig,
    meta_epoch: int,
    *,
    pos_dim: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    group: RankGroup | None = None,
) -> dict[str, float]:
    """One meta-epoch (``sub_epochs`` shuffled passes over ``entries``); returns loss and speed figures.

    With a ``group`` of W ranks every rank must pass the same ``cache``, ``entries`` and ``generator`` seed;
    it trains its :func:`~.parallel.chunk_shard` of each global chunk. ``steps`` (optimiser steps),
    ``patches`` (all ranks) and ``patch_digest`` (which patches, in which step) match a single-worker run;
    ``rank_patches`` and ``patches_per_s`` are this rank's."""
    group = group or RankGroup()
    step2 = is_step2(cfg, meta_epoch)
    for f in flows:
        f.train()
    n_batches = math.ceil(len(entries) / cfg.batch_size)
    tally = _Tally(device)
    t0 = time.perf_counter()
    for sub in range(cfg.sub_epochs):
        order = entries[torch.randperm(len(entries), generator=generator)]
        for b in range(n_batches):
            lr = learning_rate(cfg, meta_epoch, (sub * n_batches + b) / (cfg.sub_epochs * n_batches))
            for param_group in optimizer.param_groups:
                param_group["lr"] = lr
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            for level, flow in enumerate(flows):
                batch = _LevelBatch(cache, idx, level, len(flows), pos_dim, device)
                perm = torch.randperm(batch.rows.shape[0], generator=generator).to(device)
                for chunk in perm.split(cfg.chunk_size):
                    _chunk_step(flow, optimizer, batch, chunk, cfg, step2, group, tally)
    seconds = time.perf_counter() - t0
    digest = int(group.reduce_sum(tally.digest.cpu().reshape(1))[0]) % DIGEST_PRIME
    out = {k: v / max(tally.steps, 1) for k, v in tally.sums.items()}
    out.update(
        meta_epoch=meta_epoch,
        step=2 if step2 else 1,
        lr=learning_rate(cfg, meta_epoch, 0.0),
        steps=tally.steps,
        patches=tally.patches,
        rank_patches=tally.rank_patches,
        patch_digest=digest,
        seconds=seconds,
        patches_per_s=tally.rank_patches / max(seconds, 1e-9),
    )
    return out


class _Tally:
    def __init__(self, device: torch.device | str) -> None:
        self.sums = {"loss": 0.0, "ml": 0.0, "pull": 0.0, "push": 0.0}
        self.steps = self.patches = self.rank_patches = 0
        self.digest = torch.zeros((), dtype=torch.long, device=device)


class _LevelBatch:
    """One image batch at one level on ``device``: patch rows, conditions, labels and global patch ids."""

    def __init__(
        self, cache: FeatureCache, idx: torch.Tensor, level: int, levels: int, pos_dim: int, device
    ) -> None:
        feat = cache.features[level][idx].to(device)
        n, c, h, w = feat.shape
        self.rows = feat.permute(0, 2, 3, 1).reshape(-1, c)
        self.labels = cache.labels[level][idx].reshape(-1).to(device)
        self.cond = condition_rows(pos_dim, h, w, n, device)
        # (cache index, level, position): the same patch has the same id whatever the worker count
        item = idx.to(device).repeat_interleave(h * w)
        self.ids = (item * levels + level) * (h * w) + torch.arange(h * w, device=device).repeat(n)


def _chunk_step(
    flow: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: _LevelBatch,
    chunk: torch.Tensor,
    cfg: BgadTrainConfig,
    step2: bool,
    group: RankGroup,
    tally: _Tally,
) -> None:
    """One optimiser step on one global chunk; this rank runs the flow on its shard only."""
    start, end = chunk_shard(chunk.numel(), group.rank, group.world)
    mine = chunk[start:end]
    if mine.numel():
        ll_mine = log_likelihood(flow, batch.rows[mine], batch.cond[mine])
    else:  # fewer patches than ranks: a zero-length slice of one row keeps DDP's gradient hooks firing
        ll_mine = log_likelihood(flow, batch.rows[chunk[:1]], batch.cond[chunk[:1]])[:0]
    ll = global_chunk_ll(ll_mine, start, end, chunk.numel(), group)
    labels = batch.labels[chunk]
    if step2:
        parts = push_pull_chunk_loss(ll, labels, cfg.loss)
        loss = parts.loss
        tally.sums["pull"] += parts.pull
        tally.sums["push"] += parts.push
        tally.sums["ml"] += parts.ml
    else:
        loss = ml_loss(ll[~labels])
        tally.sums["ml"] += float(loss.detach())
    optimizer.zero_grad(set_to_none=True)
    # DDP averages over ranks: W x the global loss through this rank's shard sums to the global gradient
    (loss * group.world if group.world > 1 else loss).backward()
    optimizer.step()
    tally.sums["loss"] += float(loss.detach())
    tally.digest = (tally.digest + patch_digest(batch.ids[mine], tally.steps)) % DIGEST_PRIME
    tally.steps += 1
    tally.patches += int(chunk.numel())
    tally.rank_patches += int(mine.numel())


@torch.no_grad()
def fit_normaliser(
    model: BgadModel,
    cache: FeatureCache,
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    reduce_max: Reduce = _identity,
    indices: torch.Tensor | None = None,
) -> Normaliser:
    """Freeze per-level max ``ll`` and the max summed map over the cached ``normal`` items (or ``indices``:
    this rank's share when ranks hold the same cache; ``reduce_max`` combines the shares)."""
    model.eval()
    idx = cache.indices("normal") if indices is None else indices
    levels = len(model.channels)
    level_max = torch.full((levels,), -torch.inf, dtype=torch.float64)
    batches = idx.split(batch_size) if idx.numel() else ()
    for b in batches:
        lls = model.level_log_likelihoods([f[b].to(device) for f in cache.features])
        level_max = torch.maximum(level_max, torch.stack([ll.max().double().cpu() for ll in lls]))
    level_max = reduce_max(level_max)
    map_max = torch.tensor([-torch.inf], dtype=torch.float64)
    for b in batches:
        lls = model.level_log_likelihoods([f[b].to(device) for f in cache.features])
        total = model.summed_map(lls, level_max.tolist())
        map_max = torch.maximum(map_max, total.max().double().cpu().reshape(1))
    map_max = reduce_max(map_max)
    return Normaliser([float(v) for v in level_max], float(map_max[0]))


@torch.no_grad()
def cached_image_scores(
    model: BgadModel, cache: FeatureCache, idx: torch.Tensor, normaliser: Normaliser, **options: Any
) -> torch.Tensor:
    """Image scores ``[n]`` of cached items (same computation as :meth:`BgadDetector.score`): those of
    :func:`cached_scores_and_maps`, whose keyword ``options`` (``batch_size``, ``device``) it takes."""
    return cached_scores_and_maps(model, cache, idx, normaliser, **options)[0]


@torch.no_grad()
def cached_scores_and_maps(
    model: BgadModel,
    cache: FeatureCache,
    idx: torch.Tensor,
    normaliser: Normaliser,
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image scores [n], anomaly maps [n, S, S])`` of cached items, as :meth:`BgadDetector.score`
    computes them (``S = image_size``; ``n = 0`` gives ``[0]`` and ``[0, S, S]``)."""
    model.eval()
    size = int(model.cfg.image_size)
    scores, maps = [torch.zeros(0)], [torch.zeros(0, size, size)]
    for b in idx.split(batch_size) if idx.numel() else ():
        lls = model.level_log_likelihoods([f[b].to(device) for f in cache.features])
        batch_maps = normaliser.map_max - model.summed_map(lls, normaliser.level_max)
        scores.append(image_scores(batch_maps, model.cfg.top_k).float().cpu())
        maps.append(batch_maps.float().cpu())
    return torch.cat(scores), torch.cat(maps)
