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
from adray.detectors.bgad.config import BgadConfig, BgadTrainConfig, configs_from_flags
from adray.detectors.bgad.losses import LossConfig
from adray.pipeline.cluster import add_address_argument, ensure_ray
from adray.pipeline.spec import WEIGHT_KEYWORDS

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    m, t, lc = BgadConfig(), BgadTrainConfig(), LossConfig()
    g = parser.add_argument_group("data and output")
    g.add_argument(
        "--train", required=True, help="dataset prefix (MVTec layout, any storage URL) or manifest URI"
    )
    g.add_argument("--category", required=True, help="category to fit (one artifact per category)")
    g.add_argument("--output", required=True, help="artifact folder URI written by rank 0")
    g.add_argument(
        "--num-anomalies",
        type=int,
        default=t.num_anomalies,
        help="labelled anomalies per category taken from the test split (balanced across defect "
        "types, seeded, recorded in the artifact, to be excluded from evaluation); 0 = unsupervised "
        "variant (step 1 only) (default %(default)s)",
    )
    g.add_argument(
        "--seen-defects", default="", help="comma-separated defect types the anomalies may come from"
    )
    g.add_argument(
        "--copy-paste-variants",
        type=int,
        default=t.copy_paste_variants,
        help="synthetic copy-paste samples per anomaly, 0 disables (default %(default)s)",
    )
    g.add_argument(
        "--anomaly-repeats",
        type=int,
        default=t.anomaly_repeats,
        help="times each real anomaly is seen per sub-epoch (default %(default)s)",
    )
    g.add_argument(
        "--calibration-fraction",
        type=float,
        default=t.calibration_fraction,
        help="train/good fraction held out to calibrate the threshold (default %(default)s)",
    )
    g.add_argument(
        "--target-fpr",
        type=float,
        default=t.target_fpr,
        help="false-positive rate of the stored threshold on held-out normals (default %(default)s)",
    )
    g.add_argument(
        "--target-pixel-fpr",
        type=float,
        default=t.target_pixel_fpr,
        help="false-positive rate of the stored pixel threshold (defect regions) over the held-out "
        "normals' map pixels (default %(default)s)",
    )
    g = parser.add_argument_group("model")
    g.add_argument(
        "--backbone",
        default=m.backbone,
        help="any timm model name, optionally name.tag; a bare name takes timm's default tag for it "
        "(default %(default)s)",
    )
    g.add_argument(
        "--pretrained-tag",
        default=m.pretrained_tag,
        help="timm weight tag for a bare --backbone name (default: none, i.e. the tag in the name or timm's "
        "default for a bare name); one that differs from a tag in the name is an error",
    )
    g.add_argument(
        "--weights", default=m.weights, help="pretrained | random (tests) | PATH to a weights file"
    )
    g.add_argument("--out-indices", default=",".join(map(str, m.out_indices)), help="backbone stages")
    g.add_argument("--image-size", type=int, default=m.image_size)
    g.add_argument("--flow-blocks", type=int, default=m.n_blocks, help="AllInOneBlocks per flow")
    g.add_argument("--top-k", type=int, default=m.top_k, help="image score = mean of top-k map pixels")
    g = parser.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=t.meta_epochs, help="meta-epochs (checkpoint after each)")
    g.add_argument("--sub-epochs", type=int, default=t.sub_epochs, help="passes over the data per meta-epoch")
    g.add_argument(
        "--ml-epochs",
        type=int,
        default=t.ml_meta_epochs,
        help="meta-epochs of step 1 (maximum likelihood on normals) before push-pull",
    )
    g.add_argument(
        "--batch-size", type=int, default=t.batch_size, help="images per global batch (all workers together)"
    )
    g.add_argument(
        "--chunk-size",
        type=int,
        default=t.chunk_size,
        help="patches per optimiser step (global: split across workers)",
    )
    g.add_argument("--lr", type=float, default=t.lr)
    g.add_argument("--beta", type=float, default=lc.beta, help="boundary quantile of normal log-likelihoods")
    g.add_argument("--tau", type=float, default=lc.tau, help="margin between normal and anomaly boundaries")
    g.add_argument("--no-focal", action="store_true", help="disable the asymmetric focal weights")
    g.add_argument("--seed", type=int, default=t.seed)
    g = parser.add_argument_group("Ray Train")
    g.add_argument("--workers", type=int, default=1, help="Ray Train workers (0 = local mode in-process)")
    g.add_argument(
        "--gpus-per-worker", type=float, default=0.0, help=">0 uses NCCL on GPUs, else gloo on CPU"
    )
    g.add_argument("--cpus-per-worker", type=float, default=1.0)
    g.add_argument(
        "--run-name",
        default=None,
        help="Ray Train run name; the same name resumes from its last checkpoint (default: derived "
        "from output + config, so rerunning the same command resumes)",
    )
    g.add_argument("--checkpoint-root", default=None, help="default: <parent of --output>/checkpoints")
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
    ensure_ray(args.address)
    summary = fit_bgad(
        storage.absolute_url(args.train),
        storage.absolute_url(args.output),
        model_cfg,
        train_cfg,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        run_name=args.run_name,
        checkpoint_root=storage.absolute_url(args.checkpoint_root) if args.checkpoint_root else None,
        fail_after_epoch=args.fail_after_epoch,
    )
    print(summary.to_text())
    print(summary.artifact_uri)
    return 0
