"""WinCLIP's window mechanism (Jeong et al., CVPR 2023, Sec. 4.2, Eq. 2-3), vectorised.

- :func:`window_indices`: the patch indices of every k x k window (stride 1 by default) on a patch grid.
- :func:`encode_windows`: window embeddings F_ij = f(x ⊙ w_ij) by *dropping tokens*: each window is the class
  token plus its k² patch tokens, each keeping its original positional embedding, through ``ln_pre``, the
  transformer (in the installed open_clip's layout), ``ln_post`` and the projection. All windows of all
  images go through the transformer together in chunks of a bounded number of tokens.
- :func:`harmonic_aggregation`: per patch, the harmonic mean of the scores of the windows that cover it,
  as one matrix product with a precomputed window/patch incidence matrix (no Python loop over patches).

Departures from anomalib: one gather for all windows instead of one ``index_select`` per window; the
transformer layout is checked (anomalib permutes to LND unconditionally, which on open_clip >= 2.26 makes
all window embeddings identical); aggregation is a matmul instead of a loop over patches.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

from adray.backbones.open_clip import run_blocks_mixed, run_transformer


@functools.lru_cache(maxsize=64)
def window_indices(grid: tuple[int, int], k: int, stride: int = 1) -> torch.Tensor:
    """``[n_windows, k*k]`` int64 patch indices (row-major on ``grid``) of each k x k window.

    Windows are ordered row-major by their top-left patch; e.g. grid (3, 3), k=2 gives
    ``[[0,1,3,4],[1,2,4,5],[3,4,6,7],[4,5,7,8]]``.
    """
    rows, cols = grid
    if k < 1 or stride < 1:
        raise ValueError(f"window size and stride must be >= 1, got k={k}, stride={stride}")
    if k > rows or k > cols:
        raise ValueError(
            f"a {k}x{k} window does not fit the {rows}x{cols} patch grid; use window scales no larger than "
            "the grid (for ViT-B-16-plus-240: 15x15)"
        )
    top = torch.arange(0, rows - k + 1, stride)
    left = torch.arange(0, cols - k + 1, stride)
    offsets = (torch.arange(k)[:, None] * cols + torch.arange(k)[None, :]).reshape(-1)
    starts = (top[:, None] * cols + left[None, :]).reshape(-1)
    return (starts[:, None] + offsets[None, :]).contiguous()


@functools.lru_cache(maxsize=64)
def _incidence(grid: tuple[int, int], k: int, stride: int) -> torch.Tensor:
    """``[n_patches, n_windows]`` float32, 1 where the window covers the patch."""
    idx = window_indices(grid, k, stride)
    inc = torch.zeros(grid[0] * grid[1], idx.shape[0])
    inc[idx, torch.arange(idx.shape[0])[:, None].expand_as(idx)] = 1.0
    return inc


def harmonic_aggregation(
    window_scores: torch.Tensor, grid: tuple[int, int], k: int, stride: int = 1, eps: float = 1e-12
) -> torch.Tensor:
    """Scores per patch ``[N, rows, cols]`` from window scores ``[N, n_windows]`` (Eq. 3).

    S(p) = n_p / sum_{w covers p} 1/s_w. A zero window score gives (about) zero for the patches it covers;
    scores are clamped at ``eps`` so that 0 * inf never appears in the product.
    """
    inc = _incidence(grid, k, stride).to(window_scores.device)
    if window_scores.shape[-1] != inc.shape[1]:
        raise ValueError(
            f"got {window_scores.shape[-1]} window scores, but a {grid} grid has {inc.shape[1]} {k}x{k} windows"
        )
    reciprocal = 1.0 / window_scores.float().clamp_min(eps)
    sums = reciprocal @ inc.T  # [N, n_patches]
    out = inc.sum(dim=1) / sums
    return out.reshape(window_scores.shape[0], *grid)


def embed_tokens(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``[N, 1 + P, width]``: class + patch tokens with positional embeddings, before ``ln_pre``.

    This is the shared input of the full-image pass and of every window (anomalib hooks ``patch_dropout``
    for it); ``patch_dropout`` is skipped because it is the identity in eval mode.
    """
    x = visual.conv1(images.to(visual.conv1.weight.dtype))
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    return x + visual.positional_embedding.to(x.dtype)


def encode_windows(
    visual: nn.Module,
    tokens: torch.Tensor,
    indices: torch.Tensor,
    max_tokens: int = 32768,
    transformer: nn.Module | None = None,
    autocast: torch.dtype | None = None,
    mixed: bool = False,
) -> torch.Tensor:
    """Window embeddings ``[N, n_windows, D]`` from embedded tokens ``[N, 1 + P, width]`` (:func:`embed_tokens`).

    ``indices`` ``[n_windows, k*k]`` are patch indices (:func:`window_indices`). Sequences go through the
    transformer in chunks of at most ``max_tokens`` tokens; each sequence is computed independently, so
    the result does not depend on the chunking or on the other images. ``transformer`` overrides
    ``visual.transformer`` (e.g. its bf16-weight copy); ``autocast`` runs the transformer under autocast, or,
    with ``mixed``, through :func:`run_blocks_mixed` (fp32 residual stream, ``autocast`` dtype matmuls).
    """
    n_images = tokens.shape[0]
    cls = torch.zeros(indices.shape[0], 1, dtype=indices.dtype, device=indices.device)
    seq_idx = torch.cat([cls, indices + 1], dim=1).to(tokens.device)  # [n_windows, 1 + k*k]
    seqs = tokens[:, seq_idx].flatten(0, 1)  # [N * n_windows, L, width], one gather for all windows
    per_chunk = max(1, max_tokens // seq_idx.shape[1])
    outputs = []
    for start in range(0, seqs.shape[0], per_chunk):
        x = visual.ln_pre(seqs[start : start + per_chunk])
        blocks = transformer if transformer is not None else visual.transformer
        if mixed and autocast is not None:
            x = run_blocks_mixed(blocks, x, autocast)
        else:
            with _autocast(x.device, autocast):
                x = run_transformer(blocks, x)
        outputs.append(visual.ln_post(x[:, 0].float()) @ visual.proj.float())
    return torch.cat(outputs).reshape(n_images, indices.shape[0], -1)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
