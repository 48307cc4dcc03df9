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
from adray.detectors.m3dm.config import MODES, M3DMConfig, tiny_config
from adray.detectors.m3dm.preprocessing import PreprocessConfig
from adray.pipeline.cluster import add_address_argument, ensure_ray
from adray.pipeline.spec import WEIGHT_KEYWORDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data and output")
    g.add_argument("--train", required=True, help="MVTec 3D-AD prefix or manifest URI")
    g.add_argument("--category", required=True, help="category to build (one artifact per category)")
    g.add_argument("--output", required=True, help="artifact folder URI")
    g = parser.add_argument_group("model")
    g.add_argument("--mode", choices=MODES, default="rgb+xyz", help="banks: rgb, xyz or both (with DLF)")
    g.add_argument("--no-fusion", action="store_true", help="rgb+xyz without the UFF fused bank")
    g.add_argument("--weights", default="pretrained", help="RGB ViT weights: pretrained | random | PATH")
    g.add_argument(
        "--rgb-backbone",
        default=ViTConfig().name,
        help="timm ViT name, optionally name.tag (a bare name takes timm's default tag); default %(default)s "
        "(DINO ViT-B/8)",
    )
    g.add_argument("--point-weights", default="pretrained", help="Point-MAE checkpoint PATH, or random")
    g.add_argument("--img-size", type=int, default=224)
    g.add_argument("--preprocess-units", choices=("auto", "m", "mm"), default="auto", help="scan units")
    g.add_argument(
        "--no-preprocess", action="store_true", help="skip plane removal / DBSCAN (pre-cleaned data)"
    )
    g.add_argument("--coreset-ratio", type=float, default=0.1, help="fraction of patches kept per bank")
    g.add_argument("--uff-steps", type=int, default=None, help="UFF optimiser steps (default 750)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--tiny", action="store_true", help="CI-sized random backbones (tests and demos only)")
    g = parser.add_argument_group("decision")
    g.add_argument(
        "--target-fpr",
        type=float,
        default=None,
        help="image threshold at this false-positive rate on the held-out normals (default: their largest "
        "score, the threshold M3DM artifacts always had)",
    )
    g.add_argument(
        "--target-pixel-fpr",
        type=float,
        default=0.01,
        help="pixel threshold (defect regions) at this false-positive rate over the held-out normals' map "
        "pixels (default %(default)s)",
    )
    g = parser.add_argument_group("cluster")
    g.add_argument("--workers", type=int, default=2, help="feature actors and UFF DDP workers")
    g.add_argument("--uff-workers", type=int, default=None, help="UFF workers (0 = Ray Train local mode)")
    g.add_argument("--batch-size", type=int, default=8, help="items per feature-extraction batch")
    g.add_argument("--gpus-per-worker", type=float, default=0.0)
    add_address_argument(g)


def config_from_args(args: argparse.Namespace) -> M3DMConfig:
    # weight files are read by Ray workers, whose working directory is not the driver's
    args.weights = storage.absolute_url(args.weights, keep=WEIGHT_KEYWORDS)
    args.point_weights = storage.absolute_url(args.point_weights, keep=WEIGHT_KEYWORDS)
    """The config the flags describe; exits with status 2 when --rgb-backbone names no timm weights."""
    from adray.backbones.timm_features import check_model_name
    from adray.backbones.weights import BackboneNameError

    if not args.tiny:
        try:
            check_model_name(args.rgb_backbone)
        except BackboneNameError as e:
            print(f"adray build-m3dm: error: {e}", file=sys.stderr)
            raise SystemExit(2) from e
    ratios = {"rgb": args.coreset_ratio, "xyz": args.coreset_ratio, "fused": args.coreset_ratio}
    common = dict(mode=args.mode, fusion=not args.no_fusion, coreset_ratio=ratios, seed=args.seed)
    if args.tiny:
        cfg = tiny_config(args.category, img_size=64 if args.img_size == 224 else args.img_size, **common)
    else:
        cfg = M3DMConfig(
            category=args.category,
            img_size=args.img_size,
            vit=ViTConfig(name=args.rgb_backbone, weights=args.weights, seed=args.seed),
            point_weights=args.point_weights,
            point_seed=args.seed,
            preprocess=PreprocessConfig(units=args.preprocess_units),
            **common,
        )
    if args.weights != "pretrained" and args.tiny:
        cfg = cfg.replace(vit=cfg.vit.replace(weights=args.weights))
    if args.no_preprocess:
        cfg = cfg.replace(preprocess=cfg.preprocess.replace(enabled=False))
    if args.uff_steps is not None:
        steps = args.uff_steps
        cfg = cfg.replace(
            uff=cfg.uff.replace(steps=steps, warmup_steps=min(cfg.uff.warmup_steps, steps // 3))
        )
    return cfg


def run(args: argparse.Namespace) -> int:
    from adray.train.m3dm import build_m3dm

    config = config_from_args(args)
    for flag, rate in (("--target-fpr", args.target_fpr), ("--target-pixel-fpr", args.target_pixel_fpr)):
        if rate is not None and not 0.0 <= rate <= 1.0:
            print(f"adray build-m3dm: error: {flag} must lie in [0, 1], got {rate}", file=sys.stderr)
            return 2
    ensure_ray(args.address)
    summary = build_m3dm(
        storage.absolute_url(args.train),
        storage.absolute_url(args.output),
        config,
        workers=args.workers,
        uff_workers=args.uff_workers,
        batch_size=args.batch_size,
        gpus_per_worker=args.gpus_per_worker,
        target_fpr=args.target_fpr,
        target_pixel_fpr=args.target_pixel_fpr,
    )
    doc = dataclasses.asdict(summary)
    doc.pop("uff_losses")
    print(json.dumps(doc, indent=2, default=str))
    return 0
