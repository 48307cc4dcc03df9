"""`jobs/benchmark.py gpu`: GPU readiness — every CUDA path checked once, with throughput.

Runs without Ray (the detectors are plain torch), so it also works on a bare GPU box:

- WinCLIP (full ViT-B-16-plus-240, random weights): zero-shot images/s in fp32 and under bf16 autocast,
  with the largest deviation of bf16 from fp32; plain CLIP ``encode_image`` for reference;
- BGAD (full ``tf_efficientnet_b6`` at 256 px, random weights): backbone images/s (fp32 and bf16
  autocast), flow training patches/s, and one DDP step over NCCL (world size 1: init, all-reduce of
  gradients, optimizer step) with the library's flows and push-pull loss;
- M3DM (full DINO ViT-B/8 + Point-MAE, random weights): feature-extraction items/s; greedy coreset on a
  GPU bank; kNN on GPU with torch and, where faiss-gpu is installed, faiss (else reported as missing).

Each section is independent: a failure is recorded in its row (``error``) and the rest still runs.
"""

from __future__ import annotations

import argparse
import os
import time
import traceback
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import ConfigDict, Field

from adray.config import Config, Flag, add_flags, flag_values


class GpuBenchConfig(Config):
    """The flags of ``jobs/benchmark.py gpu``."""

    model_config = ConfigDict(title="gpu benchmark configuration")

    images: Annotated[int, Flag("--images")] = Field(32, description="images per throughput measurement")
    bank_rows: Annotated[int, Flag("--bank-rows")] = Field(
        1_000_000, description="rows of the kNN / coreset bank"
    )
    sections: Annotated[str, Flag("--sections")] = Field(
        "winclip,bgad,ddp,m3dm,memory", description="which checks to run"
    )
    device: Annotated[str, Flag("--device")] = Field(
        "cuda", description="cuda (default) or cpu for a dry run"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, GpuBenchConfig, GpuBenchConfig.model_fields)


#: --device cpu runs the same checks on a CPU (a dry run of this script before a GPU lease)
DEVICE: str = GpuBenchConfig.model_fields["device"].default


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    out = fn()  # warm-up (kernels, autotuning, lazy init)
    _sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        _sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _section(rows: list[dict[str, Any]], name: str, fn: Callable[[], list[dict[str, Any]]]) -> None:
    try:
        rows.extend({"check": name, **r} for r in fn())
    except Exception as e:  # a broken section must not hide the others
        rows.append({"check": name, "error": f"{type(e).__name__}: {e}"[:300]})
        traceback.print_exc()


def _winclip(n: int) -> list[dict[str, Any]]:
    from adray.detectors.base import create_detector

    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (240, 240, 3), dtype=np.uint8) for _ in range(n)]
    out = []
    ref = None
    for precision in ("fp32", "bf16"):
        det = create_detector(
            "winclip", class_name="bottle", weights="random", device=DEVICE, precision=precision
        )
        batch = {"image": np.stack([det.preprocess({"image": im})["image"] for im in imgs])}
        secs, res = _timed(lambda det=det, batch=batch: det.score(batch))
        score, amap = res.numpy()
        row = {"what": f"winclip zero-shot {precision}", "items_per_s": n / secs}
        if ref is None:
            ref = (score, amap)
        else:
            row["max_abs_dev_score"] = float(np.abs(score - ref[0]).max())
            row["max_abs_dev_map"] = float(np.abs(amap - ref[1]).max())
        out.append(row)
    model = det.backbone.model if hasattr(det, "backbone") else None
    if model is not None:
        x = torch.as_tensor(batch["image"], device=DEVICE)
        with torch.inference_mode():
            secs, _ = _timed(lambda: model.encode_image(x))
        out.append({"what": "plain CLIP encode_image fp32", "items_per_s": n / secs})
    return out


def _bgad(n: int) -> list[dict[str, Any]]:
    from adray.detectors.bgad.config import BgadConfig
    from adray.detectors.bgad.flows import log_likelihood
    from adray.detectors.bgad.model import BgadModel
    from adray.detectors.bgad.positional import condition_rows

    cfg = BgadConfig(category="bench", weights="random")
    model = BgadModel(cfg).to(DEVICE)
    x = torch.randn(n, 3, 256, 256, device=DEVICE)
    out = []
    with torch.inference_mode():
        secs, feats = _timed(lambda: model.features(x))
        out.append({"what": "bgad backbone b6@256 fp32", "items_per_s": n / secs})
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            secs, _ = _timed(lambda: model.features(x))
        out.append({"what": "bgad backbone b6@256 bf16", "items_per_s": n / secs})
    # flow training throughput, level 0 (the largest map), chunks of 4096 patches as in training
    feat = feats[0]
    _, c, h, w = feat.shape
    rows = feat.permute(0, 2, 3, 1).reshape(-1, c).clone()
    flow = model.flows[0].train()
    opt = torch.optim.Adam(flow.parameters(), lr=2e-4)
    cond_rows = condition_rows(cfg.pos_dim, h, w, feat.shape[0], torch.device(DEVICE))

    def steps() -> int:
        done = 0
        for chunk in torch.randperm(rows.shape[0], device=DEVICE).split(4096)[:20]:
            ll = log_likelihood(flow, rows[chunk], cond_rows[chunk])
            loss = -ll.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += chunk.numel()
        return done

    secs, patches = _timed(steps, repeats=2)
    out.append(
        {"what": f"bgad flow train level0 (C={c})", "items_per_s": patches / secs, "unit": "patches/s"}
    )
    return out


def _ddp() -> list[dict[str, Any]]:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from adray.detectors.bgad.flows import build_conditional_flow, log_likelihood
    from adray.detectors.bgad.losses import LossConfig, push_pull_chunk_loss

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl" if DEVICE == "cuda" else "gloo", rank=0, world_size=1)
    try:
        flow = DDP(
            build_conditional_flow(64, cond_dim=128, n_blocks=8, clamp=1.9, hidden_ratio=2.0).to(DEVICE)
        )
        opt = torch.optim.Adam(flow.parameters(), lr=2e-4)
        x = torch.randn(4096, 64, device=DEVICE)
        cond = torch.randn(4096, 128, device=DEVICE)
        labels = torch.zeros(4096, dtype=torch.bool, device=DEVICE)
        labels[:64] = True
        before = [p.detach().clone() for p in flow.parameters()]
        ll = log_likelihood(flow, x, cond)
        loss = push_pull_chunk_loss(ll, labels, LossConfig()).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        changed = sum(int(not torch.equal(a, b)) for a, b in zip(before, flow.parameters()))
        t = torch.ones(1, device=DEVICE)
        dist.all_reduce(t)
        return [
            {
                "what": "DDP over NCCL (world 1): flow + push-pull step",
                "loss_finite": bool(torch.isfinite(loss).item()),
                "params_updated": changed,
                "all_reduce": float(t.item()),
                "backend": dist.get_backend(),
            },
            _split_chunk_collectives(ll.detach()),
        ]
    finally:
        dist.destroy_process_group()


def _split_chunk_collectives(ll: torch.Tensor) -> dict[str, Any]:
    """The collectives of BGAD's split-chunk fit (``adray.detectors.bgad.parallel``) on this device's backend:
    uneven all-gather of a chunk's log-likelihoods, max/sum all-reduce, and the object gather of item ids."""
    from adray.detectors.bgad.parallel import chunk_shard, global_chunk_ll
    from adray.train import common
    from adray.train.bgad import _all_gather_list

    start, end = chunk_shard(ll.shape[0], 0, 1)
    gathered = common.all_gather_uneven(ll[start:end])
    whole = global_chunk_ll(ll[start:end], start, end, ll.shape[0], _rank_group(common))
    peak = common.all_reduce_max(ll.max().reshape(1))
    total = common.all_reduce_sum(ll.sum().reshape(1))
    ids = _all_gather_list(["a", "b"])
    ok = (
        torch.equal(gathered, ll)
        and torch.equal(whole, ll)
        and float(peak) == float(ll.max())
        and abs(float(total) - float(ll.sum())) <= 1e-3 * abs(float(ll.sum())) + 1e-3
        and ids == ["a", "b"]
    )
    return {"what": "BGAD split-chunk collectives (gather, max, sum, object gather)", "collectives_ok": ok}


def _rank_group(common: Any) -> Any:
    from adray.detectors.bgad.parallel import RankGroup

    return RankGroup(0, 1, gather=common.all_gather_uneven, reduce_max=common.all_reduce_max)


def _m3dm(n: int) -> list[dict[str, Any]]:
    from adray.backbones.vit_features import ViTConfig
    from adray.detectors.m3dm.config import M3DMConfig
    from adray.detectors.m3dm.features import FeatureExtractor
    from adray.synthetic import make_xyz_sample

    cfg = M3DMConfig(
        category="bench", mode="rgb+xyz", vit=ViTConfig(weights="random"), point_weights="random"
    )
    fx = FeatureExtractor(cfg).to(DEVICE)
    rng = np.random.default_rng(0)
    rgb, xyz, _ = make_xyz_sample("cookie", None, 224, rng)
    # Plane removal (open3d, a CPU stage of the pipeline) is left out: only the GPU feature path is timed.
    mean, std = fx.mean_std
    image = (rgb.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    k = max(1, n // 4)
    batch = {
        "image": np.repeat(image.transpose(2, 0, 1)[None], k, 0),
        "xyz": np.repeat(xyz.transpose(2, 0, 1)[None], k, 0),
    }
    secs, _ = _timed(lambda: fx(batch), repeats=2)
    return [{"what": "m3dm features DINO-B/8 + Point-MAE fp32", "items_per_s": k / secs}]


def _memory(rows: int) -> list[dict[str, Any]]:
    from adray.memory.coreset import greedy_coreset_indices
    from adray.memory.knn import KnnIndex, faiss_available

    g = torch.Generator().manual_seed(0)
    bank = torch.randn(rows, 1152, generator=g)
    out = []
    t0 = time.perf_counter()
    idx = greedy_coreset_indices(bank, rows // 100, projection_dim=128, device=DEVICE)
    _sync()
    out.append({"what": f"coreset {rows}x1152 -> {len(idx)} on GPU", "seconds": time.perf_counter() - t0})
    queries = torch.randn(3136, 1152, generator=g)
    sub = bank[: rows // 10]
    for backend, dev in (("torch", DEVICE), ("faiss", DEVICE)):
        if backend == "faiss" and not faiss_available():
            out.append({"what": "knn faiss", "error": "faiss not installed here"})
            continue
        try:
            index = KnnIndex(sub, backend=backend, device=dev)
            secs, _ = _timed(lambda index=index: index.search(queries, k=1))
            gpus = None
            if backend == "faiss":
                import faiss

                gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
            out.append(
                {"what": f"knn {backend} {len(sub)} rows, 3136 queries", "seconds": secs, "faiss_gpus": gpus}
            )
        except Exception as e:
            out.append({"what": f"knn {backend}", "error": f"{type(e).__name__}: {e}"[:200]})
    return out


def run(flags: argparse.Namespace) -> dict[str, Any]:
    global DEVICE
    cfg = GpuBenchConfig(**flag_values(GpuBenchConfig, flags))
    DEVICE = cfg.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        return {"name": "gpu", "rows": [], "notes": ["no CUDA device here: nothing to check"]}
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 stays the reference
    sections = {s.strip() for s in cfg.sections.split(",")}
    rows: list[dict[str, Any]] = []
    table = {
        "winclip": lambda: _winclip(cfg.images),
        "bgad": lambda: _bgad(cfg.images),
        "ddp": _ddp,
        "m3dm": lambda: _m3dm(cfg.images),
        "memory": lambda: _memory(cfg.bank_rows),
    }
    for name, fn in table.items():
        if name in sections:
            t0 = time.perf_counter()
            _section(rows, name, fn)
            print(f"[gpu] {name} done in {time.perf_counter() - t0:.1f}s", flush=True)
    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
    notes = [f"device: {name}, torch {torch.__version__}, random weights everywhere"]
    result = {"name": "gpu", "rows": rows, "notes": notes}
    from adray.bench.tables import format_rows

    print(format_rows(result))
    return result
