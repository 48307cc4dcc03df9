"""`adray build-m3dm` / `python jobs/build_m3dm.py`: build an M3DM detector for one category with Ray.

    adray build-m3dm --train s3://bucket/mvtec3d --category cookie --output s3://bucket/models/m3dm-cookie \\
        --mode rgb+xyz --weights pretrained --point-weights /models/pointmae_pretrain.pth --workers 4

``--train`` is an MVTec 3D-AD prefix or a manifest. ``--weights`` picks the RGB ViT weights
(pretrained | random | PATH); ``--point-weights`` the Point-MAE checkpoint (a path, or random).
``--tiny`` swaps in CI-sized random backbones (2-block ViT-Tiny/8, 2-block Point-MAE) and the synthetic
scenes' preprocessing distances: for tests and demos only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from adray import storage
from adray.backbones.vit_features import ViTConfig
from adray.config import add_flags, flag_values
from adray.detectors.m3dm.config import CORESET_RATIO, M3DMConfig, config_from_flags
from adray.detectors.m3dm.fusion import FusionConfig
from adray.detectors.m3dm.preprocessing import PreprocessConfig
from adray.pipeline.cluster import add_address_argument, ensure_ray
from adray.pipeline.spec import WEIGHT_KEYWORDS
from adray.train.m3dm_options import M3DMBuildOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The build flags: one-field flags are generated from :class:`M3DMConfig` and
    :class:`M3DMBuildOptions` (default, type and help stated once, on the field); the derived ones
    (:data:`adray.detectors.m3dm.config.DERIVED_FLAGS`) read their defaults from the configs."""
    g = parser.add_argument_group("data and output")
    g.add_argument("--train", required=True, help="MVTec 3D-AD prefix or manifest URI")
    add_flags(g, M3DMConfig, ("category",))
    g.add_argument("--output", required=True, help="artifact folder URI")
    g = parser.add_argument_group("model")
    add_flags(g, M3DMConfig, ("mode",))
    g.add_argument("--no-fusion", action="store_true", help="rgb+xyz without the UFF fused bank")
    vit = ViTConfig()
    g.add_argument("--weights", default=vit.weights, help="RGB ViT weights: pretrained | random | PATH")
    g.add_argument(
        "--rgb-backbone",
        default=vit.name,
        help="timm ViT name, optionally name.tag (a bare name takes timm's default tag); default %(default)s "
        "(DINO ViT-B/8)",
    )
    add_flags(g, M3DMConfig, ("point_weights", "img_size"))
    units = PreprocessConfig().units
    g.add_argument("--preprocess-units", choices=("auto", "m", "mm"), default=units, help="scan units")
    g.add_argument(
        "--no-preprocess", action="store_true", help="skip plane removal / DBSCAN (pre-cleaned data)"
    )
    ratio_help = "fraction of patches kept per bank"
    g.add_argument("--coreset-ratio", type=float, default=CORESET_RATIO, help=ratio_help)
    steps_help = f"UFF optimiser steps (default {FusionConfig().steps})"
    g.add_argument("--uff-steps", type=int, default=None, help=steps_help)
    add_flags(g, M3DMConfig, ("seed",))
    g.add_argument("--tiny", action="store_true", help="CI-sized random backbones (tests and demos only)")
    add_flags(parser.add_argument_group("decision"), M3DMBuildOptions, ("target_fpr", "target_pixel_fpr"))
    g = parser.add_argument_group("cluster")
    add_flags(g, M3DMBuildOptions, ("workers", "uff_workers", "batch_size", "gpus_per_worker"))
    add_address_argument(g)


def config_from_args(args: argparse.Namespace) -> M3DMConfig:
    """The config the flags describe (:func:`adray.detectors.m3dm.config.config_from_flags`), weight paths
    made absolute; exits with status 2 when --rgb-backbone names no timm weights."""
    from adray.backbones.timm_features import check_model_name
    from adray.backbones.weights import BackboneNameError

    # weight files are read by Ray workers, whose working directory is not the driver's
    args.weights = storage.absolute_url(args.weights, keep=WEIGHT_KEYWORDS)
    args.point_weights = storage.absolute_url(args.point_weights, keep=WEIGHT_KEYWORDS)
    if not args.tiny:
        try:
            check_model_name(args.rgb_backbone)
        except BackboneNameError as e:
            print(f"adray build-m3dm: error: {e}", file=sys.stderr)
            raise SystemExit(2) from e
    return config_from_flags(args)


def options_from_args(args: argparse.Namespace) -> M3DMBuildOptions:
    """The build's Ray resources and decision rates the flags describe; raises
    :class:`adray.errors.ConfigError` (one line, exit 2) for a bad value, e.g. a rate outside [0, 1]."""
    return M3DMBuildOptions(**flag_values(M3DMBuildOptions, args))


def run(args: argparse.Namespace) -> int:
    from adray.train.m3dm import build_m3dm

    config = config_from_args(args)
    options = options_from_args(args)
    ensure_ray(args.address)
    train, output = storage.absolute_url(args.train), storage.absolute_url(args.output)
    summary = build_m3dm(train, output, config, options=options)
    doc = dataclasses.asdict(summary)
    doc.pop("uff_losses")
    print(json.dumps(doc, indent=2, default=str))
    return 0
