"""M3DM inputs and raw features: sample -> fixed-shape arrays (CPU stage) -> RGB / point feature grids.

``prepare_sample`` runs the scan preprocessing, resizes RGB bicubic with antialiasing (PIL's, as the
official loader) and xyz nearest to ``img_size`` and normalises RGB for the ViT. ``FeatureExtractor``
turns a batch into ``{"rgb": [B, Cr, h, w], "xyz": [B, Cx, img_size/4, img_size/4]}`` grids (the modes' subset).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adray.backbones.point_mae import build_point_mae
from adray.backbones.vit_features import ViTPatchGrid
from adray.detectors.m3dm.alignment import align_points_to_grid
from adray.detectors.m3dm.config import M3DMConfig
from adray.detectors.m3dm.preprocessing import EmptyScanError, preprocess_scan
from adray.io.masks import MAP_FRAME_KEY


class MissingModalityError(ValueError):
    """The sample lacks an input the detector's mode needs (e.g. no point cloud for rgb+xyz)."""


def prepare_sample(
    sample: Mapping[str, Any], config: M3DMConfig, mean: tuple[float, ...], std: tuple[float, ...]
) -> dict[str, np.ndarray]:
    """``{"image": float32 [3, S, S]}`` and / or ``{"xyz": float32 [3, S, S]}`` (zeros = no point).

    With xyz, also ``{MAP_FRAME_KEY: int32 [4]}`` (:data:`adray.io.masks.MAP_FRAME_KEY`): the scan's
    place on the square it was padded to, so its maps are cut back to the scan's own pixels.
    """
    size = config.img_size
    image = sample.get("image")
    xyz = sample.get("xyz")
    if config.uses_rgb and image is None:
        raise MissingModalityError(f"M3DM mode {config.mode!r} needs an RGB image; the sample has none")
    if config.uses_xyz and xyz is None:
        raise MissingModalityError(
            f"M3DM mode {config.mode!r} needs a point cloud (xyz); the sample has none"
        )
    out: dict[str, np.ndarray] = {}
    if config.uses_xyz:
        xyz = np.asarray(xyz, dtype=np.float32)
        if xyz.ndim != 3 or xyz.shape[-1] != 3:
            raise ValueError(f"M3DM wants an organised point cloud [H, W, 3], got {xyz.shape}")
        result = preprocess_scan(xyz, None if image is None else np.asarray(image), None, config.preprocess)
        cloud = torch.from_numpy(result.xyz).permute(2, 0, 1)[None]
        cloud = F.interpolate(cloud, size=(size, size), mode="nearest")[0]
        if not bool((cloud != 0).any()):
            raise EmptyScanError(f"no valid points left after resizing the scan to {size}x{size}")
        out["xyz"] = cloud.numpy().astype(np.float32)
        out[MAP_FRAME_KEY] = np.asarray(result.frame, dtype=np.int32)  # the padding, cut off the map later
        if result.rgb is not None:
            image = result.rgb  # blacked out / padded like the cloud
    if config.uses_rgb:
        t = resize_rgb(np.asarray(image), size)
        t = (t - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
        out["image"] = t.numpy().astype(np.float32)
    return out


def resize_rgb(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` (or grey ``[H, W]``, or RGBA) -> float32 ``[3, size, size]`` in [0, 1].

    Bicubic with antialiasing, as the official M3DM loader (torchvision ``Resize(BICUBIC)`` on a PIL
    image, i.e. PIL's antialiased bicubic); without antialiasing a downscale from ~800 px to 224 only
    samples the texture and aliases it. Matches PIL to within about 1/255 per pixel.
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    t = torch.from_numpy(np.ascontiguousarray(img[..., :3])).permute(2, 0, 1)[None].float() / 255.0
    if tuple(t.shape[-2:]) != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return t.clamp(0, 1)[0]


def normalise_points(points: torch.Tensor, how: str) -> torch.Tensor:
    """``none``: raw coordinates (official); ``center``: minus the centroid; ``unit_sphere``: centred and
    scaled into the unit ball (Point-MAE's pretraining convention)."""
    if how == "none":
        return points
    centred = points - points.mean(dim=0, keepdim=True)
    if how == "center":
        return centred
    if how == "unit_sphere":
        return centred / centred.norm(dim=1).max().clamp_min(1e-12)
    raise ValueError(f"unknown point normalisation {how!r}; use none, center or unit_sphere")


class FeatureExtractor(nn.Module):
    """The frozen backbones of one M3DM configuration (only those its mode needs), in eval mode."""

    def __init__(self, config: M3DMConfig) -> None:
        super().__init__()
        self.config = config
        self.rgb = ViTPatchGrid(config.vit) if config.uses_rgb else None
        self.point = None
        self.point_tag = None
        if config.uses_xyz:
            self.point, self.point_tag = build_point_mae(
                config.point_weights, config.point, config.point_seed
            )
        self.eval()

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.rgb is None:
            return (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        return tuple(self.rgb.mean), tuple(self.rgb.std)

    @property
    def rgb_dim(self) -> int:
        return self.rgb.embed_dim if self.rgb is not None else 0

    @property
    def xyz_dim(self) -> int:
        return self.config.point.out_dim if self.point is not None else 0

    @torch.no_grad()
    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        device = next(self.parameters()).device
        out: dict[str, torch.Tensor] = {}
        if self.rgb is not None:
            out["rgb"] = self.rgb(
                torch.as_tensor(np.asarray(batch["image"]), dtype=torch.float32, device=device)
            )
        if self.point is not None:
            clouds = torch.as_tensor(np.asarray(batch["xyz"]), dtype=torch.float32, device=device)
            grids = []
            for cloud in clouds:
                flat = cloud.reshape(3, -1).T
                valid = torch.nonzero(flat.abs().sum(dim=1) > 0)[:, 0]
                points = normalise_points(flat[valid], self.config.point_normalisation)
                feats, centers = self.point(points)
                grids.append(
                    align_points_to_grid(
                        points, valid, centers, feats, cloud.shape[1:], self.config.point_grid
                    )
                )
            out["xyz"] = torch.stack(grids)
        return out
