"""The maths of M3DM (Wang et al., "Multimodal Industrial Anomaly Detection via Hybrid Fusion", CVPR 2023)
in torch modules: the frozen feature extractor (DINO ViT patch grid + Point-MAE group features,
:class:`FeatureExtractor`), the UFF fusion block (:class:`FeatureFusion`) and the fused grid it gives;
memory banks and their scoring are in :mod:`.banks`, decision-layer fusion in :mod:`.decision`. The
detector class that implements the contract is :class:`adray.detectors.m3dm.detector.M3DMDetector`.
Deliberate departures from the official code are listed in each module's docstring.
"""

from __future__ import annotations

import torch

from adray.detectors import base
from adray.detectors.m3dm.alignment import upsample_rgb_grid
from adray.detectors.m3dm.features import FeatureExtractor
from adray.detectors.m3dm.fusion import FeatureFusion
from adray.detectors.moved import forward_moved

__all__ = ["FeatureExtractor", "FeatureFusion", "backbone_fingerprint", "fused_grid"]


def fused_grid(
    fusion: FeatureFusion, xyz: torch.Tensor, rgb: torch.Tensor, chunk: int = 65536
) -> torch.Tensor:
    """UFF fused grid ``[B, Cx + Cr, S, S]`` from point grids ``[B, Cx, S, S]`` and RGB grids ``[B, Cr, s, s]``."""
    b, cx, s, _ = xyz.shape
    rgb_up = upsample_rgb_grid(rgb, s)
    x_rows = xyz.flatten(2).transpose(1, 2).reshape(-1, cx)
    r_rows = rgb_up.flatten(2).transpose(1, 2).reshape(-1, rgb_up.shape[1])
    with torch.no_grad():
        fused = torch.cat([fusion.fuse(x, r) for x, r in zip(x_rows.split(chunk), r_rows.split(chunk))])
    return fused.view(b, s * s, -1).transpose(1, 2).reshape(b, -1, s, s)


def backbone_fingerprint(extractor: FeatureExtractor) -> str:
    """A hash of the frozen backbones' parameters and buffers (catches a changed init or weights file)."""
    return base.content_hash({}, {k: v.reshape(-1) for k, v in extractor.state_dict().items()})


#: the names of :mod:`.detector` (its ``__all__``), whose home this module was before: forwarded on first use
__getattr__ = forward_moved(__name__, "adray.detectors.m3dm.detector")
