"""Which items a BGAD fit uses: normal training images, held-out calibration normals, the few anomalies.

The anomalies come from the *test* split's anomalous items that have a mask (as in the official code);
they are recorded in the artifact (``anomaly_item_ids``) and must be excluded from every evaluation.
Selection is seeded per ``(seed, category)``, so it does not depend on other categories (the official code
shares one RNG across categories): ``num_anomalies // T`` per defect type (T types, optionally restricted
to ``seen_defects``), the remainder drawn from the leftovers of all types.
"""

from __future__ import annotations

import logging
import random
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adray.detectors.bgad.config import BgadTrainConfig
from adray.detectors.bgad.fit import TrainItem
from adray.detectors.bgad.images import copy_paste, resize_image, resize_mask
from adray.errors import UserError

log = logging.getLogger(__name__)

Row = dict[str, Any]


@dataclass
class FitPlan:
    """Manifest rows per role for one category's fit."""

    category: str
    normal: list[Row]
    calibration: list[Row]
    anomalies: list[Row]
    notes: list[str] = field(default_factory=list)

    @property
    def anomaly_item_ids(self) -> list[str]:
        return [r["item_id"] for r in self.anomalies]

    def summary(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "n_normal": len(self.normal),
            "n_calibration": len(self.calibration),
            "anomaly_item_ids": self.anomaly_item_ids,
            "anomaly_defect_types": sorted({r["defect_type"] for r in self.anomalies}),
            "calibration_item_ids": [r["item_id"] for r in self.calibration],
            "notes": list(self.notes),
        }


class FitPlanError(UserError, ValueError):
    """The data cannot make the fit asked for (no normal training items, no anomalies with masks)."""


def plan_fit(rows: Sequence[Row], category: str, cfg: BgadTrainConfig) -> FitPlan:
    """Split manifest rows (dicts with the manifest columns) of ``category`` into fit roles."""
    rows = sorted((r for r in rows if r.get("category") == category), key=lambda r: r["item_id"])
    normals = [r for r in rows if r.get("split") == "train" and int(r.get("label") or 0) == 0]
    if not normals:
        raise FitPlanError(f"no train/good items for category {category!r}; check --train and --category")
    rng = random.Random(f"bgad-calibration/{cfg.seed}/{category}")
    shuffled = normals[:]
    rng.shuffle(shuffled)
    n_cal = int(round(cfg.calibration_fraction * len(normals))) if cfg.calibration_fraction > 0 else 0
    n_cal = min(n_cal, len(normals) - 1)
    calibration, train = shuffled[:n_cal], shuffled[n_cal:]
    plan = FitPlan(category, sorted(train, key=lambda r: r["item_id"]), calibration, [])
    if cfg.num_anomalies > 0:
        plan.anomalies = select_anomalies(
            rows, cfg.num_anomalies, seed=cfg.seed, seen_defects=cfg.seen_defects
        )
        if len(plan.anomalies) < cfg.num_anomalies:
            plan.notes.append(
                f"asked for {cfg.num_anomalies} anomalies, only {len(plan.anomalies)} test anomalies with masks"
            )
        if not plan.anomalies:
            raise FitPlanError(
                f"--num-anomalies {cfg.num_anomalies} but category {category!r} has no test anomalies with "
                "ground-truth masks"
                + (f" of types {list(cfg.seen_defects)}" if cfg.seen_defects else "")
                + "; the supervised fit needs defect masks: fit the unsupervised variant with "
                "--num-anomalies 0, or add masks (MVTec layout: ground_truth/<defect>/<name>_mask.png, "
                "or a gt_mask_uri manifest column)"
            )
    return plan


def select_anomalies(
    rows: Sequence[Row], num: int, *, seed: int, seen_defects: Sequence[str] | None = None
) -> list[Row]:
    """Seeded, defect-type-balanced choice of ``num`` anomalous test items with masks (one category)."""
    candidates = [
        r
        for r in rows
        if r.get("split") == "test"
        and int(r.get("label") or 0) == 1
        and r.get("gt_mask_uri")
        and (not seen_defects or r.get("defect_type") in seen_defects)
    ]
    if not candidates:
        return []
    category = candidates[0].get("category", "")
    rng = random.Random(f"bgad-anomalies/{seed}/{category}")
    by_type: dict[str, list[Row]] = defaultdict(list)
    for r in sorted(candidates, key=lambda r: r["item_id"]):
        by_type[str(r.get("defect_type"))].append(r)
    per_type = num // len(by_type)
    chosen: list[Row] = []
    leftovers: list[Row] = []
    for defect in sorted(by_type):
        items = by_type[defect][:]
        rng.shuffle(items)
        chosen += items[:per_type]
        leftovers += items[per_type:]
    rng.shuffle(leftovers)
    chosen += leftovers[: max(0, num - len(chosen))]
    return sorted(chosen, key=lambda r: r["item_id"])


def load_items(rows: Sequence[Row], role: str, size: int) -> list[TrainItem]:
    """Read and decode rows (and masks of anomalies) at model size."""
    from adray.io import samples

    items = []
    for r in rows:  # the scoring pipeline's reader; a bad item stops the fit (SampleError)
        # masks binarised at half range, as the evaluation reads them (JPEG noise is not defect)
        sample = samples.read_sample(r, mask=role == "anomaly").raise_for_status()
        mask = None
        if role == "anomaly":
            if sample.mask is None:
                raise samples.SampleError(
                    "not_found", f"{sample.uri}: an anomaly without a ground-truth mask"
                )
            mask = resize_mask(sample.mask, size)
        items.append(TrainItem(r["item_id"], resize_image(sample.image, size), mask, role))
    return items


class NormalImages(Sequence[TrainItem]):
    """All of a plan's normal training images, in plan order, decoded on first use.

    Copy-paste draws its base images from this list, so the synthetic samples of an anomaly are the same
    whichever rank owns it and however many ranks there are; ``loaded`` (items a rank already decoded)
    avoids decoding those twice."""

    def __init__(self, rows: Sequence[Row], size: int, loaded: Sequence[TrainItem] = ()) -> None:
        self._rows, self._size = list(rows), size
        self._items = {it.item_id: it for it in loaded}

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        row = self._rows[i]
        if row["item_id"] not in self._items:
            self._items[row["item_id"]] = load_items([row], "normal", self._size)[0]
        return self._items[row["item_id"]]


def training_item_ids(plan: FitPlan, variants: int) -> list[str]:
    """Cache order of a fit's training items (normals, anomalies, their copy-paste variants), the order a
    single worker builds and every rank of a distributed fit gathers into."""
    anomaly_ids = plan.anomaly_item_ids
    synthetic = [f"{a}#cp{v}" for a in anomaly_ids for v in range(variants)] if plan.normal else []
    return [r["item_id"] for r in plan.normal] + anomaly_ids + synthetic


def copy_paste_items(
    anomalies: Sequence[TrainItem],
    normals: Sequence[TrainItem],
    variants: int,
    seed: int,
    placement: str = "in_place",
) -> list[TrainItem]:
    """``variants`` synthetic copy-paste samples per anomaly, seeded by ``(seed, anomaly item_id)``; base
    images are drawn from ``normals`` (pass :class:`NormalImages` of the whole plan for W-independent data)."""
    out = []
    if not normals:
        return out
    for a in anomalies:
        if a.mask is None:
            continue
        rng = np.random.default_rng([seed, zlib.crc32(a.item_id.encode())])
        for v in range(variants):
            base = normals[int(rng.integers(len(normals)))]
            image, mask = copy_paste(a.image, a.mask, base.image, rng, placement)
            out.append(TrainItem(f"{a.item_id}#cp{v}", image, mask, "synthetic"))
    return out
