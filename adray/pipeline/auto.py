"""``--detector auto`` on the driver: which detector scores each category, before any work is sent out.

Per category of the run's items (the issue 17 ladder, :mod:`adray.strategy`):

1. its best registered model (:func:`adray.strategy.registry.pick_best`: M3DM / BGAD above WinCLIP+, the
   latest among equals, only artifacts that still exist); a registration whose artifact is gone is a
   status line and the category falls back;
2. else WinCLIP+ with up to ``kshot_shots`` of its normals as references (train-split normals and items
   whose latest label is ``normal``; seeded per category, so adding another category never changes them);
3. else zero-shot WinCLIP.

The result is plain :class:`~adray.pipeline.spec.DetectorSpec` s restricted to their categories
(``only_categories``), so the workers never look at the registry. A category moving up changes only its
own detector version, so a re-inspection (delta on the version) re-scores exactly that category.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import pyarrow as pa

from adray import storage
from adray.pipeline.spec import DetectorSpec, ScoreConfig
from adray.strategy.fitting import fit_table
from adray.strategy.inventory import inventory_from_tables
from adray.strategy.plan import plan_inventory
from adray.strategy.registry import list_models, pick_best
from adray.strategy.rules import RANK, StrategyRules

log = logging.getLogger(__name__)


@dataclass
class AutoResolution:
    """What ``--detector auto`` resolved to: the specs, and per category its ``strategy``, the detector
    ref that scores it, why, and its WinCLIP+ references ``[(uri, item_id), ...]``."""

    specs: list[DetectorSpec]
    strategy: dict[str, str]
    ref: dict[str, str]
    why: dict[str, str]
    references: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    status_lines: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, dict[str, str]]:
        return {c: {"strategy": s, "detector": storage.redact_url(self.ref[c]), "why": self.why[c]}
                for c, s in sorted(self.strategy.items())}  # fmt: skip


def resolve_auto(
    config: ScoreConfig, manifest: pa.Table, categories: list[str], rules: StrategyRules | None = None
) -> AutoResolution:
    """Resolve ``--detector auto`` for ``categories`` (those of the run's items) against the registry and
    labels under ``config.output``. Never raises for one category's missing artifact (status line)."""
    rules = rules or StrategyRules()
    labels = _latest_labels(config.output)
    plan = plan_inventory(inventory_from_tables(manifest, labels), rules)
    planned = {c.category: c for c in plan.categories}
    res = AutoResolution([], {}, {}, {})
    by_artifact: dict[str, list[str]] = {}
    for cat in categories:
        records = list_models(config.output, category=cat)
        best = pick_best(records)
        for r in records:
            if r.status != "ok" and (best is None or RANK.get(r.strategy, -1) > RANK.get(best.strategy, -1)):
                res.status_lines.append(
                    f"{cat}: registered {r.detector} {r.version} at {storage.redact_url(r.uri)} is {r.status}; "
                    "falls back"
                )
        if best is not None:
            by_artifact.setdefault(best.uri, []).append(cat)
            res.strategy[cat], res.ref[cat] = best.strategy, best.uri
            res.why[cat] = f"registered {best.detector} model {best.version} ({best.registered_at})"
            continue
        p = planned.get(cat)
        n_normals = p.inventory.get("n_normals", 0) if p is not None else 0
        res.ref[cat] = "winclip"
        if n_normals >= rules.min_normals_kshot:
            refs = pick_normals(manifest, labels, cat, rules.kshot_shots, config.seed)
            res.references[cat] = refs
            res.strategy[cat] = "k-shot"
            res.why[cat] = f"no registered model; {n_normals} normal image(s): WinCLIP+ with {len(refs)}"
        else:
            res.strategy[cat] = "zero-shot"
            res.why[cat] = "no registered model and no normal images: WinCLIP with prompts only"
    for line in res.status_lines:
        log.warning("--detector auto: %s", line)
    res.specs = _specs(config, res, by_artifact)
    return res


def pick_normals(
    manifest: pa.Table, labels: pa.Table | None, category: str, k: int, seed: int
) -> list[tuple[str, str]]:
    """Up to ``k`` normals of ``category`` (train-split normals and items labelled ``normal``), chosen with
    a generator seeded by ``seed`` and the category: ``[(uri, item_id), ...]`` sorted by item id."""
    table = fit_table(manifest, labels, category)
    rows = [r for r in table.select(["item_id", "uri", "split", "label"]).to_pylist()
            if r["split"] == "train" and r["label"] in (0, None)]  # fmt: skip
    rng = random.Random(f"adray-auto-references/{seed}/{category}")
    chosen = rng.sample(rows, min(k, len(rows)))
    return sorted(((r["uri"], r["item_id"]) for r in chosen), key=lambda t: t[1])


def _specs(config: ScoreConfig, res: AutoResolution, by_artifact: dict[str, list[str]]) -> list[DetectorSpec]:
    specs = []
    winclip = sorted(c for c, ref in res.ref.items() if ref == "winclip")
    if winclip:
        refs = {c: tuple(u for u, _ in v) for c, v in res.references.items()}
        base = config.replace(detectors=["winclip"]).detector_specs(refs)[0]
        specs.append(base.replace(only_categories=tuple(winclip)))
    for uri, cats in sorted(by_artifact.items()):
        specs.append(DetectorSpec(ref=uri, device=config.actor_device(), plugins=tuple(config.plugins),
                                  only_categories=tuple(sorted(cats))))  # fmt: skip
    return specs


def _latest_labels(root: str) -> pa.Table | None:
    from adray.labels import latest_labels

    try:
        return latest_labels(root)
    except FileNotFoundError:
        return None
