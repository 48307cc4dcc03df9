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
from typing import Annotated, Any

import numpy as np
from pydantic import ConfigDict, Field

from adray import storage
from adray.bench.bgad_config import BgadBenchConfig
from adray.config import Flag, add_flags, flag_values
from adray.pipeline.cluster import add_address_argument, ensure_ray


class BgadFitBenchConfig(BgadBenchConfig):
    """The flags of ``jobs/benchmark.py bgad-fit`` (``--address``: :func:`add_address_argument`)."""

    model_config = ConfigDict(title="bgad-fit benchmark configuration")

    data: Annotated[str | None, Flag("--data")] = Field(
        None, description="MVTec-layout root (default: generate one in a temp dir)"
    )
    workers: Annotated[str, Flag("--workers")] = Field("1,2", description="comma-separated worker counts")
    gpus_per_worker: Annotated[float, Flag("--gpus-per-worker")] = 0.0
    cpus_per_worker: Annotated[float, Flag("--cpus-per-worker")] = 1.0
    flow_blocks: Annotated[int, Flag("--flow-blocks")] = 8
    n_train: Annotated[int, Flag("--n-train")] = Field(32, description="generated train/good images")
    epochs: Annotated[int, Flag("--epochs")] = Field(2, description="meta-epochs per fit")
    sub_epochs: Annotated[int, Flag("--sub-epochs")] = 2
    batch_size: Annotated[int, Flag("--batch-size")] = 8
    chunk_size: Annotated[int, Flag("--chunk-size")] = 4096
    num_anomalies: Annotated[int, Flag("--num-anomalies")] = 4
    score_batch: Annotated[int, Flag("--score-batch")] = 16
    score_repeats: Annotated[int, Flag("--score-repeats")] = 4
    score_device: Annotated[str | None, Flag("--score-device")] = Field(
        None, description="scoring device (default: CUDA when available)"
    )
    plain: Annotated[bool, Flag("--plain")] = Field(
        False, description="single process without Ray (plain-torch fit on CUDA when available)"
    )
    address: str | None = None  # Ray cluster; flag: cluster.add_address_argument


#: the flags after --address, in the help output's order
_FLAGS = ("workers", "gpus_per_worker", "cpus_per_worker", "backbone", "weights", "image_size", "flow_blocks")
_FLAGS += ("n_train", "epochs", "sub_epochs", "batch_size", "chunk_size", "num_anomalies", "score_batch")
_FLAGS += ("score_repeats", "score_device", "plain")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, BgadFitBenchConfig, ("data", "category"))
    add_address_argument(parser)
    add_flags(parser, BgadFitBenchConfig, _FLAGS)


def run(flags: argparse.Namespace) -> dict[str, Any]:
    from adray.detectors.bgad.config import configs_from_flags

    cfg = BgadFitBenchConfig(**flag_values(BgadFitBenchConfig, flags), address=flags.address)
    tmp = tempfile.mkdtemp(prefix="adray-bench-bgad-")
    data = _bench_data(cfg, tmp)
    model_cfg, train_cfg = configs_from_flags(cfg, copy_paste_variants=1)
    rows: list[dict[str, Any]] = []
    artifact = None
    if cfg.plain:
        row, artifact = _fit_plain(data, model_cfg, train_cfg, tmp, cfg)
        rows.append(row)
    workers = [] if cfg.plain else [int(v) for v in cfg.workers.split(",") if v.strip()]
    if workers:
        ensure_ray(cfg.address, log_to_driver=False, configure_logging=False)
    for w in workers:
        row, artifact = _fit_workers(data, model_cfg, train_cfg, tmp, w, cfg)
        rows.append(row)
    if artifact is not None:
        rows.append(_score_rate(artifact, cfg))
    result = {
        "name": "bgad-fit",
        "rows": rows,
        "notes": [
            f"{cfg.backbone} ({cfg.weights}) at {cfg.image_size} px, {cfg.flow_blocks} flow blocks, "
            f"chunk {cfg.chunk_size} patches, batch {cfg.batch_size} images/worker; train rate = last "
            "meta-epoch, summed over workers",
        ],
    }
    from adray.bench.tables import format_rows

    print(format_rows(result))
    return result


def _bench_data(cfg: BgadFitBenchConfig, tmp: str) -> str:
    """``--data`` made absolute (Ray workers have another cwd), or a small synthetic MVTec AD set in ``tmp``."""
    if cfg.data is not None:
        return storage.absolute_url(cfg.data) if cfg.data else cfg.data
    from adray.synthetic import generate_mvtec_ad

    data = os.path.join(tmp, "data")
    generate_mvtec_ad(
        data,
        categories=(cfg.category,),
        image_size=cfg.image_size,
        n_train=cfg.n_train,
        n_test_good=4,
        n_test_per_defect=2,
    )
    return data


def _fit_plain(
    data: str, model_cfg: Any, train_cfg: Any, tmp: str, cfg: BgadFitBenchConfig
) -> tuple[dict[str, Any], str]:
    """``--plain``: one in-process fit, no Ray; its row and the artifact it saved."""
    from adray.catalog import open_manifest, readable_items
    from adray.detectors.bgad.session import fit_bgad_local

    t0 = time.perf_counter()
    manifest = readable_items(open_manifest(data, "auto", categories=[cfg.category])[0])
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
    data: str, model_cfg: Any, train_cfg: Any, tmp: str, w: int, cfg: BgadFitBenchConfig
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
        gpus_per_worker=cfg.gpus_per_worker,
        cpus_per_worker=cfg.cpus_per_worker,
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


def _score_rate(artifact: str, cfg: BgadFitBenchConfig) -> dict[str, Any]:
    """Images per second scoring random images with the fitted artifact (one untimed warm-up batch)."""
    from adray.detectors.base import load_detector

    det = load_detector(artifact, device=cfg.score_device)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (cfg.score_batch, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    x = np.stack([det.preprocess({"image": im})["image"] for im in imgs])
    det.score({"image": x})  # warm-up
    t0 = time.perf_counter()
    for _ in range(cfg.score_repeats):
        det.score({"image": x})
    if det.device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    n = cfg.score_batch * cfg.score_repeats
    return {"stage": "score", "workers": 1, "images_per_s": n / dt, "device": str(det.device)}
