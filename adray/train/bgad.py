"""BGAD fit on Ray Train: DDP flows across workers, per-epoch checkpoints, resume, artifact from rank 0.

Each worker owns the manifest items with ``shard_of(item_id, world) == rank``, decodes them itself and
computes their frozen backbone features; the training features are then all-gathered so every rank holds
the whole cache in the single-worker order. Training follows the single-worker optimisation: the same
global batches and patch permutations on every rank, each global chunk split across ranks
(:mod:`adray.detectors.bgad.parallel`), so W workers take the same optimiser steps at the same learning
rates over the same patches as one. Each level's flow is wrapped in its own DDP (gloo on CPU, NCCL on
GPU); one Adam owns all flows.

Rank 0 attaches a checkpoint (flows + Adam state as safetensors, JSON for the rest) to every
``ray.train.report``; constructing the trainer again with the same storage path and run name resumes
from it. After training, the normaliser (max over all ranks' training normals) and the threshold (over all
ranks' held-out normals) are computed with collectives and rank 0 writes the artifact.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")

from adray.detectors.base import content_hash  # noqa: E402
from adray.detectors.bgad.config import BgadConfig, BgadTrainConfig  # noqa: E402
from adray.detectors.bgad.data import FitPlan, plan_fit  # noqa: E402
from adray.train.bgad_options import FitBgadOptions  # noqa: E402

log = logging.getLogger(__name__)

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"


@dataclass
class FitSummary:
    """What a fit returns to the driver."""

    artifact_uri: str
    run_name: str
    version: str
    threshold: float | None
    start_meta_epoch: int
    meta_epochs: int
    workers: int
    seconds: float
    plan: dict[str, Any]
    last_metrics: dict[str, Any] = field(default_factory=dict)

    def to_text(self) -> str:
        p = self.plan
        return "\n".join(
            [
                f"BGAD fit of {p['category']!r}: run {self.run_name}, {self.workers} worker(s), {self.seconds:.1f} s",
                f"  items: {p['n_normal']} normal, {p['n_calibration']} calibration, "
                f"{len(p['anomaly_item_ids'])} anomalies {p['anomaly_defect_types']}",
                f"  meta-epochs {self.start_meta_epoch}..{self.meta_epochs - 1}"
                + (f" (resumed at {self.start_meta_epoch})" if self.start_meta_epoch else ""),
                f"  last epoch: loss {self.last_metrics.get('loss', float('nan')):.4f}, "
                f"{self.last_metrics.get('patches_per_s', 0.0):.0f} patches/s per worker",
                f"  threshold {self.threshold}, version {self.version}",
                f"  artifact: {self.artifact_uri}",
            ]
        )


def load_rows(train_uri: str, category: str) -> list[dict[str, Any]]:
    """Manifest rows of ``category`` from a manifest URI or a dataset prefix (MVTec layout etc.)."""
    from adray import catalog

    table, _ = catalog.open_manifest(train_uri, "auto", categories=[category])
    table = catalog.readable_items(table)  # not the files the catalog keeps only for their row
    return [r for r in table.to_pylist() if r.get("category") == category]


def default_run_name(
    category: str, output_uri: str, model_cfg: BgadConfig, train_cfg: BgadTrainConfig
) -> str:
    """Stable per (output, config): rerunning the same command resumes; changing the config starts afresh."""
    key = {"output": output_uri, "model": model_cfg.to_dict(), "train": train_cfg.to_dict()}
    return f"bgad-{category}-{content_hash(key)[:10]}"


def fit_bgad(
    train_uri: str,
    output_uri: str,
    model_cfg: BgadConfig,
    train_cfg: BgadTrainConfig,
    *,
    options: FitBgadOptions | None = None,
    fail_after_epoch: int | None = None,
    **changes: Any,
) -> FitSummary:
    """Fit BGAD for ``model_cfg.category`` with ``options.workers`` Ray Train workers (0 = local mode,
    in-process).

    ``options``: workers, resources, run name and checkpoint root (:class:`FitBgadOptions`, its defaults
    when not given); keyword ``changes`` set its fields (``workers=2, run_name="r"``, the keywords this
    function took before); an unknown or bad one raises :class:`adray.errors.ConfigError`. Writes the
    artifact to ``output_uri`` and checkpoints to ``checkpoint_root/<run_name>`` (default ``<parent of
    output>/checkpoints``). ``fail_after_epoch`` raises after that meta-epoch's checkpoint (tests of
    resume only).
    """
    from adray.detectors.base import read_artifact_config
    from adray.train.common import default_checkpoint_root

    opts = (options or FitBgadOptions()).replace(**changes)
    workers, gpus_per_worker, run_name = opts.workers, opts.gpus_per_worker, opts.run_name
    t0 = time.perf_counter()
    rows = load_rows(train_uri, model_cfg.category)
    plan = plan_fit(rows, model_cfg.category, train_cfg)  # validate on the driver, before starting workers
    run_name = run_name or default_run_name(model_cfg.category, output_uri, model_cfg, train_cfg)
    loop_config = {
        "model": model_cfg.to_dict(),
        "train": train_cfg.to_dict(),
        "plan": _plan_doc(plan),
        "output": output_uri,
        "run_name": run_name,
        "cpus_per_worker": opts.cpus_per_worker,
        "use_gpu": gpus_per_worker > 0,
        "fail_after_epoch": fail_after_epoch,
    }
    root = opts.checkpoint_root or default_checkpoint_root(output_uri)
    trainer = _trainer(loop_config, workers, gpus_per_worker, root)
    result = trainer.fit()
    metrics = dict(result.metrics or {})
    doc = read_artifact_config(output_uri)
    return FitSummary(
        artifact_uri=output_uri,
        run_name=run_name,
        version=doc["version"],
        threshold=doc["metadata"].get("threshold"),
        start_meta_epoch=int(doc["metadata"].get("resumed_from_meta_epoch", 0)),
        meta_epochs=train_cfg.meta_epochs,
        workers=workers,
        seconds=time.perf_counter() - t0,
        plan=plan.summary(),
        last_metrics=metrics,
    )


def _trainer(loop_config: dict[str, Any], workers: int, gpus_per_worker: float, checkpoint_root: str) -> Any:
    """The ``TorchTrainer`` of one fit: ``workers`` workers with ``loop_config``'s CPUs (and GPUs), DDP over
    gloo (NCCL on GPU), two checkpoints kept under ``<checkpoint root>/<run_name>``, no automatic retry."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from adray.train.common import checkpoint_storage

    storage_path, fs = checkpoint_storage(checkpoint_root)
    use_gpu = loop_config["use_gpu"]
    resources: dict[str, float] = {"CPU": float(loop_config["cpus_per_worker"])}
    if use_gpu:
        resources["GPU"] = float(gpus_per_worker)
    return TorchTrainer(
        _train_loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=loop_config["run_name"],
            storage_path=storage_path,
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=0),
        ),
    )


def _plan_doc(plan: FitPlan) -> dict[str, Any]:
    return {
        "category": plan.category,
        "normal": plan.normal,
        "calibration": plan.calibration,
        "anomalies": plan.anomalies,
        "notes": plan.notes,
    }


def _train_loop(config: dict[str, Any]) -> None:
    """Per-worker loop (runs inside Ray Train workers, or in-process in local mode)."""
    import ray.train
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from adray.train import common

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    session, group, device = _worker_session(config, rank, world)
    train_cfg = session.train_cfg
    flows = list(session.model.flows)
    if common.distributed():
        ids = [device.index] if device.type == "cuda" else None
        flows = [DistributedDataParallel(f, device_ids=ids) for f in flows]
    start = session.start_meta_epoch
    for meta_epoch in range(start, train_cfg.meta_epochs):
        entries = session.entries(meta_epoch)
        _check_same_entries(entries, group)
        metrics = session.run_meta_epoch(meta_epoch, entries, flows)
        metrics.update(start_meta_epoch=start, world_size=world, feature_seconds=session.feature_seconds)
        metrics["patches_per_s_total"] = float(
            common.all_reduce_sum(torch.tensor([metrics["patches_per_s"]]))[0]
        )
        _report(session, metrics, rank, meta_epoch)
        if config.get("fail_after_epoch") is not None and meta_epoch == int(config["fail_after_epoch"]):
            # report() hands the checkpoint to the controller asynchronously: failing at once could beat its
            # commit, and the resumed run would start from scratch (seen as a flaky resume test)
            ray.train.get_all_reported_checkpoints(
                consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=120
            )
            raise RuntimeError(f"injected failure after meta-epoch {meta_epoch} (--fail-after-epoch)")
    normaliser, threshold, source = session.finalise(common.all_reduce_max, common.all_gather_uneven)
    if rank == 0:
        from adray.detectors.bgad.parallel import schedule_record

        detector = session.detector(
            normaliser,
            threshold,
            metadata={
                "threshold_source": source,
                "workers": world,
                "distributed": schedule_record(train_cfg, session.history, world),
                "run_name": config["run_name"],
                "resumed_from_meta_epoch": start,
            },
        )
        detector.save(config["output"])


def _worker_session(config: dict[str, Any], rank: int, world: int) -> tuple[Any, Any, Any]:
    """``(FitSession, RankGroup, device)`` of this worker: threads set, its shard of the plan, collectives
    wired, and the last checkpoint's state loaded where Ray Train resumes a run."""
    import ray.train
    import ray.train.torch
    import torch

    from adray.detectors.bgad.parallel import RankGroup
    from adray.detectors.bgad.session import FitSession
    from adray.train import common

    torch.set_num_threads(common.worker_threads(config["cpus_per_worker"]))
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")
    group = RankGroup(
        rank,
        world,
        gather=common.all_gather_uneven,
        gather_list=_all_gather_list,
        reduce_max=common.all_reduce_max,
        reduce_sum=common.all_reduce_sum,
    )
    session = FitSession(
        BgadConfig.from_dict(config["model"]),
        BgadTrainConfig.from_dict(config["train"]),
        FitPlan(**config["plan"]),
        owns=common.owner_filter(rank, world),
        device=device,
        group=group,
    )
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            session.load_state(*_read_state(d))
        log.info("rank %d resumed at meta-epoch %d", rank, session.start_meta_epoch)
    return session, group, device


def _report(session: Any, metrics: dict[str, Any], rank: int, meta_epoch: int) -> None:
    """``ray.train.report`` one meta-epoch's metrics; rank 0 attaches the checkpoint (flows + Adam state)."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if rank == 0:
            _write_state(tmp, *session.state(meta_epoch + 1))
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=ckpt)


def _all_gather_list(values: list[Any]) -> list[Any]:
    """Every rank's list, concatenated in rank order (identity without a process group)."""
    import torch.distributed as dist

    from adray.train.common import distributed

    if not distributed():
        return list(values)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(values))
    return [v for part in parts for v in part]


def _check_same_entries(entries: Any, group: Any) -> None:
    """Every rank must train on the same global entry list (same cache, same roles)."""
    import torch

    key = torch.tensor([len(entries), int(entries.sum()) if len(entries) else 0], dtype=torch.float64)
    if not torch.equal(group.reduce_max(key), -group.reduce_max(-key)):
        raise RuntimeError("ranks disagree on the epoch's entries; their feature caches differ")


def _write_state(directory: str, tensors: dict, doc: dict) -> None:
    from safetensors.torch import save_file

    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, os.path.join(directory, STATE_TENSORS)
    )
    with open(os.path.join(directory, STATE_JSON), "w") as f:
        json.dump(doc, f)


def _read_state(directory: str) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    with open(os.path.join(directory, STATE_JSON)) as f:
        doc = json.load(f)
    return load_file(os.path.join(directory, STATE_TENSORS)), doc
