"""Greedy k-center coreset selection (PatchCore, Roth et al., CVPR 2022; used by M3DM for its banks).

The bank (``[N, D]``, a numpy array, a ``np.memmap`` or a tensor) is projected to ``projection_dim`` with
a seeded sparse random projection, *chunk by chunk*: only the projected ``[N, d]`` copy (d << D) and
one chunk of the bank are ever in memory at once, so a bank that lives on disk (memmap) is never loaded
whole, and nothing the size of the bank is allocated besides it. The greedy loop then keeps, for every
row, the squared distance to the nearest selected centre and adds the farthest row, n times.

Departures from M3DM / PatchCore official code, on purpose:

- the projection is seeded (official: ``random_state=None``) and applied in chunks instead of
  ``sklearn.SparseRandomProjection.fit_transform`` on the whole bank (issue #3: host OOM at 765k x 1152);
- the default projection dimension is fixed (128) rather than the Johnson-Lindenstrauss bound for
  eps=0.9 (~300), which the selection quality hardly needs; pass ``projection_dim=None`` for the JL value;
- distances use ``|p|^2 - 2 p.c + |c|^2`` with precomputed norms, so each iteration is one matrix-vector
  product and no ``[N, d]`` temporary.
"""

from __future__ import annotations

import math

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def coreset_size(n_rows: int, ratio: float, minimum: int = 1) -> int:
    """``ceil(ratio * n_rows)``, at least ``minimum`` and at most ``n_rows``."""
    return int(min(n_rows, max(minimum, math.ceil(ratio * n_rows))))


def jl_dimension(n_rows: int, eps: float = 0.9) -> int:
    """The Johnson-Lindenstrauss minimum dimension (as sklearn's ``johnson_lindenstrauss_min_dim``)."""
    return int(4 * math.log(max(n_rows, 2)) / (eps**2 / 2 - eps**3 / 3))


def random_projection_matrix(in_dim: int, out_dim: int, seed: int = 0) -> torch.Tensor:
    """A seeded sparse (Achlioptas / Li) random projection ``[in_dim, out_dim]`` with density 1/sqrt(in_dim)."""
    rng = np.random.default_rng(seed)
    density = 1.0 / math.sqrt(in_dim)
    signs = rng.choice(
        np.array([-1.0, 0.0, 1.0], dtype=np.float32),
        size=(in_dim, out_dim),
        p=[density / 2, 1 - density, density / 2],
    )
    return torch.from_numpy(signs * np.float32(math.sqrt(1.0 / (density * out_dim))))


def project_bank(
    bank: ArrayLike,
    projection_dim: int | None = 128,
    seed: int = 0,
    chunk_rows: int = 65536,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The bank's rows projected to ``[N, d]`` float32, computed chunk by chunk (``d >= D`` copies the bank)."""
    n, dim = int(bank.shape[0]), int(bank.shape[1])
    device = torch.device(device or "cpu")
    d = jl_dimension(n) if projection_dim is None else int(projection_dim)
    if d >= dim:  # projecting up or to the same size gains nothing
        matrix = None
        d = dim
    else:
        matrix = random_projection_matrix(dim, d, seed).to(device)
    out = torch.empty((n, d), dtype=torch.float32, device=device)
    for start in range(0, n, chunk_rows):
        chunk = bank[start : start + chunk_rows]
        chunk = (
            chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.array(chunk, dtype=np.float32))
        )
        chunk = chunk.to(device, torch.float32)
        out[start : start + len(chunk)] = chunk @ matrix if matrix is not None else chunk
    return out


def greedy_coreset_indices(
    bank: ArrayLike,
    n_select: int,
    *,
    projection_dim: int | None = 128,
    seed: int = 0,
    start_index: int = 0,
    chunk_rows: int = 65536,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Indices (int64, selection order) of a greedy k-center coreset of ``n_select`` rows of ``bank``."""
    n = int(bank.shape[0])
    if n == 0:
        raise ValueError("cannot select a coreset from an empty bank")
    n_select = max(1, min(int(n_select), n))
    proj = project_bank(bank, projection_dim, seed, chunk_rows, device)
    sq_norms = (proj * proj).sum(dim=1)
    min_d = torch.full((n,), float("inf"), dtype=torch.float32, device=proj.device)
    selected = torch.empty(n_select, dtype=torch.long, device=proj.device)
    cur = torch.tensor(int(start_index) % n, device=proj.device)
    for i in range(n_select):
        selected[i] = cur
        center = proj[cur]
        d = sq_norms - 2.0 * (proj @ center) + sq_norms[cur]
        torch.minimum(min_d, d, out=min_d)
        min_d[cur] = -1.0  # never reselect a centre (fp error can leave it slightly above 0)
        cur = torch.argmax(min_d)
    return selected.cpu().numpy()


def covering_radius(bank: ArrayLike, subset: np.ndarray, chunk_rows: int = 8192) -> float:
    """max over rows of the L2 distance to the nearest row in ``bank[subset]`` (in the original space)."""
    full = bank if isinstance(bank, torch.Tensor) else torch.from_numpy(np.asarray(bank))
    full = full.float()
    centres = full[torch.as_tensor(subset, dtype=torch.long)]
    worst = 0.0
    for chunk in full.split(chunk_rows):
        worst = max(worst, float(torch.cdist(chunk, centres).min(dim=1).values.max()))
    return worst
