"""`jobs/benchmark.py bgad-fit`: BGAD training throughput (patches/s) per worker count, and scoring throughput.

Training: a Ray Train fit per worker count on generated MVTec-layout data (or ``--data``); the figure is the
flow-training rate of the last meta-epoch summed over workers (feature caching excluded: it is reported
separately). Scoring: the fitted detector's ``score`` on preprocessed batches (images/s, in-process).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import numpy as np

from adray import storage
from adray.pipeline.cluster import add_address_argument, ensure_ray


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", default=None, help="MVTec-layout root (default: generate one in a temp dir)"
    )
    parser.add_argument("--category", default="bottle")
    add_address_argument(parser)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--backbone", default="test_efficientnet")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--flow-blocks", type=int, default=8)
    parser.add_argument("--n-train", type=int, default=32, help="generated train/good images")
    parser.add_argument("--epochs", type=int, default=2, help="meta-epochs per fit")
    parser.add_argument("--sub-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=4096)
    parser.add_argument("--num-anomalies", type=int, default=4)
    parser.add_argument("--score-batch", type=int, default=16)
    parser.add_argument("--score-repeats", type=int, default=4)
    parser.add_argument("--score-device", default=None, help="scoring device (default: CUDA when available)")
    parser.add_argument(
        "--plain",
        action="store_true",
        help="single process without Ray (plain-torch fit on CUDA when available)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from adray.detectors.bgad.config import configs_from_flags

    tmp = tempfile.mkdtemp(prefix="adray-bench-bgad-")
    data = _bench_data(args, tmp)
    model_cfg, train_cfg = configs_from_flags(args, copy_paste_variants=1)
    rows: list[dict[str, Any]] = []
    artifact = None
    if args.plain:
        row, artifact = _fit_plain(data, model_cfg, train_cfg, tmp, args)
        rows.append(row)
    workers = [] if args.plain else [int(v) for v in args.workers.split(",") if v.strip()]
    if workers:
        ensure_ray(args.address, log_to_driver=False, configure_logging=False)
    for w in workers:
        row, artifact = _fit_workers(data, model_cfg, train_cfg, tmp, w, args)
        rows.append(row)
    if artifact is not None:
        rows.append(_score_rate(artifact, args))
    result = {
        "name": "bgad-fit",
        "rows": rows,
        "notes": [
            f"{args.backbone} ({args.weights}) at {args.image_size} px, {args.flow_blocks} flow blocks, "
            f"chunk {args.chunk_size} patches, batch {args.batch_size} images/worker; train rate = last "
            "meta-epoch, summed over workers",
        ],
    }
    from adray.bench.tables import format_rows

    print(format_rows(result))
    return result


def _bench_data(args: argparse.Namespace, tmp: str) -> str:
    """``--data`` made absolute (Ray workers have another cwd), or a small synthetic MVTec AD set in ``tmp``."""
    if args.data is not None:
        return storage.absolute_url(args.data) if args.data else args.data
    from adray.synthetic import generate_mvtec_ad

    data = os.path.join(tmp, "data")
    generate_mvtec_ad(
        data,
        categories=(args.category,),
        image_size=args.image_size,
        n_train=args.n_train,
        n_test_good=4,
        n_test_per_defect=2,
        seed=0,
    )
    return data


def _fit_plain(
    data: str, model_cfg: Any, train_cfg: Any, tmp: str, args: argparse.Namespace
) -> tuple[dict[str, Any], str]:
    """``--plain``: one in-process fit, no Ray; its row and the artifact it saved."""
    from adray.catalog import open_manifest, readable_items
    from adray.detectors.bgad.session import fit_bgad_local

    t0 = time.perf_counter()
    manifest = readable_items(open_manifest(data, "auto", categories=[args.category])[0])
    det = fit_bgad_local(manifest.to_pylist(), model_cfg, train_cfg)
    m = det.metadata.get("last_metrics") or {}
    row = {
        "stage": "train (plain)",
        "workers": 1,
        "patches_per_s": float(m.get("patches_per_s", 0.0)),
        "epoch_s": float(m.get("seconds", 0.0)),
        "fit_s": time.perf_counter() - t0,
        "device": str(det.device),
    }
    artifact = os.path.join(tmp, "artifact-plain")
    det.save(artifact)
    return row, artifact


def _fit_workers(
    data: str, model_cfg: Any, train_cfg: Any, tmp: str, w: int, args: argparse.Namespace
) -> tuple[dict[str, Any], str]:
    """One Ray Train fit on ``w`` workers; its row and the artifact it wrote."""
    from adray.train.bgad import fit_bgad

    out = os.path.join(tmp, f"artifact-w{w}")
    s = fit_bgad(
        data,
        out,
        model_cfg,
        train_cfg,
        workers=w,
        gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        run_name=f"bench-w{w}-{int(time.time())}",
    )
    m = s.last_metrics
    row = {
        "stage": "train",
        "workers": w,
        "patches_per_s": float(m["patches_per_s_total"]),
        "epoch_s": float(m["seconds"]),
        "feature_cache_s": float(m["feature_seconds"]),
        "fit_s": s.seconds,
    }
    return row, out


def _score_rate(artifact: str, args: argparse.Namespace) -> dict[str, Any]:
    """Images per second scoring random images with the fitted artifact (one untimed warm-up batch)."""
    from adray.detectors.base import load_detector

    det = load_detector(artifact, device=args.score_device)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (args.score_batch, args.image_size, args.image_size, 3), dtype=np.uint8)
    x = np.stack([det.preprocess({"image": im})["image"] for im in imgs])
    det.score({"image": x})  # warm-up
    t0 = time.perf_counter()
    for _ in range(args.score_repeats):
        det.score({"image": x})
    if det.device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    n = args.score_batch * args.score_repeats
    return {"stage": "score", "workers": 1, "images_per_s": n / dt, "device": str(det.device)}
