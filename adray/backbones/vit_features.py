"""ViT patch-token grids for M3DM's RGB branch (DINO ViT-B/8, Caron et al., ICCV 2021).

M3DM takes the last block's patch tokens after the final LayerNorm (``patch_embed`` -> ``_pos_embed`` ->
``norm_pre`` -> blocks -> ``norm``; the CLS / prefix tokens dropped): a 28 x 28 x 768 grid for a 224 input
with patch 8. timm's ``forward_features`` is exactly that sequence. Any timm ViT works by name; tests use a
small one (e.g. ``vit_tiny_patch16_224`` with ``img_size=64, patch_size=8, depth=2``, random weights).
Weights are resolved by :func:`adray.backbones.timm_features.load_backbone` (tag | file | seeded random); a
weights file is loaded under the named tag's config, so ``vit_base_patch8_224.dino`` with the DINO file
normalises inputs with DINO's ImageNet mean/std, as with ``pretrained``. :attr:`ViTPatchGrid.record` says
what was loaded (``name.tag``, hub id, file, sha256, or the seed).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import ConfigDict, Field
from torch import nn

from adray.config import Config

DINO_VIT_B8 = "vit_base_patch8_224.dino"


class ViTConfig(Config):
    """Which ViT, which weights, and timm overrides (``img_size``, ``patch_size``, ``depth``, ...).
    A frozen pydantic :class:`~adray.config.Config` (bad values raise a one-line ConfigError)."""

    model_config = ConfigDict(frozen=True)

    name: str = DINO_VIT_B8
    weights: str = "pretrained"
    seed: int = 0
    timm_kwargs: dict[str, Any] = Field(default_factory=dict)


class ViTPatchGrid(nn.Module):
    """``forward(images [B, 3, H, W]) -> [B, C, H/p, W/p]``: final-norm patch tokens as a grid."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        from adray.backbones.timm_features import backbone_record, input_normalisation, load_backbone

        self.config = config
        self.model, self.record = load_backbone(
            backbone_record(config.name, config.weights, seed=config.seed),
            features_only=False,
            num_classes=0,
            **config.timm_kwargs,
        )
        self.record["timm_kwargs"] = dict(config.timm_kwargs)
        self.mean, self.std = input_normalisation(self.model)
        self.embed_dim = int(self.model.embed_dim)
        self.grid = tuple(int(s) for s in self.model.patch_embed.grid_size)
        self.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.model.forward_features(images)
        tokens = tokens[:, self.model.num_prefix_tokens :]
        b, n, c = tokens.shape
        h, w = self.grid
        if n != h * w:
            raise ValueError(
                f"ViT returned {n} patch tokens for a {h}x{w} grid; input size must match img_size"
            )
        return tokens.transpose(1, 2).reshape(b, c, h, w)
