"""M3DM configuration: modes, backbones, banks, scoring; defaults follow the paper / official code.

Pydantic models (:class:`adray.config.Config`, frozen): a bad value raises a one-line ConfigError (a
``ValueError``). Float settings are :data:`adray.config.Real` (an int stays an int), so ``to_dict`` gives
exactly the documents the dataclasses did and the versions of existing artifacts stay the same.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, field_validator

from adray.backbones.point_mae import PointMAEConfig
from adray.backbones.vit_features import ViTConfig
from adray.config import Config, Real
from adray.detectors.m3dm.fusion import FusionConfig
from adray.detectors.m3dm.preprocessing import PreprocessConfig

MODES = ("rgb", "xyz", "rgb+xyz")


class M3DMConfig(Config):
    """Everything that changes what a built M3DM detector computes (hashed into its version).

    ``mode``: ``rgb`` (DINO bank only), ``xyz`` (Point-MAE bank only) or ``rgb+xyz`` (both banks and
    decision-layer fusion, plus the UFF fused bank when ``fusion`` is true: the full method).
    Coreset ratios: the paper's f = 0.1 for every bank (the official code's effective 4% / 10% / 1% for
    rgb / xyz / fused comes from a size computed on the wrong bank, ``docs/official-code/m3dm.md`` §4.1).
    """

    model_config = ConfigDict(frozen=True)

    category: str
    mode: str = "rgb+xyz"
    fusion: bool = True
    img_size: int = 224
    vit: ViTConfig = Field(default_factory=ViTConfig)
    point: PointMAEConfig = Field(default_factory=PointMAEConfig)
    point_weights: str = "pretrained"
    point_seed: int = 0
    point_normalisation: str = "none"  # none (official: raw coordinates) | center | unit_sphere
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    uff: FusionConfig = Field(default_factory=FusionConfig)
    coreset_ratio: dict[str, Real] = Field(default_factory=lambda: {"rgb": 0.1, "xyz": 0.1, "fused": 0.1})
    projection_dim: int | None = 128
    blur_sigma: Real = 4.0  # at 224 px; scaled with img_size
    dlf_kernel: str = "linear"
    dlf_nu: Real = 0.5
    dlf_max_pixel_rows: int = 10000
    dlf_scale_quantile: Real = 0.9  # DLF inputs / this quantile of |x| (artifacts before: 0.5, the median)
    dlf_pixel_rows: str = "foreground"  # pixels the pixel SVM is fitted on: foreground | all (before)
    knn_backend: str = "auto"
    seed: int = 0

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, mode: str) -> str:
        if mode not in MODES:
            raise ValueError(f"unknown M3DM mode {mode!r}; choose from {MODES}")
        return mode

    @field_validator("dlf_pixel_rows")
    @classmethod
    def _known_pixel_rows(cls, rows: str) -> str:
        if rows not in ("foreground", "all"):
            raise ValueError(f"dlf_pixel_rows must be foreground or all, got {rows!r}")
        return rows

    @property
    def uses_rgb(self) -> bool:
        return "rgb" in self.mode

    @property
    def uses_xyz(self) -> bool:
        return "xyz" in self.mode

    @property
    def uses_fusion(self) -> bool:
        return self.mode == "rgb+xyz" and self.fusion

    @property
    def bank_names(self) -> tuple[str, ...]:
        names = (("rgb",) if self.uses_rgb else ()) + (("xyz",) if self.uses_xyz else ())
        return names + (("fused",) if self.uses_fusion else ())

    @property
    def point_grid(self) -> int:
        return self.img_size // 4

    @property
    def map_sigma(self) -> float:
        return self.blur_sigma * self.img_size / 224.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> M3DMConfig:
        """The config of a saved artifact (:meth:`to_dict`'s document); documents written before
        ``bn_stats``, ``dlf_scale_quantile`` and ``dlf_pixel_rows`` get the values they were built with.
        Raises :class:`adray.errors.ConfigError` for an unknown key or a bad value."""
        d = dict(d)
        point = dict(d.pop("point"))
        point.setdefault("bn_stats", "running")  # artifacts from before bn_stats ran the encoder in eval mode
        d.setdefault("dlf_scale_quantile", 0.5)  # artifacts from before divided DLF inputs by their median
        d.setdefault("dlf_pixel_rows", "all")  # ... and fitted the pixel SVM on every pixel
        return cls(point=point, **d)

    def with_dims(self, rgb_dim: int, xyz_dim: int) -> M3DMConfig:
        """A copy whose fusion block takes ``rgb_dim`` / ``xyz_dim`` features (the extractor's)."""
        return self.replace(uff=self.uff.replace(rgb_dim=rgb_dim, xyz_dim=xyz_dim))


def tiny_config(category: str, mode: str = "rgb+xyz", img_size: int = 64, **overrides: Any) -> M3DMConfig:
    """A CI-sized configuration: 2-block ViT-Tiny/8 and a 2-block Point-MAE, random weights, no pretrained
    downloads; preprocessing distances for the synthetic millimetre scenes of :mod:`adray.synthetic`.

    The point branch sees the cloud in Point-MAE's own convention (``unit_sphere``: centred, scaled into
    the unit ball), with per-cloud BatchNorm statistics (as the official extractor) and 256 groups of 32
    (:meth:`PointMAEConfig.tiny`). With centred millimetre coordinates (|centre| up to ~13 mm) the
    random positional embedding outweighed the group tokens and 3D-only defects scored at chance.
    """
    vit = ViTConfig(
        name="vit_tiny_patch16_224",
        weights="random",
        seed=0,
        timm_kwargs={"img_size": img_size, "patch_size": 8, "depth": 2},
    )
    pre = PreprocessConfig(
        units="raw",
        plane_distance=0.2,
        removal_distance=0.3,
        dbscan_eps=2.0,
        dbscan_min_points=10,
        pad_multiple=1,
    )
    uff = FusionConfig(steps=60, warmup_steps=10, batch_items=4, max_patches=1024, lr=1e-3)
    base = dict(
        mode=mode,
        img_size=img_size,
        vit=vit,
        point=PointMAEConfig.tiny(),
        point_weights="random",
        preprocess=pre,
        uff=uff,
        projection_dim=32,
        point_normalisation="unit_sphere",
        dlf_max_pixel_rows=2048,
    )
    base.update(overrides)
    return M3DMConfig(category=category, **base)
