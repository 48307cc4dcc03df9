"""Exact nearest-neighbour search over a memory bank: faiss (GPU index when present) or torch.

``KnnIndex(bank).search(queries, k) -> (distances, indices)`` returns L2 distances (not squared), nearest
first, as float32 / int64 numpy arrays. ``backend="auto"`` (:func:`choose_backend`) takes the faster one
for the machine: faiss's ``IndexFlatL2`` on a GPU when faiss-gpu sees one and ``device`` is not CPU,
otherwise a chunked ``torch.cdist`` + ``topk`` on ``device`` (on CPU torch was ~7x faster than faiss-cpu's
flat index: 3136 queries against 10^5 x 1152 rows, 2 cores, ``python -m adray.bench.m3dm``; README).
``backend="faiss"`` still gives faiss-cpu on request. Both are exact, so they agree up to float rounding
and ties.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

Backend = Literal["auto", "faiss", "torch"]
#: distance-matrix elements per query chunk of the torch backend (256 MB of float32)
_DISTANCE_ELEMENTS = 1 << 26


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def faiss_gpus() -> int:
    """GPUs faiss can use (0 without faiss, with faiss-cpu, or with no visible GPU)."""
    if not faiss_available():
        return 0
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def choose_backend(device: str | torch.device | None = None) -> str:
    """What ``backend="auto"`` runs for ``device``: ``"faiss"`` when faiss-gpu has a GPU and ``device`` is
    ``None`` or CUDA, else ``"torch"`` (exact search on ``device``, CPU by default)."""
    dev = torch.device(device) if device is not None else None
    if (dev is None or dev.type == "cuda") and faiss_gpus() > 0:
        return "faiss"
    return "torch"


class KnnIndex:
    """An exact L2 index over ``bank [N, D]``; search returns ``(dist [Q, k], idx [Q, k])``."""

    def __init__(
        self,
        bank: np.ndarray | torch.Tensor,
        backend: Backend = "auto",
        device: str | torch.device | None = None,
        query_chunk: int = 4096,
    ) -> None:
        if backend == "auto":
            backend = choose_backend(device)  # type: ignore[assignment]
        self.backend: str = backend
        self.query_chunk = query_chunk
        arr = bank.detach().cpu().numpy() if isinstance(bank, torch.Tensor) else np.asarray(bank)
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise ValueError(f"a kNN bank must be a non-empty [N, D] array, got {arr.shape}")
        self.n, self.dim = arr.shape
        self.device = torch.device(device) if device is not None else None
        if backend == "faiss":
            self._index = _faiss_index(arr, self.device)
        elif backend == "torch":
            self._bank = torch.from_numpy(arr).to(self.device or "cpu")
            self._bank_sq = self._bank.square().sum(dim=1)  # [N], once per index
        else:
            raise ValueError(f"unknown kNN backend {backend!r}; use auto, faiss or torch")

    def search(self, queries: np.ndarray | torch.Tensor, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        q = queries.detach().cpu().numpy() if isinstance(queries, torch.Tensor) else np.asarray(queries)
        q = np.ascontiguousarray(q, dtype=np.float32).reshape(-1, self.dim)
        k = min(int(k), self.n)
        if self.backend == "faiss":
            sq, idx = self._index.search(q, k)
            return np.sqrt(np.maximum(sq, 0.0)).astype(np.float32), idx.astype(np.int64)
        # |q - b|^2 = |b|^2 - 2 q.b + |q|^2 as one GEMM per chunk (what faiss's flat index does too);
        # torch.cdist concatenates a copy of the bank on every call. |q|^2 does not change the order.
        per_chunk = max(1, min(self.query_chunk, _DISTANCE_ELEMENTS // self.n))
        dists, idxs = [], []
        for chunk in torch.from_numpy(q).to(self._bank.device).split(per_chunk):
            partial = torch.addmm(self._bank_sq[None], chunk, self._bank.T, alpha=-2.0)
            d, i = partial.topk(k, dim=1, largest=False)
            d = (d + chunk.square().sum(dim=1, keepdim=True)).clamp_min_(0.0).sqrt_()
            dists.append(d.cpu())
            idxs.append(i.cpu())
        return torch.cat(dists).numpy().astype(np.float32), torch.cat(idxs).numpy().astype(np.int64)


def _faiss_index(arr: np.ndarray, device: torch.device | None):
    import faiss

    index = faiss.IndexFlatL2(arr.shape[1])
    want_gpu = device is None or device.type == "cuda"
    if want_gpu and faiss_gpus() > 0:
        res = faiss.StandardGpuResources()
        gpu = 0 if device is None or device.index is None else device.index
        index = faiss.index_cpu_to_gpu(res, gpu, index)
        index._adray_resources = res  # keep the resources alive as long as the index
    index.add(arr)
    return index
