"""`adray plan --input URI [--output ROOT]`: per category, the data that exists, the strategy it allows on
the ladder (zero-shot WinCLIP → WinCLIP+ k-shot → BGAD supervised; M3DM where every item has a point
cloud), why, and what would move it up. Labels come from ROOT's labels table (``adray labels import``);
the plan is printed as a table and written as JSON to ``--json PATH`` and, with ``--output``, to
``ROOT/plans/plan-<time>-<id>.json``. See :mod:`adray.strategy`.
"""

from __future__ import annotations

import argparse
from typing import Annotated

from pydantic import ConfigDict, Field

from adray.config import Config, Flag, add_flags, flag_values


class PlanInputConfig(Config):
    """What ``adray plan`` and ``adray fit`` both read: the input and the ladder's rules."""

    input: Annotated[str, Flag("--input")] = Field(
        description="dataset prefix with a known layout, or a manifest URI (.parquet/.csv/.jsonl)"
    )
    rules: Annotated[str | None, Flag("--rules", metavar="FILE.json")] = Field(
        None, description="JSON object overriding the ladder's thresholds (see adray.strategy.rules)"
    )


class PlanConfig(PlanInputConfig):
    """The flags of ``adray plan``."""

    model_config = ConfigDict(title="plan configuration")

    output: Annotated[str | None, Flag("--output", metavar="ROOT")] = Field(
        None,
        description="results root: its labels count (latest per item) and the plan is written under "
        "ROOT/plans/ (default: no labels, nothing written there)",
    )
    json_path: Annotated[str | None, Flag("--json", metavar="PATH")] = Field(
        None, description="also write the plan as JSON here (any storage URL)"
    )
    categories: Annotated[list[str] | None, Flag("--category", metavar="NAME", repeatable=True)] = Field(
        None, description="plan only this category (repeatable)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, PlanConfig, ("input", "output", "rules", "json_path", "categories"))


def run(args: argparse.Namespace) -> int:
    from adray import storage
    from adray.strategy.inventory import build_inventory
    from adray.strategy.plan import plan_inventory, plan_table, plan_url, write_plan
    from adray.strategy.rules import load_rules

    cfg = PlanConfig(**flag_values(PlanConfig, args))
    rules = load_rules(cfg.rules)  # before reading the archive: a bad rules file fails fast
    inventory = build_inventory(cfg.input, cfg.output)
    inventory.keep_categories(cfg.categories)
    plan = plan_inventory(inventory, rules)
    print(plan_table(plan))
    for url in ([cfg.json_path] if cfg.json_path else []) + ([plan_url(cfg.output)] if cfg.output else []):
        print(f"plan written: {storage.redact_url(write_plan(plan, url))}")
    return 0
