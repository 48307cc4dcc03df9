"""Exact nearest-neighbour search over a memory bank: faiss (GPU index when present) or torch.

``KnnIndex(bank).search(queries, k) -> (distances, indices)`` returns L2 distances (not squared), nearest
first, as float32 / int64 numpy arrays. ``backend="auto"`` uses faiss when it imports (``IndexFlatL2``,
moved to a GPU when faiss sees one and ``device`` is not CPU), else a chunked ``torch.cdist`` + ``topk``
on ``device``. Both are exact, so they agree up to float rounding and ties.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

Backend = Literal["auto", "faiss", "torch"]


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


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
            backend = "faiss" if faiss_available() else "torch"
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
        else:
            raise ValueError(f"unknown kNN backend {backend!r}; use auto, faiss or torch")

    def search(self, queries: np.ndarray | torch.Tensor, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        q = queries.detach().cpu().numpy() if isinstance(queries, torch.Tensor) else np.asarray(queries)
        q = np.ascontiguousarray(q, dtype=np.float32).reshape(-1, self.dim)
        k = min(int(k), self.n)
        if self.backend == "faiss":
            sq, idx = self._index.search(q, k)
            return np.sqrt(np.maximum(sq, 0.0)).astype(np.float32), idx.astype(np.int64)
        dists, idxs = [], []
        for chunk in torch.from_numpy(q).to(self._bank.device).split(self.query_chunk):
            d, i = torch.cdist(chunk, self._bank).topk(k, dim=1, largest=False)
            dists.append(d.cpu())
            idxs.append(i.cpu())
        return torch.cat(dists).numpy().astype(np.float32), torch.cat(idxs).numpy().astype(np.int64)


def _faiss_index(arr: np.ndarray, device: torch.device | None):
    import faiss

    index = faiss.IndexFlatL2(arr.shape[1])
    want_gpu = device is None or device.type == "cuda"
    if want_gpu and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        res = faiss.StandardGpuResources()
        gpu = 0 if device is None or device.index is None else device.index
        index = faiss.index_cpu_to_gpu(res, gpu, index)
        index._adray_resources = res  # keep the resources alive as long as the index
    index.add(arr)
    return index
