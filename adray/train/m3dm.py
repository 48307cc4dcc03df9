"""Build an M3DM detector on Ray: distributed feature extraction, UFF training with Ray Train DDP,
coreset banks and decision-layer fusion on the driver, artifact to storage.

1. Items: the category's normal ``train`` items feed the banks; normal ``validation`` items (MVTec 3D-AD)
   are held out for DLF and the threshold. Without a validation split, a stable hash of ``item_id``
   holds out ~20% of train (never the same items as the banks).
2. Features: Ray Data ``map_batches`` with a callable class (one backbone per actor) over *every* item
   (no ``streaming_split``, so no tail drop; the count is checked). An unreadable item is skipped with
   its error recorded in the artifact metadata.
3. UFF (rgb+xyz with fusion): ``TorchTrainer`` DDP (gloo on CPU, NCCL on GPU); every worker reads the
   unsplit feature dataset and keeps the items it owns (``shard_of(item_id)``), so shards are disjoint
   and complete; ``workers=0`` runs Ray Train's local mode in-process.
4. Banks, coreset, DLF and threshold: :func:`adray.detectors.m3dm.fit.build_detector` on the driver.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adray.detectors.m3dm.config import M3DMConfig
from adray.train.m3dm_options import M3DMBuildOptions

log = logging.getLogger(__name__)

HELDOUT_SHARDS = 5
LOSSES_KEY = "_losses"  # without a validation split, items with shard_of(id, 5) == 0 are held out


@dataclass
class BuildSummary:
    artifact_uri: str
    version: str
    mode: str
    n_bank_items: int
    n_heldout_items: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    uff_losses: list[float] = field(default_factory=list)


def select_items(train_uri: str, category: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(bank items, held-out items): normal items of ``category`` with both an image and a point cloud."""
    from adray.catalog import open_manifest, readable_items
    from adray.train.common import shard_of

    table, _ = open_manifest(train_uri, "auto", categories=[category])
    table = readable_items(table)  # not the files the catalog keeps only for their row
    rows = [r for r in table.to_pylist() if r.get("category") == category and r.get("label") in (0, None)]
    rows = [r for r in rows if r.get("pc_uri")]
    train = [r for r in rows if r.get("split") == "train"]
    held = [r for r in rows if r.get("split") in ("validation", "val")]
    if not held:
        held = [r for r in train if shard_of(r["item_id"], HELDOUT_SHARDS) == 0]
        train = [r for r in train if shard_of(r["item_id"], HELDOUT_SHARDS) != 0]
    if not train or not held:
        raise ValueError(
            f"{train_uri}: category {category!r} needs normal train items with point clouds for the banks and "
            f"held-out normal items for decision fusion; found {len(train)} and {len(held)}"
        )
    return train, held


class FeatureActor:
    """Ray Data callable class: read + preprocess + extract features for a batch of manifest rows."""

    def __init__(self, config: dict[str, Any], device: str = "cpu", threads: int = 1) -> None:
        import torch

        from adray.detectors.m3dm.features import FeatureExtractor
        from adray.runtime import retain_freed_memory

        retain_freed_memory()  # a long-lived actor: reuse activation memory across batches
        torch.set_num_threads(max(1, threads))
        self.config = M3DMConfig.from_dict(config)
        self.device = device
        self.extractor = FeatureExtractor(self.config).to(device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from adray.detectors.m3dm.features import prepare_sample

        mean, std = self.extractor.mean_std
        prepared, ok, errors = [], [], []
        for uri, pc_uri in zip(batch["uri"], batch["pc_uri"]):
            try:
                prepared.append(
                    prepare_sample(read_sample(str(uri), str(pc_uri), self.config), self.config, mean, std)
                )
                ok.append(True)
                errors.append("")
            except Exception as e:  # one bad item must not sink the build; it is reported
                prepared.append(None)
                ok.append(False)
                errors.append(f"{type(e).__name__}: {e}")
        good = [p for p in prepared if p is not None]
        out: dict[str, np.ndarray] = {
            "order": np.asarray(batch["order"]),
            "ok": np.asarray(ok),
            "error": np.asarray(errors),
        }
        if good:
            stacked = {k: np.stack([p[k] for p in good]) for k in good[0]}
            feats = {k: v.cpu().numpy() for k, v in self.extractor(stacked).items()}
            for key, arr in feats.items():
                full = np.zeros((len(prepared), *arr.shape[1:]), dtype=np.float32)
                full[np.asarray(ok)] = arr
                out[key] = full
        return out


def read_sample(uri: str, pc_uri: str, config: M3DMConfig) -> dict[str, Any]:
    """``{"image", "xyz"}`` of one item through the scoring pipeline's reader (:func:`adray.io.samples.read_sample`:
    an unorganised cloud goes onto the image grid); raises :class:`adray.io.samples.SampleError`."""
    from adray.io import samples

    modalities = ("rgb", "xyz") if config.uses_xyz else ("rgb",)
    return (
        samples.read_sample({"uri": uri, "pc_uri": pc_uri}, modalities=modalities).raise_for_status().inputs()
    )


def extract_features(
    rows: list[dict[str, Any]],
    config: M3DMConfig,
    workers: int,
    batch_size: int = 8,
    gpus_per_worker: float = 0.0,
) -> tuple[dict[str, np.ndarray], list[dict[str, str]]]:
    """Features of every row (in row order) and the rows that failed; runs on a Ray Data actor pool."""
    import ray

    items = [
        {"order": i, "item_id": r["item_id"], "uri": r["uri"], "pc_uri": r.get("pc_uri") or ""}
        for i, r in enumerate(rows)
    ]
    ds = ray.data.from_items(items).map_batches(
        FeatureActor,
        fn_constructor_kwargs={"config": config.to_dict(), "device": "cuda" if gpus_per_worker else "cpu"},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=max(1, workers)),
        num_cpus=1,
        num_gpus=gpus_per_worker or None,
    )
    out: dict[str, np.ndarray] = {}
    ok = np.zeros(len(rows), dtype=bool)
    seen = np.zeros(len(rows), dtype=bool)
    errors = [""] * len(rows)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        order = batch["order"].astype(np.int64)
        seen[order] = True
        ok[order] = batch["ok"]
        for i, err in zip(order, batch["error"]):
            errors[i] = str(err)
        for key in ("rgb", "xyz"):
            if key in batch:
                if key not in out:
                    out[key] = np.zeros((len(rows), *batch[key].shape[1:]), dtype=np.float32)
                out[key][order] = batch[key]
    if not seen.all():  # never silently drop an item
        raise RuntimeError(f"feature extraction returned {int(seen.sum())} of {len(rows)} items")
    skipped = [
        {"item_id": rows[i]["item_id"], "uri": rows[i]["uri"], "error": errors[i]}
        for i in np.flatnonzero(~ok)
    ]
    return {k: v[ok] for k, v in out.items()}, skipped


def train_fusion(
    features: dict[str, np.ndarray],
    item_ids: list[str],
    config: M3DMConfig,
    workers: int,
    storage_root: str | None = None,
) -> tuple[Any, list[float]]:
    """Train UFF with Ray Train DDP on the bank items' features; returns (FeatureFusion, loss curve)."""
    import ray
    from ray.train import DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from adray import storage
    from adray.detectors.base import tensors_from_bytes
    from adray.detectors.m3dm.fusion import FeatureFusion

    rows = [
        {"item_id": i, "xyz": features["xyz"][k], "rgb": features["rgb"][k]} for k, i in enumerate(item_ids)
    ]
    ds = ray.data.from_items(rows)
    run_name = f"uff-{config.category}-{int(time.time() * 1000)}"
    # private folders (mkdtemp: fresh name, mode 0700), never a fixed path in the shared temp directory
    scratch = [] if storage_root else [tempfile.mkdtemp(prefix="adray-m3dm-uff-")]
    root = storage_root or scratch[0]
    scratch.append(tempfile.mkdtemp(prefix="adray-ray-train-"))
    weights_uri = storage.join_url(root, run_name, "uff.safetensors")
    trainer = TorchTrainer(
        _uff_loop,
        train_loop_config={"m3dm": config.to_dict(), "weights_uri": weights_uri},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": 0.5}),
        datasets={"features": ds},
        dataset_config=DataConfig(datasets_to_split=[]),
        run_config=RunConfig(name=run_name, storage_path=scratch[-1]),
    )
    try:
        trainer.fit()
        fusion = FeatureFusion(config.uff)
        state = tensors_from_bytes(storage.read_bytes(weights_uri))
    finally:
        for folder in scratch:
            shutil.rmtree(folder, ignore_errors=True)
    losses = [float(v) for v in state.pop(LOSSES_KEY)]  # Train V2 keeps no metrics without a checkpoint
    fusion.load_state_dict(state)
    return fusion.eval(), losses


def _uff_loop(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from adray import storage
    from adray.detectors.base import tensors_to_bytes
    from adray.detectors.m3dm.fusion import FeatureFusion, lr_at, make_optimizer, paired_patches
    from adray.train import common

    config = M3DMConfig.from_dict(loop_config["m3dm"])
    cfg = config.uff
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    owns = common.owner_filter(rank, world)
    mine = [r for r in ray.train.get_dataset_shard("features").iter_rows() if owns(str(r["item_id"]))]
    if not mine:
        raise RuntimeError(f"UFF worker {rank}/{world} owns no items; use fewer workers than items")
    xyz = torch.as_tensor(np.stack([r["xyz"] for r in mine]))
    rgb = torch.as_tensor(np.stack([r["rgb"] for r in mine]))
    torch.manual_seed(cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's)
    model = FeatureFusion(cfg)
    train_model = ray.train.torch.prepare_model(model) if common.distributed() else model
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed * 1009 + rank)
    losses: list[float] = []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        pick = torch.randint(len(mine), (min(cfg.batch_items, len(mine)),), generator=gen)
        x_rows, r_rows = paired_patches(xyz[pick], rgb[pick])
        if len(x_rows) > cfg.max_patches:
            keep = torch.randperm(len(x_rows), generator=gen)[: cfg.max_patches]
            x_rows, r_rows = x_rows[keep], r_rows[keep]
        loss = train_model(x_rows, r_rows)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(common.all_reduce_sum(loss.detach().reshape(1))[0]) / world)
    if rank == 0:  # the driver reads the weights from storage (works in local mode and across nodes)
        state = {**model.state_dict(), LOSSES_KEY: torch.tensor(losses, dtype=torch.float64)}
        storage.write_bytes(loop_config["weights_uri"], tensors_to_bytes(state))
    ray.train.report({"losses": losses, "final_loss": losses[-1] if losses else None})


def build_m3dm(
    train_uri: str,
    output_uri: str,
    config: M3DMConfig,
    *,
    options: M3DMBuildOptions | None = None,
    **changes: Any,
) -> BuildSummary:
    """The whole build: items -> Ray features -> (UFF on Ray Train) -> banks + DLF -> decision -> artifact.

    ``options``: Ray resources and decision rates (:class:`M3DMBuildOptions`, its defaults when not
    given); keyword ``changes`` set its fields (``workers=1, target_fpr=0.05``, the keywords this function
    took before); an unknown or bad one raises :class:`adray.errors.ConfigError`. The rates:
    :func:`adray.detectors.m3dm.fit.heldout_decision`."""
    import torch

    from adray.detectors.m3dm.features import FeatureExtractor
    from adray.detectors.m3dm.fit import build_detector
    from adray.train.common import default_checkpoint_root

    opts = (options or M3DMBuildOptions()).replace(**changes)
    t0 = time.perf_counter()
    bank_rows, held_rows = select_items(train_uri, config.category)
    extractor = FeatureExtractor(config)
    config = config.with_dims(
        extractor.rgb_dim or config.uff.rgb_dim, extractor.xyz_dim or config.uff.xyz_dim
    )
    timings: dict[str, float] = {}
    feats, skipped = extract_features(
        bank_rows + held_rows, config, opts.workers, opts.batch_size, opts.gpus_per_worker
    )
    timings["features_s"] = time.perf_counter() - t0
    ok_rows, n_bank, bank_feats, held_feats = _split_features(bank_rows, held_rows, feats, skipped)
    fusion, losses = None, []
    if config.uses_fusion:
        t1 = time.perf_counter()
        ids = [r["item_id"] for r in ok_rows[:n_bank]]
        root = default_checkpoint_root(output_uri)
        fusion, losses = train_fusion(bank_feats, ids, config, opts.uff_world, root)
        timings["uff_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    torch.manual_seed(config.seed)
    metadata = {"train_uri": train_uri, "skipped": skipped, "uff_final_loss": losses[-1] if losses else None}
    det = build_detector(
        config,
        extractor,
        bank_feats,
        held_feats,
        fusion,
        metadata,
        target_fpr=opts.target_fpr,
        target_pixel_fpr=opts.target_pixel_fpr,
    )
    timings["banks_dlf_s"] = time.perf_counter() - t2
    det.metadata["timings"] = {**det.metadata.get("timings", {}), **timings}
    det.save(output_uri)
    timings["total_s"] = time.perf_counter() - t0
    return BuildSummary(
        output_uri, det.version, config.mode, n_bank, len(ok_rows) - n_bank, skipped, timings, losses
    )


def _split_features(
    bank_rows: list[dict[str, Any]],
    held_rows: list[dict[str, Any]],
    feats: dict[str, np.ndarray],
    skipped: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], int, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(rows read, n bank rows, bank features, held-out features)``: the features, in row order without the
    skipped items, cut where the memory-bank rows end and the held-out rows begin."""
    ok_rows = [r for r in bank_rows + held_rows if r["item_id"] not in {s["item_id"] for s in skipped}]
    n_bank = sum(1 for r in ok_rows if r in bank_rows)
    bank_feats = {k: v[:n_bank] for k, v in feats.items()}
    held_feats = {k: v[n_bank:] for k, v in feats.items()}
    return ok_rows, n_bank, bank_feats, held_feats
