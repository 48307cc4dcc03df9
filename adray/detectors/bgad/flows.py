"""BGAD's conditional normalizing flow (one per feature level) and its per-patch log-likelihood.

Each flow is a FrEIA ``SequenceINN`` of ``n_blocks`` ``AllInOneBlock``s (affine coupling with soft clamping
``clamp * tanh``, SOFTPLUS global affine, a fixed random SO(C) rotation when ``permute_soft``), each
conditioned on the 2-D positional encoding concatenated to the passive half. The coupling subnet is
Linear(d -> hidden_ratio * d), ReLU, Linear(-> d_out), as in the official ``subnet_fc``.

The log-likelihood is ``log N(z; 0, I) + log|det J|`` divided by the channel count C
(``(-C/2 ln 2 pi - |z|^2 / 2 + logdet) / C``), the quantity every BGAD loss and map uses.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def build_conditional_flow(
    channels: int,
    *,
    cond_dim: int = 128,
    n_blocks: int = 8,
    clamp: float = 1.9,
    hidden_ratio: float = 2.0,
    permute_soft: bool = True,
    seed: int | None = None,
) -> nn.Module:
    """A conditional flow on ``[N, channels]`` rows with ``[N, cond_dim]`` conditions.

    With ``seed`` the construction (subnet init and the SO(C) rotations FrEIA draws from NumPy's global
    RNG) is deterministic and leaves the global RNG states untouched, so every DDP rank builds the same flow.
    """
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    def subnet(dims_in: int, dims_out: int) -> nn.Module:
        hidden = int(round(hidden_ratio * dims_in))
        return nn.Sequential(nn.Linear(dims_in, hidden), nn.ReLU(), nn.Linear(hidden, dims_out))

    with _seeded(seed):
        flow = Ff.SequenceINN(channels)
        for _ in range(n_blocks):
            flow.append(
                Fm.AllInOneBlock,
                cond=0,
                cond_shape=(cond_dim,),
                subnet_constructor=subnet,
                affine_clamping=clamp,
                global_affine_type="SOFTPLUS",
                permute_soft=permute_soft,
            )
    return flow


def log_likelihood(flow: nn.Module, rows: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Per-row log-likelihood divided by the channel count: ``[N, C], [N, D] -> [N]``."""
    z, logdet = flow(rows, c=[cond])
    channels = rows.shape[1]
    logp = -channels * HALF_LOG_2PI - 0.5 * (z * z).sum(dim=1) + logdet
    return logp / channels


@contextmanager
def _seeded(seed: int | None):
    if seed is None:
        yield
        return
    state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        np.random.set_state(state)
