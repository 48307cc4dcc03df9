"""`adray fit-bgad` / `python jobs/fit_bgad.py`: fit a BGAD detector for one category with Ray Train.

Example (2 CPU workers, tiny random backbone, the unsupervised variant with --num-anomalies 0):
    adray fit-bgad --train s3://bucket/mvtec --category bottle --output s3://bucket/models/bgad-bottle \\
        --workers 2 --backbone test_efficientnet --weights random --image-size 64 --num-anomalies 10
"""

from __future__ import annotations

import argparse
import logging
import sys

from adray import storage
from adray.config import add_flags, flag_values
from adray.detectors.bgad.config import BgadConfig, BgadTrainConfig, configs_from_flags
from adray.detectors.bgad.losses import LossConfig
from adray.pipeline.cluster import add_address_argument, ensure_ray
from adray.pipeline.spec import WEIGHT_KEYWORDS
from adray.train.bgad_options import FitBgadOptions

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The fit flags: those that set one config field are generated from the fields (default, type and
    help stated once, in :mod:`adray.detectors.bgad.config`), the Ray Train ones from
    :class:`FitBgadOptions`. The rest map through ``configs_from_flags``, defaults read from the configs:
    ``--out-indices`` / ``--seen-defects`` (text, not the field's tuple), ``--no-focal`` (the inverse of a
    field whose ``--no-...`` flag keeps its own destination), ``--image-size`` (below)."""
    m = BgadConfig()
    g = parser.add_argument_group("data and output")
    g.add_argument(
        "--train", required=True, help="dataset prefix (MVTec layout, any storage URL) or manifest URI"
    )
    g.add_argument("--category", required=True, help="category to fit (one artifact per category)")
    g.add_argument("--output", required=True, help="artifact folder URI written by rank 0")
    add_flags(g, BgadTrainConfig, ("num_anomalies",))
    g.add_argument(
        "--seen-defects", default="", help="comma-separated defect types the anomalies may come from"
    )
    add_flags(
        g,
        BgadTrainConfig,
        ("copy_paste_variants", "anomaly_repeats", "calibration_fraction", "target_fpr", "target_pixel_fpr"),
    )
    g = parser.add_argument_group("model")
    add_flags(g, BgadConfig, ("backbone", "pretrained_tag", "weights"))
    g.add_argument("--out-indices", default=",".join(map(str, m.out_indices)), help="backbone stages")
    # --image-size stays hand-written: a bad image_size in a stored config is reported by its field name
    g.add_argument("--image-size", type=int, default=m.image_size)
    add_flags(g, BgadConfig, ("n_blocks", "top_k"))
    g = parser.add_argument_group("training")
    add_flags(
        g, BgadTrainConfig, ("meta_epochs", "sub_epochs", "ml_meta_epochs", "batch_size", "chunk_size", "lr")
    )
    add_flags(g, LossConfig, ("beta", "tau"))
    g.add_argument("--no-focal", action="store_true", help="disable the asymmetric focal weights")
    add_flags(g, BgadTrainConfig, ("seed",))  # also seeds the flows and a random backbone (FLAG_FIELDS)
    g = parser.add_argument_group("Ray Train")
    add_flags(g, FitBgadOptions, FitBgadOptions.model_fields)
    add_address_argument(g)
    g.add_argument("--fail-after-epoch", type=int, default=None, help=argparse.SUPPRESS)  # resume tests only


def configs_from_args(args: argparse.Namespace) -> tuple[BgadConfig, BgadTrainConfig]:
    """The configs the flags describe; exits with status 2 when --backbone/--pretrained-tag name no weights
    or a target rate lies outside [0, 1]."""
    from adray.backbones.timm_features import check_model_name
    from adray.backbones.weights import BackboneNameError

    try:
        check_model_name(args.backbone, args.pretrained_tag or None)
    except BackboneNameError as e:
        print(f"adray fit-bgad: error: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    for flag, rate in (("--target-fpr", args.target_fpr), ("--target-pixel-fpr", args.target_pixel_fpr)):
        if not 0.0 <= rate <= 1.0:
            print(f"adray fit-bgad: error: {flag} must lie in [0, 1], got {rate}", file=sys.stderr)
            raise SystemExit(2)
    model_cfg, train_cfg = configs_from_flags(args)  # the one flags -> configs mapping (FLAG_FIELDS)
    # weight files are read by Ray workers, whose working directory is not the driver's
    model_cfg.weights = storage.absolute_url(model_cfg.weights, keep=WEIGHT_KEYWORDS)
    return model_cfg, train_cfg


def run(args: argparse.Namespace) -> int:
    from adray.train.bgad import fit_bgad

    model_cfg, train_cfg = configs_from_args(args)
    if model_cfg.weights in ("", "pretrained"):  # fail here, not in a Ray worker, when none are cached
        from adray.backbones.timm_features import check_pretrained_available

        check_pretrained_available(model_cfg.backbone, model_cfg.pretrained_tag)
    options = FitBgadOptions(**flag_values(FitBgadOptions, args))
    ensure_ray(args.address)
    train, output = storage.absolute_url(args.train), storage.absolute_url(args.output)
    summary = fit_bgad(
        train,
        output,
        model_cfg,
        train_cfg,
        options=options.absolute(),
        fail_after_epoch=args.fail_after_epoch,
    )
    print(summary.to_text())
    print(summary.artifact_uri)
    return 0
