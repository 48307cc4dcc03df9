"""Which rung of the strategy ladder each category was scored on, why, and how the rungs compare.

Rows scored under ``--detector auto`` carry ``strategy`` (results schema v1.2: ``zero-shot``, ``k-shot``,
``supervised``, ``multimodal``); rows of runs that named their detectors have none and are not part of
this section. Per category:

- ``strategy`` / ``detector`` / ``run_id``: those of its most recently scored auto row;
- ``why``: the reason that run recorded for the category (run record ``auto[category].why``), else the
  latest plan's (``ROOT/plans/plan-*.json``, the newest file name);
- ``planned``: the latest plan's strategy for it, why, and what would move it up (``next_step``);
- ``history``: every strategy it has rows of, in the order first scored;
- ``comparison`` (only with more than one strategy): per strategy the metrics of its latest row per item,
  on the items the evaluation keeps (the same fit exclusions for every strategy, so the rungs are
  compared on the same items where each scored them all).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from adray import storage
from adray.evaluation.join import RESULT_COLUMNS, latest_rows
from adray.pipeline.results_store import ResultsStore
from adray.strategy.plan import PLANS_DIR

log = logging.getLogger(__name__)
COMPARED = ("image_auroc", "aupr", "f1_max", "pixel_auroc", "aupro", "n_normal", "n_anomalous", "notes")


def load_strategy_results(
    results_root: str, run_ids: list[str] | None = None, detectors: list[str] | None = None
) -> pd.DataFrame:
    """The latest committed row per ``(item_id, detector, strategy)`` among rows with a ``strategy``
    (the columns of :data:`~adray.evaluation.join.RESULT_COLUMNS` plus ``strategy``); empty when no run
    used ``--detector auto``."""
    columns, keys = (*RESULT_COLUMNS, "strategy"), ("item_id", "detector", "strategy")
    return latest_rows(
        results_root, columns, keys, run_ids=run_ids, detectors=detectors, where=["strategy IS NOT NULL"]
    )


def latest_plan(results_root: str) -> tuple[str | None, dict[str, Any] | None]:
    """``(url, document)`` of the newest plan under ``ROOT/plans/`` (names sort by time); ``(None, None)``
    when there is none or it cannot be read (logged)."""
    folder = storage.join_url(results_root, PLANS_DIR)
    try:
        names = sorted(u for u, _ in storage.walk_files(folder, detail=False)
                       if u.rsplit("/", 1)[-1].startswith("plan-") and u.endswith(".json"))  # fmt: skip
    except (FileNotFoundError, OSError):
        return None, None
    if not names:
        return None, None
    try:
        return names[-1], json.loads(storage.read_text(names[-1]))
    except (OSError, ValueError) as exc:
        log.warning("cannot read the plan %s: %s", names[-1], exc)
        return None, None


def strategy_section(
    rows: pd.DataFrame,
    evaluated: pd.DataFrame,
    results_root: str,
    evaluate_category: Callable[[pd.DataFrame], dict[str, Any]],
) -> dict[str, Any]:
    """The report's strategy section (module docstring). ``rows``: :func:`load_strategy_results`;
    ``evaluated``: the same rows after the ground-truth join (only the items the evaluation keeps);
    ``evaluate_category``: the metrics of one category's joined rows (the per-detector evaluation's)."""
    records = {r.get("run_id"): r for r in ResultsStore(results_root).run_records()}
    plan_url, plan = latest_plan(results_root)
    planned = {c.get("category"): c for c in (plan or {}).get("categories", []) if isinstance(c, Mapping)}
    out: dict[str, Any] = {}
    for cat, part in rows.sort_values(["scored_at", "run_id"]).groupby("category", sort=True):
        last = part.iloc[-1]
        auto = (records.get(last["run_id"]) or {}).get("auto") or {}
        entry = auto.get(cat) if isinstance(auto, Mapping) else None
        p = planned.get(cat)
        why = entry.get("why") if isinstance(entry, Mapping) else None
        doc: dict[str, Any] = {
            "strategy": str(last["strategy"]),
            "detector": str(last["detector"]),
            "run_id": str(last["run_id"]),
            "why": why or (p or {}).get("why"),
            "why_source": "run record" if why else ("plan" if p else None),
            "planned": {k: p.get(k) for k in ("strategy", "why", "next_step")} if p else None,
            "history": list(dict.fromkeys(str(s) for s in part["strategy"])),
        }
        if len(doc["history"]) > 1:
            doc["comparison"] = _compare(part, evaluated[evaluated["category"] == cat], evaluate_category)
        out[str(cat)] = doc
    return {"plan": plan_url, "categories": out}


def _compare(
    rows: pd.DataFrame, evaluated: pd.DataFrame, evaluate_category: Callable[[pd.DataFrame], dict[str, Any]]
) -> dict[str, Any]:
    out = {}
    for strategy in dict.fromkeys(rows["strategy"]):
        mine = rows[rows["strategy"] == strategy]
        kept = evaluated[evaluated["strategy"] == strategy]
        res: dict[str, Any] = {"n_normal": 0, "n_anomalous": 0, "notes": ["no evaluable item"]}
        if len(kept):
            full = evaluate_category(kept)
            res = {k: full.get(k) for k in COMPARED}
        res.update(
            detectors=sorted({str(d) for d in mine["detector"]}),
            runs=sorted({str(r) for r in mine["run_id"]}),
            n_rows=int(len(mine)),
        )
        out[str(strategy)] = res
    return out
