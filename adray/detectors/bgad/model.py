"""The BGAD network: a frozen timm backbone, one conditional flow per feature level, and per-item maps.

Scoring is per item (batch-invariant): per-level log-likelihood maps ``ll_l`` become
``exp(ll_l - level_max_l)``, are upsampled bilinearly (``align_corners=True``) to the input size and summed;
the anomaly map is ``map_max - sum``. ``level_max_l`` and ``map_max`` are frozen from the *training
normals* at fit time (the official code uses maxima over the whole test set, which makes one image's score
depend on every other test image). Image score = mean of the ``top_k`` largest map values (1 = max).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from adray.backbones.timm_features import backbone_record, feature_channels, load_backbone
from adray.detectors.bgad.config import BgadConfig
from adray.detectors.bgad.flows import build_conditional_flow, log_likelihood
from adray.detectors.bgad.positional import condition_rows


@dataclass
class Normaliser:
    """Frozen scoring constants: per-level max log-likelihood and the max summed map on training normals."""

    level_max: list[float]
    map_max: float

    def to_dict(self) -> dict[str, object]:
        return {"level_max": [float(v) for v in self.level_max], "map_max": float(self.map_max)}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Normaliser:
        return cls([float(v) for v in d["level_max"]], float(d["map_max"]))  # type: ignore[union-attr,arg-type]


class BgadModel(nn.Module):
    """Backbone + flows. ``backbone_info`` is what the artifact records to rebuild the same backbone: given
    (an artifact's), it is kept as is and checked against the weights found; else it is what was loaded."""

    def __init__(self, cfg: BgadConfig, backbone_info: dict | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        record = backbone_info or backbone_record(
            cfg.backbone, cfg.weights, pretrained_tag=cfg.pretrained_tag, seed=cfg.backbone_seed
        )
        self.backbone, loaded = load_backbone(record, features_only=True, out_indices=cfg.out_indices)
        self.backbone_info = backbone_info if backbone_info is not None else loaded
        self.channels = feature_channels(self.backbone)
        self.flows = nn.ModuleList(
            build_conditional_flow(
                c,
                cond_dim=cfg.pos_dim,
                n_blocks=cfg.n_blocks,
                clamp=cfg.clamp,
                hidden_ratio=cfg.hidden_ratio,
                permute_soft=cfg.permute_soft,
                seed=cfg.flow_seed + 1000 * level,
            )
            for level, c in enumerate(self.channels)
        )

    def train(self, mode: bool = True) -> BgadModel:
        super().train(mode)
        self.backbone.eval()  # frozen, BN statistics stay fixed
        return self

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Frozen backbone feature maps ``[N, C_l, h_l, w_l]`` for normalised images ``[N, 3, S, S]``."""
        self.backbone.eval()
        return [f.detach().float() for f in self.backbone(images)]

    def level_log_likelihoods(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per-level ``ll / C`` maps ``[N, h_l, w_l]``, computed in row chunks of ``cfg.score_chunk``."""
        out = []
        for flow, feat in zip(self.flows, features):
            n, c, h, w = feat.shape
            rows = feat.permute(0, 2, 3, 1).reshape(-1, c)
            cond = condition_rows(self.cfg.pos_dim, h, w, n, feat.device)
            parts = [
                log_likelihood(flow, rows[i : i + self.cfg.score_chunk], cond[i : i + self.cfg.score_chunk])
                for i in range(0, rows.shape[0], self.cfg.score_chunk)
            ]
            out.append(torch.cat(parts).reshape(n, h, w))
        return out

    def summed_map(self, lls: Sequence[torch.Tensor], level_max: Sequence[float]) -> torch.Tensor:
        """``sum_l upsample(exp(ll_l - level_max_l))`` at ``image_size`` -> ``[N, S, S]`` (high = normal)."""
        size = (self.cfg.image_size, self.cfg.image_size)
        total = None
        for ll, m in zip(lls, level_max):
            p = torch.exp(ll - m)[:, None]
            up = F.interpolate(p, size=size, mode="bilinear", align_corners=True)[:, 0]
            total = up if total is None else total + up
        assert total is not None
        return total

    @torch.no_grad()
    def anomaly_maps(self, images: torch.Tensor, normaliser: Normaliser) -> torch.Tensor:
        """Anomaly maps ``[N, S, S]`` (high = anomalous) for normalised images."""
        lls = self.level_log_likelihoods(self.features(images))
        return normaliser.map_max - self.summed_map(lls, normaliser.level_max)


def image_scores(maps: torch.Tensor, top_k: int = 1) -> torch.Tensor:
    """Per-item image score: the mean of the ``top_k`` largest map values (``top_k=1``: the max)."""
    flat = maps.reshape(maps.shape[0], -1)
    if top_k <= 1:
        return flat.max(dim=1).values
    return flat.topk(min(top_k, flat.shape[1]), dim=1).values.mean(dim=1)


def flow_tensors(model: BgadModel) -> dict[str, torch.Tensor]:
    """The flows' weights as flat named tensors (``flow{level}.{param}``), for safetensors."""
    return {f"flow{i}.{k}": v for i, flow in enumerate(model.flows) for k, v in flow.state_dict().items()}


def load_flow_tensors(model: BgadModel, tensors: dict[str, torch.Tensor]) -> None:
    for i, flow in enumerate(model.flows):
        prefix = f"flow{i}."
        flow.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
