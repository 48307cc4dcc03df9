"""M3DM configuration: modes, backbones, banks, scoring; defaults follow the paper / official code.

Pydantic models (:class:`adray.config.Config`, frozen): a bad value raises a one-line ConfigError (a
``ValueError``). Float settings are :data:`adray.config.Real` (an int stays an int), so ``to_dict`` gives
exactly the documents the dataclasses did and the versions of existing artifacts stay the same.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field

from adray.backbones.point_mae import PointMAEConfig
from adray.backbones.vit_features import ViTConfig
from adray.config import Config, Flag, Real, flag_values, one_of
from adray.detectors.m3dm.fusion import FusionConfig
from adray.detectors.m3dm.preprocessing import PreprocessConfig

MODES = ("rgb", "xyz", "rgb+xyz")
#: the memory banks; ``--coreset-ratio`` sets the ratio of all three
BANKS = ("rgb", "xyz", "fused")
#: the paper's coreset fraction f, the default for every bank
CORESET_RATIO = 0.1
#: ``adray build-m3dm`` flags (argparse destinations) that set no single field the same way:
#: :func:`config_from_flags` maps them; the one-field flags are generated from the fields
DERIVED_FLAGS = (
    "no_fusion",
    "weights",
    "rgb_backbone",
    "preprocess_units",
    "no_preprocess",
    "coreset_ratio",
    "uff_steps",
    "tiny",
)


class M3DMConfig(Config):
    """Everything that changes what a built M3DM detector computes (hashed into its version).

    ``mode``: ``rgb`` (DINO bank only), ``xyz`` (Point-MAE bank only) or ``rgb+xyz`` (both banks and
    decision-layer fusion, plus the UFF fused bank when ``fusion`` is true: the full method).
    Coreset ratios: the paper's f = 0.1 for every bank (the official code's effective 4% / 10% / 1% for
    rgb / xyz / fused comes from a size computed on the wrong bank, ``docs/official-code/m3dm.md`` §4.1).
    """

    model_config = ConfigDict(frozen=True)

    category: Annotated[str, Flag("--category")] = Field(
        description="category to build (one artifact per category)"
    )
    mode: Annotated[
        str, Flag("--mode", choices=MODES), one_of(MODES, "unknown M3DM mode {value!r}; choose from {values}")
    ] = Field("rgb+xyz", description="banks: rgb, xyz or both (with DLF)")
    fusion: bool = True  # flag: --no-fusion (config_from_flags)
    img_size: Annotated[int, Flag("--img-size")] = 224
    vit: ViTConfig = Field(default_factory=ViTConfig)
    point: PointMAEConfig = Field(default_factory=PointMAEConfig)
    point_weights: Annotated[str, Flag("--point-weights")] = Field(
        "pretrained", description="Point-MAE checkpoint PATH, or random"
    )
    point_seed: int = 0
    point_normalisation: str = "none"  # none (official: raw coordinates) | center | unit_sphere
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    uff: FusionConfig = Field(default_factory=FusionConfig)
    coreset_ratio: dict[str, Real] = Field(default_factory=lambda: dict.fromkeys(BANKS, CORESET_RATIO))
    projection_dim: int | None = 128
    blur_sigma: Real = 4.0  # at 224 px; scaled with img_size
    dlf_kernel: str = "linear"
    dlf_nu: Real = 0.5
    dlf_max_pixel_rows: int = 10000
    dlf_scale_quantile: Real = 0.9  # DLF inputs / this quantile of |x| (artifacts before: 0.5, the median)
    # pixels the pixel SVM is fitted on: foreground | all (before)
    dlf_pixel_rows: Annotated[
        str, one_of(("foreground", "all"), "{field} must be foreground or all, got {value!r}")
    ] = "foreground"
    knn_backend: str = "auto"
    seed: Annotated[int, Flag("--seed")] = 0  # the flag also seeds the ViT and Point-MAE (config_from_flags)

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

    def with_uff_steps(self, steps: int) -> M3DMConfig:
        """A copy whose UFF trains ``steps`` optimiser steps, its warm-up cut to at most a third of them."""
        warmup = min(self.uff.warmup_steps, steps // 3)
        return self.replace(uff=self.uff.replace(steps=steps, warmup_steps=warmup))


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


def config_from_flags(flags: Any) -> M3DMConfig:
    """The config that parsed ``adray build-m3dm`` flags describe (the one mapping from build flags to an
    M3DM config; the flags' defaults are the fields' own).

    ``flags``: an ``argparse.Namespace`` (any object). The one-field flags (``--category``, ``--mode``,
    ``--img-size``, ``--point-weights``, ``--seed``) are read with :func:`adray.config.flag_values`; the
    derived ones, each only when present and not None: ``no_fusion``, ``weights`` and ``rgb_backbone``
    (the ViT, seeded with ``seed`` as the Point-MAE is), ``preprocess_units``, ``no_preprocess``,
    ``coreset_ratio`` (every bank), ``uff_steps`` (:meth:`M3DMConfig.with_uff_steps`) and ``tiny``
    (:func:`tiny_config`: its backbones, point weights and image size, unless ``img_size`` differs from
    the default; ``weights`` other than the default replace its random ViT weights). Raises
    :class:`adray.errors.ConfigError` for a bad value.
    """
    fields = flag_values(M3DMConfig, flags)
    derived = {name: getattr(flags, name, None) for name in DERIVED_FLAGS}
    if derived["no_fusion"]:
        fields["fusion"] = False
    if derived["coreset_ratio"] is not None:
        fields["coreset_ratio"] = dict.fromkeys(BANKS, derived["coreset_ratio"])
    weights = derived["weights"] or _default(ViTConfig, "weights")
    if derived["tiny"]:
        cfg = _tiny_from_flags(fields, weights)
    else:
        seed = fields.get("seed", _default(M3DMConfig, "seed"))
        name = derived["rgb_backbone"] or _default(ViTConfig, "name")
        units = derived["preprocess_units"] or _default(PreprocessConfig, "units")
        cfg = M3DMConfig(
            **fields,
            vit=ViTConfig(name=name, weights=weights, seed=seed),
            point_seed=seed,
            preprocess=PreprocessConfig(units=units),
        )
    if derived["no_preprocess"]:
        cfg = cfg.replace(preprocess=cfg.preprocess.replace(enabled=False))
    if derived["uff_steps"] is not None:
        cfg = cfg.with_uff_steps(derived["uff_steps"])
    return cfg


def _tiny_from_flags(fields: dict[str, Any], weights: str) -> M3DMConfig:
    """:func:`tiny_config` with the flags' fields: its own image size unless another was asked for, its
    random point weights whatever ``--point-weights`` says, ``weights`` when not the default."""
    fields = {k: v for k, v in fields.items() if k != "point_weights"}
    if fields.get("img_size") == _default(M3DMConfig, "img_size"):
        del fields["img_size"]
    cfg = tiny_config(**fields)
    if weights != _default(ViTConfig, "weights"):
        cfg = cfg.replace(vit=cfg.vit.replace(weights=weights))
    return cfg


def _default(model: type[Config], name: str) -> Any:
    """The default of ``model``'s field ``name`` (a flag's default, read where it lives)."""
    return model.model_fields[name].get_default(call_default_factory=True)
