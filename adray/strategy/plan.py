"""The plan: per category, the strategy its data allows, why, and what would move it up the ladder.

:func:`plan_inventory` is pure: an :class:`~adray.strategy.inventory.Inventory` (counts) and
:class:`~adray.strategy.rules.StrategyRules` in, a :class:`Plan` out, no I/O. The ladder is tried best rung
first (``rules.ladder``); the first whose needs are met is the category's strategy. Data that cannot help
yet is said, never fatal: labelled anomalies without masks (BGAD needs masks), point clouds for only some
items (M3DM needs one per item), an empty category (strategy ``none``).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from adray import storage
from adray.strategy.inventory import CategoryInventory, Inventory
from adray.strategy.rules import STRATEGIES, StrategyRules

PLANS_DIR = "plans"


@dataclass
class CategoryPlan:
    """One category's plan: ``strategy`` (a key of :data:`STRATEGIES`), the adray ``detector`` and
    ``method`` it means, ``shots`` (WinCLIP+ references, k-shot only), ``why`` in words, ``next_step`` (what
    would move it one rung up; None at the top) and ``notes`` (data that cannot help yet, and why)."""

    category: str
    strategy: str
    detector: str
    method: str
    paper: str
    why: str
    next_step: str | None
    shots: int | None = None
    notes: list[str] = field(default_factory=list)
    inventory: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Plan:
    """The plan of one input: a :class:`CategoryPlan` per category, the rules used, plan-level notes."""

    input: str
    rules: StrategyRules
    categories: list[CategoryPlan]
    created_at: str
    labels_root: str | None = None
    notes: list[str] = field(default_factory=list)

    def category(self, name: str) -> CategoryPlan:
        """The plan of category ``name``; ``KeyError`` when the input has no such category."""
        for c in self.categories:
            if c.category == name:
                return c
        raise KeyError(f"no category {name!r} in the plan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "labels_root": self.labels_root,
            "created_at": self.created_at,
            "rules": self.rules.to_dict(),
            "notes": list(self.notes),
            "categories": [c.to_dict() for c in self.categories],
        }


def plan_inventory(
    inventory: Inventory, rules: StrategyRules | None = None, *, now: datetime | None = None
) -> Plan:
    """The plan of every category of ``inventory`` under ``rules`` (default :class:`StrategyRules`)."""
    rules = rules or StrategyRules()
    now = now or datetime.now(timezone.utc)
    cats = [plan_category(c, rules) for c in inventory.categories]
    notes = list(inventory.notes)
    if not cats:
        notes.append("the input holds no category: nothing to plan")
    return Plan(inventory.input, rules, cats, now.isoformat(), inventory.labels_root, notes)


def unmet_needs(strategy: str, inv: CategoryInventory, rules: StrategyRules) -> list[str]:
    """What ``inv`` lacks for ``strategy``, each as "<how many more> <of what>"; empty when it qualifies."""
    out: list[str] = []
    if inv.n_items == 0:
        return ["readable items"]
    if strategy == "k-shot":
        _more(out, rules.min_normals_kshot - inv.n_normals, "normal image(s)")
    elif strategy == "supervised":
        _more(
            out, rules.min_anomalies_with_masks - inv.n_anomalies_with_masks, "labelled anomalies with masks"
        )
        _more(out, rules.min_normals_supervised - inv.n_normals, "normal image(s)")
    elif strategy == "multimodal" and inv.n_pointclouds == 0:
        out.append("point clouds (the category is image-only)")
    elif strategy == "multimodal":
        _more(out, inv.n_items - inv.n_pointclouds, "point cloud(s), one per item")
        _more(
            out,
            rules.min_normals_multimodal - inv.n_normals_with_pointclouds,
            "normal item(s) with a point cloud",
        )
    return out


def _more(out: list[str], missing: int, what: str) -> None:
    if missing > 0:
        out.append(f"{missing} more {what}")


def plan_category(inv: CategoryInventory, rules: StrategyRules) -> CategoryPlan:
    """The plan of one category (see :func:`plan_inventory`)."""
    notes = _notes(inv, rules)
    if inv.n_items == 0:
        why = "empty category: no readable items" + (
            f" ({inv.n_skipped} skipped by the catalog)" if inv.n_skipped else ""
        )
        return CategoryPlan(inv.category, "none", "", "", "", why, "readable items → WinCLIP zero-shot",
                            notes=notes, inventory=inv.to_dict())  # fmt: skip
    ladder = list(rules.ladder)
    chosen = next((s for s in ladder if not unmet_needs(s, inv, rules)), None)
    if chosen is None:  # a custom ladder without zero-shot, none of whose rungs is met
        chosen_i, strategy = len(ladder), "none"
    else:
        chosen_i, strategy = ladder.index(chosen), chosen
    detector, method, paper = STRATEGIES[strategy]
    above = ladder[:chosen_i]
    skipped = [f"not {STRATEGIES[s][1]}: needs {', '.join(unmet_needs(s, inv, rules))}" for s in above]
    why = "; ".join([_qualifies(strategy, inv, rules), *skipped])
    next_step = None
    if above:
        target = above[-1]
        next_step = f"{', '.join(unmet_needs(target, inv, rules))} → {STRATEGIES[target][1]}"
    shots = min(inv.n_normals, rules.kshot_shots) if strategy == "k-shot" else None
    return CategoryPlan(inv.category, strategy, detector, method, paper, why, next_step, shots, notes,
                        inv.to_dict())  # fmt: skip


def _qualifies(strategy: str, inv: CategoryInventory, rules: StrategyRules) -> str:
    if strategy == "multimodal":
        return (f"point clouds for all {inv.n_items} items and {inv.n_normals_with_pointclouds} normal(s) "
                "with one: M3DM memory banks")  # fmt: skip
    if strategy == "supervised":
        return (f"{inv.n_anomalies_with_masks} labelled anomalies with masks (needs {rules.min_anomalies_with_masks})"
                f" and {inv.n_normals} normal image(s): BGAD")  # fmt: skip
    if strategy == "k-shot":
        k = min(inv.n_normals, rules.kshot_shots)
        return f"{inv.n_normals} normal image(s): WinCLIP+ with {k} reference(s)"
    if strategy == "zero-shot":
        return (
            "no normal images yet: WinCLIP with prompts only"
            if inv.n_normals == 0
            else "WinCLIP with prompts only"
        )
    return "no rung of the ladder is met"


def _notes(inv: CategoryInventory, rules: StrategyRules) -> list[str]:
    notes = []
    if inv.n_anomalies_without_masks:
        notes.append(
            f"{inv.n_anomalies_without_masks} labelled anomal{'y has' if inv.n_anomalies_without_masks == 1 else 'ies have'} "
            "no defect mask: BGAD needs masks (a mask_uri in the labels import, or the manifest's gt_mask_uri)"
        )
    if 0 < inv.n_pointclouds < inv.n_items:
        notes.append(
            f"point clouds for only {inv.n_pointclouds} of {inv.n_items} items: stays image-only "
            "(M3DM needs a point cloud for every item)"
        )
    if inv.n_items and not inv.n_to_score:
        notes.append("no test-split items to score yet")
    if inv.n_skipped:
        notes.append(f"{inv.n_skipped} item(s) skipped by the catalog (empty, unsupported or refused files)")
    return notes


def pointcloud_word(inv: dict[str, Any]) -> str:
    """``all`` / ``some (P/N)`` / ``none``: which items of a category have a point cloud."""
    n, p = inv.get("n_items", 0), inv.get("n_pointclouds", 0)
    if p == 0:
        return "none"
    return "all" if p == n else f"some ({p}/{n})"


def plan_table(plan: Plan) -> str:
    """The plan as text: a table of counts and strategies, then per category why, what next, notes."""
    from adray.tables import text_table

    cols = ["category", "items", "normals", "anomalies+mask", "anomalies-mask", "point clouds", "to score",
            "strategy", "method"]  # fmt: skip
    rows = []
    for c in plan.categories:
        i = c.inventory
        method = c.method + (f" (k={c.shots})" if c.shots else "")
        rows.append([c.category, i["n_items"], i["n_normals"], i["n_anomalies_with_masks"],
                     i["n_anomalies_without_masks"], pointcloud_word(i), i["n_to_score"], c.strategy,
                     method or "-"])  # fmt: skip
    lines = [text_table(cols, rows)] if rows else []
    for c in plan.categories:
        lines.append(f"{c.category}: {c.why}")
        lines.append(f"  next: {c.next_step}" if c.next_step else "  next: top of the ladder")
        lines += [f"  note: {n}" for n in c.notes]
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def write_plan(plan: Plan, url: str) -> str:
    """Write ``plan`` as JSON to ``url`` (atomically); returns ``url``."""
    storage.write_text(url, json.dumps(plan.to_dict(), indent=1, ensure_ascii=False) + "\n")
    return url


def plan_url(root: str, now: datetime | None = None) -> str:
    """A new file name under ``root/plans/``: ``plan-<UTC time>-<uuid hex>.json`` (sorts by time)."""
    now = now or datetime.now(timezone.utc)
    return storage.join_url(
        root, PLANS_DIR, f"plan-{now.strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:12]}.json"
    )
