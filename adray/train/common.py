"""Helpers shared by the Ray Train loops: storage for checkpoints, stable sharding, uneven collectives.

- Sharding: ``shard_of(item_id, world_size)`` uses a stable hash (Python's ``hash`` is salted per process),
  so every worker agrees on who owns an item without communicating, and every item is owned exactly once
  (unlike ``get_dataset_shard``'s equal split, which drops tail rows).
- Equal step counts for DDP: :func:`pad_to_length` repeats a rank's own entries up to the longest rank's
  count, so every item is still seen at least once per epoch.
- Collectives work with or without an initialised process group (local mode / single process = identity).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Callable

import torch
import torch.distributed as dist

from adray import storage


def shard_of(item_id: str, world_size: int) -> int:
    """The rank that owns ``item_id`` (stable across processes and runs)."""
    if world_size <= 1:
        return 0
    digest = hashlib.sha256(item_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % world_size


def owner_filter(rank: int, world_size: int) -> Callable[[str], bool]:
    """``owns(item_id)`` for ``rank`` of ``world_size``."""
    return lambda item_id: shard_of(item_id, world_size) == rank


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Element-wise max over ranks (identity without a process group)."""
    return _all_reduce(t, dist.ReduceOp.MAX)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (identity without a process group)."""
    return _all_reduce(t, dist.ReduceOp.SUM)


def _all_reduce(t: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
    if not distributed():
        return t
    out = t.clone().to(_collective_device())
    dist.all_reduce(out, op=op)
    return out.to(t.device)


def all_gather_uneven(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` along dim 0 in rank order; first dims may differ (pad, gather, trim)."""
    if not distributed():
        return t
    dev = _collective_device()
    local = t.to(dev)
    n = torch.tensor([local.shape[0]], device=dev, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=dev)
    padded[: local.shape[0]] = local
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)]).to(t.device)


def pad_to_length(entries: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """``entries`` followed by randomly chosen repeats of its own elements, ``length`` in total."""
    missing = length - entries.shape[0]
    if missing < 0:
        raise ValueError(f"cannot pad {entries.shape[0]} entries down to {length}")
    if missing == 0:
        return entries
    if entries.shape[0] == 0:
        raise ValueError(
            "a worker owns no training items for this epoch; use fewer workers than items (sharding is by "
            "item id, so very small datasets can leave a worker empty)"
        )
    extra = entries[torch.randint(entries.shape[0], (missing,), generator=generator)]
    return torch.cat([entries, extra])


def equalise_entries(entries: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pad this rank's entries to the longest rank's count (DDP needs equal step counts on every rank)."""
    length = int(all_reduce_max(torch.tensor([entries.shape[0]], dtype=torch.long))[0])
    return pad_to_length(entries, length, generator)


def checkpoint_storage(root_uri: str) -> tuple[str, object]:
    """``(storage_path, pyarrow filesystem)`` for ``RunConfig`` from a URL (local path or s3://...)."""
    fs, path = storage.pyarrow_filesystem(root_uri)
    return path, fs


def default_checkpoint_root(output_uri: str) -> str:
    """``<parent of the artifact folder>/checkpoints`` (same storage as the artifact)."""
    loc = storage.resolve(output_uri)
    return loc.url(posixpath.join(posixpath.dirname(loc.path.rstrip("/")) or "/", "checkpoints"))


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def worker_threads(cpus_per_worker: float) -> int:
    """Torch intra-op threads for a worker holding ``cpus_per_worker`` logical CPUs."""
    return max(1, min(int(cpus_per_worker), os.cpu_count() or 1))
