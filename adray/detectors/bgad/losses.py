"""BGAD losses: soft-clipped maximum likelihood, the explicit boundary, semi-push-pull hinges, focal weights.

Notation: ``ll`` is the per-patch log-likelihood divided by the channel count; ``s = ll / normalizer``
(normalizer 10 puts normal patches near -1, so the margin tau = 0.1 is meaningful).

- ML term: ``mean(w * -log sigmoid(ll))`` (= softplus(-ll); CFLOW's objective).
- Boundary: ``b_n`` = the ``beta``-quantile (lower tail, index ``floor(beta * N)`` of the ascending sort)
  of the normal ``s``; ``b_a = b_n - tau``. Detached.
- Pull: ``mean over normals with s <= b_n of w_n * (b_n - s)``; push: ``mean over anomalies with
  s >= b_a of w_a * (s - b_a)`` ("semi": anomalies already below ``b_a`` are left alone).
- Asymmetric focal weights (on detached ``s``): normal ``1`` if ``s > -0.2`` else
  ``11.7 * (1 - e^s)^0.5 * |s|``; anomalous ``1`` if ``s <= -1`` else ``0.53 * (1 + e^s)^2 / |s|``.

Departure from the official code: every mean over an empty set is a zero that stays attached to the graph
(the official code produces NaN losses, steps on them, then drops them from its running average), and
``|s|`` in the anomalous weight is floored at ``abs_floor`` so the weight stays finite at ``s = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field

from adray.config import Config, Flag


class LossConfig(Config):
    """Official defaults (README/scripts.sh values; ``pos_beta`` 0.01 as documented, not the 0.05 code default)."""

    beta: Annotated[float, Flag("--beta")] = Field(
        0.01, description="boundary quantile of normal log-likelihoods"
    )
    normalizer: float = 10.0
    tau: Annotated[float, Flag("--tau")] = Field(
        0.1, description="margin between normal and anomaly boundaries"
    )
    push_pull_weight: float = 1.0  # lambda
    focal_weighting: bool = True
    abs_floor: float = 1e-3

    model_config = ConfigDict(frozen=True)


def ml_loss(ll: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``mean(w * -log sigmoid(ll))``; zero (attached) for an empty input."""
    nll = F.softplus(-ll)
    if weights is not None:
        nll = nll * weights
    return _safe_mean(nll, ll)


def normal_boundary(ll_normal: torch.Tensor, beta: float, normalizer: float) -> torch.Tensor | None:
    """``b_n``: the lower-tail ``beta``-quantile of normal ``ll / normalizer``; ``None`` without normals."""
    n = ll_normal.numel()
    if n == 0:
        return None
    s_sorted, _ = torch.sort(ll_normal.detach().flatten() / normalizer)
    return s_sorted[min(int(beta * n), n - 1)]


def pull_loss(s_normal: torch.Tensor, b_n: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``w * (b_n - s)`` over normal patches with ``s <= b_n`` (zero when none violate)."""
    violating = s_normal <= b_n
    term = b_n - s_normal[violating]
    if weights is not None:
        term = term * weights[violating]
    return _safe_mean(term, s_normal)


def push_loss(
    s_anomalous: torch.Tensor, b_a: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of ``w * (s - b_a)`` over anomalous patches with ``s >= b_a`` (zero when none violate)."""
    violating = s_anomalous >= b_a
    term = s_anomalous[violating] - b_a
    if weights is not None:
        term = term * weights[violating]
    return _safe_mean(term, s_anomalous)


def normal_focal_weights(s: torch.Tensor) -> torch.Tensor:
    """Up-weights hard (low-likelihood) normals: ``1`` if ``s > -0.2`` else ``11.7 sqrt(1 - e^s) |s|``."""
    s = s.detach()
    hard = 11.7 * torch.sqrt(torch.clamp(1.0 - torch.exp(s), min=0.0)) * s.abs()
    return torch.where(s > -0.2, torch.ones_like(s), hard)


def anomalous_focal_weights(s: torch.Tensor, abs_floor: float = 1e-3) -> torch.Tensor:
    """Up-weights hard (high-likelihood) anomalies: ``1`` if ``s <= -1`` else ``0.53 (1 + e^s)^2 / |s|``."""
    s = s.detach()
    hard = 0.53 * (1.0 + torch.exp(s)) ** 2 / s.abs().clamp(min=abs_floor)
    return torch.where(s <= -1.0, torch.ones_like(s), hard)


@dataclass
class ChunkLoss:
    """One optimisation chunk's loss and its parts (parts are floats, for logging)."""

    loss: torch.Tensor
    ml: float
    pull: float
    push: float
    boundary: float | None


def push_pull_chunk_loss(ll: torch.Tensor, anomalous: torch.Tensor, cfg: LossConfig) -> ChunkLoss:
    """Step-2 loss of one chunk of patches: ``L_ML(normals) + lambda * (L_pull + L_push)``.

    ``ll``: ``[N]`` log-likelihoods / C; ``anomalous``: ``[N]`` bool patch labels. A chunk without
    anomalies gets the (focal-weighted) ML term only, as in the official code; a chunk without normals
    has no boundary (and anomalies never enter the ML term), so its loss is an attached zero.
    """
    normal_ll = ll[~anomalous]
    s_normal = normal_ll / cfg.normalizer
    w_n = normal_focal_weights(s_normal) if cfg.focal_weighting else None
    ml = ml_loss(normal_ll, w_n)
    b_n = normal_boundary(normal_ll, cfg.beta, cfg.normalizer)
    if not bool(anomalous.any()) or b_n is None:
        return ChunkLoss(ml, float(ml.detach()), 0.0, 0.0, None if b_n is None else float(b_n))
    s_anom = ll[anomalous] / cfg.normalizer
    w_a = anomalous_focal_weights(s_anom, cfg.abs_floor) if cfg.focal_weighting else None
    pull = pull_loss(s_normal, b_n, w_n)
    push = push_loss(s_anom, b_n - cfg.tau, w_a)
    loss = ml + cfg.push_pull_weight * (pull + push)
    return ChunkLoss(loss, float(ml.detach()), float(pull.detach()), float(push.detach()), float(b_n))


def _safe_mean(values: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    # An empty mean is NaN in torch; keep the graph (DDP wants every flow parameter touched) with a zero.
    if values.numel() == 0:
        return anchor.sum() * 0.0
    return values.mean()
