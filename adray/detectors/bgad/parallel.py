"""Data-parallel BGAD fitting that follows the single-worker optimisation exactly (plain torch, no Ray).

The rule ("split chunks"): with W ranks, every rank holds the *same* global feature cache (each rank
computes the features of the items it owns, then they are all-gathered into one canonical order), draws the
same global shuffles from a generator seeded without the rank, and so sees the same global image batch
(``batch_size`` images, not ``W x batch_size``) and the same per-level patch permutation. Each global chunk of
``chunk_size`` patches (the official 4096) is cut into W contiguous shards (:func:`chunk_shard`; sizes differ
by at most one when W does not divide the chunk); rank ``r`` runs the flow on shard ``r`` only. The other
ranks' log-likelihoods of the chunk are gathered (detached) and the *global* chunk loss is evaluated with
this rank's shard in place, so the boundary (the beta-quantile of all the chunk's normal patches), the
focal weights, the "no anomaly in the chunk" rule and every mean's denominator are those of the whole
chunk. Each rank back-propagates ``W x`` that loss; DDP averages gradients over W, so the update equals the
single-worker gradient of the global chunk (up to float summation order). Optimiser steps, learning-rate
schedule, meta-epochs and patches seen are therefore those of one worker; W workers split each step's flow
work W ways. Positional conditions travel with their patches, and patch labels (normal/anomalous) are part
of the shared cache, so anomalous patches are split by the same rule as normal ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

Reduce = Callable[[torch.Tensor], torch.Tensor]
DIGEST_PRIME = 2_147_483_647  # 2**31 - 1: patch digests are sums of ((patch id + 1) * (step + 1)) mod this


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _same_list(values: list[Any]) -> list[Any]:
    return list(values)


@dataclass(frozen=True)
class RankGroup:
    """This rank's place in a data-parallel fit and the collectives it needs, as callables.

    ``gather`` concatenates a tensor over ranks along dim 0 in rank order (first dims may differ);
    ``gather_list`` does the same for Python lists; ``reduce_max`` / ``reduce_sum`` are element-wise.
    The defaults are the single-process identities.
    """

    rank: int = 0
    world: int = 1
    gather: Reduce = field(default=_identity, compare=False)
    gather_list: Callable[[list[Any]], list[Any]] = field(default=_same_list, compare=False)
    reduce_max: Reduce = field(default=_identity, compare=False)
    reduce_sum: Reduce = field(default=_identity, compare=False)

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not in a group of {self.world}")


def chunk_shard(n: int, rank: int, world: int) -> tuple[int, int]:
    """``(start, end)`` of rank ``rank``'s contiguous share of a chunk of ``n`` patches.

    The first ``n % world`` ranks take ``n // world + 1`` patches, the others ``n // world``; shards are in
    rank order, cover ``range(n)`` and do not overlap. Raises ``ValueError`` for a rank outside the group.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a group of {world}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def global_chunk_ll(ll_mine: torch.Tensor, start: int, end: int, n: int, group: RankGroup) -> torch.Tensor:
    """The chunk's ``[n]`` log-likelihoods: other ranks' gathered values (detached) around this rank's
    ``ll_mine`` (``[end - start]``, with grad). Single-process: ``ll_mine`` itself."""
    if group.world == 1:
        return ll_mine
    gathered = group.gather(ll_mine.detach())
    if gathered.shape[0] != n:
        raise RuntimeError(f"gathered {gathered.shape[0]} log-likelihoods for a chunk of {n} patches")
    return torch.cat([gathered[:start], ll_mine, gathered[end:]])


def patch_digest(patch_ids: torch.Tensor, step: int) -> torch.Tensor:
    """Order-aware fingerprint of the patches a step trained on: ``sum((id + 1) (step + 1)) mod p`` (int64)."""
    return ((patch_ids.long() + 1) * (step + 1) % DIGEST_PRIME).sum() % DIGEST_PRIME


def canonical_order(gathered_ids: Sequence[str], canonical_ids: Sequence[str]) -> torch.Tensor:
    """Indices that put ``gathered_ids`` (every rank's items, rank order) in ``canonical_ids`` order.

    Raises ``RuntimeError`` when an item is missing, duplicated or unexpected (ranks disagreeing on
    ownership)."""
    pos = {item: k for k, item in enumerate(gathered_ids)}
    if len(pos) != len(gathered_ids) or set(pos) != set(canonical_ids) or len(pos) != len(canonical_ids):
        missing = sorted(set(canonical_ids) - set(pos))[:3]
        extra = sorted(set(pos) - set(canonical_ids))[:3]
        raise RuntimeError(
            f"ranks' cached items do not form the fit plan: {len(gathered_ids)} gathered "
            f"({len(pos)} distinct) for {len(canonical_ids)} planned; missing {missing}, unexpected {extra}"
        )
    return torch.tensor([pos[item] for item in canonical_ids], dtype=torch.long)


def schedule_record(train_cfg: Any, history: Sequence[dict[str, Any]], world: int) -> dict[str, Any]:
    """What the artifact records about the distributed optimisation (``metadata.distributed``)."""
    chunk = int(train_cfg.chunk_size)
    return {
        "rule": "split_chunks",
        "workers": world,
        "global_batch_images": int(train_cfg.batch_size),
        "global_chunk": chunk,
        "rank_chunk": [b - a for a, b in (chunk_shard(chunk, r, world) for r in range(world))],
        "optimizer_steps": int(sum(int(h.get("steps", 0)) for h in history)),
        "steps_per_meta_epoch": [int(h.get("steps", 0)) for h in history],
        "patches": int(sum(int(h.get("patches", 0)) for h in history)),
        "patch_digests": [int(h.get("patch_digest", 0)) for h in history],
        "note": "each optimiser step = one global chunk split across workers; same steps, lr schedule and "
        "patches as one worker",
    }
