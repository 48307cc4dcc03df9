"""2-D sin/cos positional encoding, the condition of BGAD's (and CFLOW's) per-patch flows.

For ``dim = D`` (divisible by 4) and ``k = 0 .. D/4 - 1`` with ``w_k = exp(-2k ln(1e4) / (D/2))``:

- channel ``2k``       = sin(x * w_k), channel ``2k + 1``       = cos(x * w_k)  (x = column index)
- channel ``D/2 + 2k`` = sin(y * w_k), channel ``D/2 + 2k + 1`` = cos(y * w_k)  (y = row index)

The official code rebuilds it on the CPU for every batch and level; here it is computed once per
``(dim, h, w, device, dtype)`` and cached (callers must not modify the returned tensor).
"""

from __future__ import annotations

import functools
import math

import torch


def positional_encoding_2d(
    dim: int, height: int, width: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The ``[dim, height, width]`` encoding (cached, read-only by convention)."""
    if dim % 4:
        raise ValueError(f"positional encoding dim must be divisible by 4, got {dim}")
    return _cached(dim, height, width, str(torch.device(device)), dtype)


@functools.lru_cache(maxsize=64)
def _cached(dim: int, height: int, width: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(torch.arange(0, half, 2, dtype=torch.float64) * (-math.log(1e4) / half))  # [D/4]
    xs = torch.arange(width, dtype=torch.float64)[:, None] * freqs  # [W, D/4]
    ys = torch.arange(height, dtype=torch.float64)[:, None] * freqs  # [H, D/4]
    enc = torch.zeros(dim, height, width, dtype=torch.float64)
    enc[0:half:2] = torch.sin(xs).T[:, None, :].expand(-1, height, -1)
    enc[1:half:2] = torch.cos(xs).T[:, None, :].expand(-1, height, -1)
    enc[half::2] = torch.sin(ys).T[:, :, None].expand(-1, -1, width)
    enc[half + 1 :: 2] = torch.cos(ys).T[:, :, None].expand(-1, -1, width)
    return enc.to(device=device, dtype=dtype)


def condition_rows(dim: int, height: int, width: int, batch: int, device: torch.device | str) -> torch.Tensor:
    """The encoding as flow condition rows ``[batch * height * width, dim]`` in (n, y, x) order."""
    enc = positional_encoding_2d(dim, height, width, device)
    return enc.reshape(dim, height * width).T.repeat(batch, 1)
