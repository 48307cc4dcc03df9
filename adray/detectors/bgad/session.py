"""One worker's share of a BGAD fit, and the single-process fit built from it.

:class:`FitSession` loads the items this rank owns (``owns(item_id)``; everything when single-process),
caches their backbone features, runs meta-epochs, serialises its training state without pickle
(safetensors tensors + a JSON-able dict) and finalises the normaliser and the decision (image and pixel
thresholds on the held-out normals, :mod:`adray.detectors.thresholds`). The Ray Train loop
(:mod:`adray.train.bgad`) drives the same object with DDP-wrapped flows and collectives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from adray.detectors.bgad.config import BgadConfig, BgadTrainConfig
from adray.detectors.bgad.data import (
    FitPlan,
    NormalImages,
    Row,
    copy_paste_items,
    load_items,
    plan_fit,
    training_item_ids,
)
from adray.detectors.bgad.detector import BgadDetector
from adray.detectors.bgad.fit import (
    FeatureCache,
    build_feature_cache,
    cached_scores_and_maps,
    epoch_entries,
    fit_normaliser,
    gather_feature_cache,
    is_step2,
    make_optimizer,
    train_meta_epoch,
)
from adray.detectors.bgad.model import BgadModel, Normaliser
from adray.detectors.bgad.parallel import RankGroup, schedule_record
from adray.detectors.thresholds import Decision, calibrate, source_name

log = logging.getLogger(__name__)
Reduce = Callable[[torch.Tensor], torch.Tensor]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


class FitSession:
    """Model, cached features and optimiser of one rank."""

    def __init__(
        self,
        model_cfg: BgadConfig,
        train_cfg: BgadTrainConfig,
        plan: FitPlan,
        *,
        owns: Callable[[str], bool] = lambda _item_id: True,
        rank: int = 0,
        device: torch.device | str = "cpu",
        group: RankGroup | None = None,
    ) -> None:
        # group (data-parallel fit): the training cache is gathered so every rank holds all of it in the
        # single-worker order; calibration items stay with their owner (adray.detectors.bgad.parallel)
        self.group = group or RankGroup()
        if rank not in (0, self.group.rank):
            raise ValueError(f"rank {rank} without its group: pass group=RankGroup(rank, world, ...)")
        self.model_cfg, self.train_cfg, self.plan, self.rank = model_cfg, train_cfg, plan, self.group.rank
        self.device = torch.device(device)
        self.model = BgadModel(model_cfg).to(self.device)
        t0 = time.perf_counter()
        size = model_cfg.image_size
        normals = load_items([r for r in plan.normal if owns(r["item_id"])], "normal", size)
        anomalies = load_items([r for r in plan.anomalies if owns(r["item_id"])], "anomaly", size)
        calibration = load_items([r for r in plan.calibration if owns(r["item_id"])], "calibration", size)
        bases = NormalImages(plan.normal, size, normals)
        synthetic = copy_paste_items(
            anomalies, bases, train_cfg.copy_paste_variants, train_cfg.seed, train_cfg.copy_paste_placement
        )
        local = build_feature_cache(self.model, normals + anomalies + synthetic, device=self.device)
        canonical = training_item_ids(plan, train_cfg.copy_paste_variants)
        self.cache: FeatureCache = gather_feature_cache(local, canonical, self.group) + build_feature_cache(
            self.model, calibration, device=self.device
        )
        self.feature_seconds = time.perf_counter() - t0
        self.optimizer = make_optimizer(self.model.flows, train_cfg.lr)
        self.start_meta_epoch = 0
        self.history: list[dict[str, float]] = []

    def entries(self, meta_epoch: int) -> torch.Tensor:
        return epoch_entries(self.cache, self.train_cfg, is_step2(self.train_cfg, meta_epoch))

    def run_meta_epoch(
        self, meta_epoch: int, entries: torch.Tensor, flows: Sequence[nn.Module] | None = None
    ) -> dict[str, float]:
        # not seeded by rank: every rank draws the same global batches and patch permutations
        gen = torch.Generator().manual_seed(self.train_cfg.seed * 1_000_003 + meta_epoch)
        metrics = train_meta_epoch(
            list(flows) if flows is not None else list(self.model.flows),
            self.optimizer,
            self.cache,
            entries,
            self.train_cfg,
            meta_epoch,
            pos_dim=self.model_cfg.pos_dim,
            generator=gen,
            device=self.device,
            group=self.group,
        )
        self.history.append(metrics)
        return metrics

    # ------------------------------------------------------------------------------------ checkpoint state
    def state(self, next_meta_epoch: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON doc) capturing flows + Adam state; resume with :meth:`load_state`."""
        tensors = {f"flows.{k}": v for k, v in self.model.flows.state_dict().items()}
        opt = self.optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid, st in opt["state"].items():
            for key, val in st.items():
                if torch.is_tensor(val):
                    tensors[f"adam.{pid}.{key}"] = val
                else:
                    scalars.setdefault(str(pid), {})[key] = val
        doc = {"next_meta_epoch": next_meta_epoch, "param_groups": opt["param_groups"], "scalars": scalars}
        doc["history"] = self.history
        return tensors, doc

    def load_state(self, tensors: dict[str, torch.Tensor], doc: dict[str, Any]) -> None:
        flows = {k[len("flows.") :]: v for k, v in tensors.items() if k.startswith("flows.")}
        self.model.flows.load_state_dict(flows)
        state: dict[int, dict[str, Any]] = {}
        for key, val in tensors.items():
            if key.startswith("adam."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = val.to(self.device)
        for pid, extra in doc.get("scalars", {}).items():
            state.setdefault(int(pid), {}).update(extra)
        self.optimizer.load_state_dict({"state": state, "param_groups": doc["param_groups"]})
        self.start_meta_epoch = int(doc["next_meta_epoch"])
        self.history = list(doc.get("history", []))

    # ------------------------------------------------------------------------------------------ finalise
    def finalise(
        self, reduce_max: Reduce = _identity, gather: Reduce = _identity
    ) -> tuple[Normaliser, Decision, str]:
        """Frozen normaliser (training normals) and the :class:`Decision`: image threshold at
        ``target_fpr`` on the held-out normals' scores, pixel threshold at ``target_pixel_fpr`` over their
        map pixels (training normals when none are held out: the third value and ``source`` say which).
        Without any normal to calibrate on, both thresholds are ``None``."""
        # every rank holds all training normals: each takes every world-th one, the collectives combine
        mine = self.cache.indices("normal")[self.group.rank :: self.group.world]
        normaliser = fit_normaliser(
            self.model, self.cache, device=self.device, reduce_max=reduce_max, indices=mine
        )
        method = "heldout_normals"
        local = self.cache.indices("calibration")
        n_cal = gather(torch.tensor([float(len(local))])).sum()
        if float(n_cal) == 0:
            method, local = "train_normals", mine
        scores, maps = cached_scores_and_maps(self.model, self.cache, local, normaliser, device=self.device)
        scores, maps = gather(scores), gather(maps)
        cfg = self.train_cfg
        if scores.numel():
            decision = calibrate(
                scores.numpy(),
                maps.numpy(),
                method=method,
                target_fpr=cfg.target_fpr,
                target_pixel_fpr=cfg.target_pixel_fpr,
            )
        else:
            decision = Decision(None, None, source_name(method, cfg.target_fpr), cfg.target_fpr)
        return normaliser, decision, method

    def detector(
        self,
        normaliser: Normaliser,
        decision: Decision | float | None,
        *,
        metadata: dict[str, Any] | None = None,
    ) -> BgadDetector:
        """The fitted detector; ``decision`` from :meth:`finalise` (a bare threshold is recorded as
        ``given``), stored in ``metadata["decision"]``, its source in ``metadata["threshold_source"]``."""
        if not isinstance(decision, Decision):
            decision = Decision(None if decision is None else float(decision), None, "given")
        meta = {**self.plan.summary(), "target_fpr": self.train_cfg.target_fpr, **(metadata or {})}
        meta["target_pixel_fpr"] = self.train_cfg.target_pixel_fpr
        meta["decision"], meta["threshold_source"] = decision.to_dict(), decision.source
        if self.history:
            meta["last_metrics"] = self.history[-1]
        return BgadDetector(
            self.model,
            normaliser,
            threshold=decision.threshold,
            train_config=self.train_cfg.to_dict(),
            metadata=meta,
            device=str(self.device),
        )


def fit_bgad_local(
    rows: Sequence[Row],
    model_cfg: BgadConfig,
    train_cfg: BgadTrainConfig,
    *,
    device: str | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> BgadDetector:
    """Single-process BGAD fit from manifest rows (dicts); no Ray. ``model_cfg.category`` selects rows."""
    from adray.detectors.base import pick_device

    plan = plan_fit(rows, model_cfg.category, train_cfg)
    session = FitSession(model_cfg, train_cfg, plan, device=pick_device(device))
    for meta_epoch in range(train_cfg.meta_epochs):
        metrics = session.run_meta_epoch(meta_epoch, session.entries(meta_epoch))
        if on_epoch is not None:
            on_epoch(metrics)
    normaliser, decision, method = session.finalise()
    meta = {
        "threshold_source": method,
        "workers": 1,
        "distributed": schedule_record(train_cfg, session.history, 1),
    }
    return session.detector(normaliser, decision, metadata=meta)
