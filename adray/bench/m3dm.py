"""M3DM benchmark: feature extraction items/s, coreset time + peak memory for a large bank, kNN query time.

    adray benchmark m3dm [--full] [--bank-rows 1000000] [--bank-dim 1152] [--coreset 1000]

- Feature extraction: random-weight backbones on synthetic scans (``--full``: DINO ViT-B/8 at 224 and the
  1024 x 128 Point-MAE, the paper's sizes; default: the tiny CI backbones at 64 px), preprocessing
  (plane RANSAC + DBSCAN) timed separately from the forward passes.
- Coreset: greedy k-center on a random ``bank_rows x bank_dim`` float32 bank (default 10^6 x 1152 =
  4.6 GB, the size that OOMs the official code). Peak memory is the growth of the process's max RSS
  (``resource.getrusage``) during selection, i.e. what the selection adds on top of the bank.
- kNN: one item's patches (3136 queries) against a bank of ``--knn-bank`` rows, faiss vs exact torch.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import ConfigDict, Field

from adray.config import Config, Flag, add_flags, flag_values


class M3dmBenchConfig(Config):
    """The flags of ``jobs/benchmark.py m3dm``."""

    model_config = ConfigDict(title="m3dm benchmark configuration")

    full: Annotated[bool, Flag("--full")] = Field(
        False, description="full-size random backbones (slow on CPU)"
    )
    items: Annotated[int, Flag("--items")] = Field(8, description="items for the feature-extraction figure")
    bank_rows: Annotated[int, Flag("--bank-rows")] = 1_000_000
    bank_dim: Annotated[int, Flag("--bank-dim")] = 1152
    coreset: Annotated[int, Flag("--coreset")] = Field(
        1000, description="rows selected (iterations of the greedy loop)"
    )
    projection_dim: Annotated[int, Flag("--projection-dim")] = 128
    knn_bank: Annotated[int, Flag("--knn-bank")] = Field(100_000, description="bank rows for the kNN timing")
    queries: Annotated[int, Flag("--queries")] = 3136
    device: Annotated[str | None, Flag("--device")] = Field(
        None, description="cpu | cuda (default: cuda when available)"
    )
    skip: Annotated[str, Flag("--skip")] = Field(
        "", description="comma list of parts to skip: features,coreset,knn"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, M3dmBenchConfig, M3dmBenchConfig.model_fields)


def run(flags: argparse.Namespace) -> dict[str, Any]:
    cfg = M3dmBenchConfig(**flag_values(M3dmBenchConfig, flags))
    skip = set(filter(None, cfg.skip.split(",")))
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows: list[dict[str, Any]] = []
    notes = [f"device={device}, torch threads={torch.get_num_threads()}"]
    if "features" not in skip:
        rows.append(bench_features(cfg.full, cfg.items, device))
    if "coreset" not in skip:
        rows.append(bench_coreset(cfg.bank_rows, cfg.bank_dim, cfg.coreset, cfg.projection_dim, device))
    if "knn" not in skip:
        rows.extend(bench_knn(cfg.knn_bank, cfg.bank_dim, cfg.queries, device))
    notes.append(
        "peak memory = growth of ru_maxrss during coreset selection (what it adds on top of the bank)"
    )
    result = {"name": "m3dm", "rows": rows, "notes": notes}
    _print(result)
    return result


def bench_features(full: bool, n_items: int, device: str) -> dict[str, Any]:
    from adray.detectors.m3dm.config import M3DMConfig, tiny_config
    from adray.detectors.m3dm.features import FeatureExtractor, prepare_sample
    from adray.synthetic import make_xyz_sample

    if full:
        from adray.backbones.vit_features import ViTConfig

        base = tiny_config("cookie", img_size=224)
        cfg = M3DMConfig(
            category="cookie",
            vit=ViTConfig(weights="random"),
            point_weights="random",
            preprocess=base.preprocess,
            point_normalisation="center",
        )
        size = 224
    else:
        cfg, size = tiny_config("cookie"), 64
    ext = FeatureExtractor(cfg).to(device)
    mean, std = ext.mean_std
    samples = [make_xyz_sample("cookie", "good", size, np.random.default_rng(i)) for i in range(n_items)]
    t0 = time.perf_counter()
    prepared = [prepare_sample({"image": r, "xyz": x}, cfg, mean, std) for r, x, _ in samples]
    t_pre = time.perf_counter() - t0
    batch = {k: np.stack([p[k] for p in prepared]) for k in prepared[0]}
    ext({k: v[:1] for k, v in batch.items()})  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    ext(batch)
    _sync(device)
    t_feat = time.perf_counter() - t0
    return {
        "part": "features",
        "backbones": "full random (ViT-B/8 224, Point-MAE 1024x128)" if full else "tiny random (64 px)",
        "items": n_items,
        "preprocess_items_per_s": n_items / t_pre,
        "features_items_per_s": n_items / t_feat,
    }


def bench_coreset(n_rows: int, dim: int, n_select: int, projection_dim: int, device: str) -> dict[str, Any]:
    from adray.memory.coreset import greedy_coreset_indices

    bank = np.empty((n_rows, dim), dtype=np.float32)
    rng = np.random.default_rng(0)
    for start in range(0, n_rows, 65536):  # fill in chunks: no float64 temporary of the whole bank
        bank[start : start + 65536] = rng.standard_normal((min(65536, n_rows - start), dim), dtype=np.float32)
    before = _maxrss_mb()
    t0 = time.perf_counter()
    idx = greedy_coreset_indices(bank, n_select, projection_dim=projection_dim, device=device)
    _sync(device)
    seconds = time.perf_counter() - t0
    return {
        "part": "coreset",
        "bank": f"{n_rows}x{dim} float32 ({bank.nbytes / 2**30:.2f} GiB)",
        "selected": int(len(idx)),
        "projection_dim": projection_dim,
        "seconds": seconds,
        "ms_per_iteration": 1000 * seconds / max(1, len(idx)),
        "peak_extra_mb": _maxrss_mb() - before,
    }


def bench_knn(n_bank: int, dim: int, n_queries: int, device: str) -> list[dict[str, Any]]:
    from adray.memory.knn import KnnIndex, faiss_available

    rng = np.random.default_rng(1)
    bank = rng.standard_normal((n_bank, dim), dtype=np.float32)
    queries = rng.standard_normal((n_queries, dim), dtype=np.float32)
    out = []
    for backend in (["faiss"] if faiss_available() else []) + ["torch"]:
        index = KnnIndex(bank, backend, device=device)  # type: ignore[arg-type]
        index.search(queries[:16], 1)
        t0 = time.perf_counter()
        index.search(queries, 1)
        seconds = time.perf_counter() - t0
        label = backend + ("-gpu" if backend == "faiss" and _faiss_gpu(index) else "")
        out.append(
            {
                "part": "knn",
                "backend": label,
                "bank_rows": n_bank,
                "queries": n_queries,
                "seconds": seconds,
                "queries_per_s": n_queries / seconds,
            }
        )
    return out


def _faiss_gpu(index: Any) -> bool:
    return "Gpu" in type(index._index).__name__


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _print(result: dict[str, Any]) -> None:
    for row in result["rows"]:
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    for note in result["notes"]:
        print(f"# {note}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    add_arguments(p)
    run(p.parse_args(sys.argv[1:]))
