"""`adray fit --detector auto` / `python jobs/fit.py`: fit what each category's data allows (the plan).

    adray fit --detector auto --input s3://bucket/archive/ --output s3://bucket/results

Computes the plan (``adray plan``, labels under ``--output`` counted), then per category fits BGAD
(supervised) or builds M3DM (multimodal) with the same code as ``adray fit-bgad`` / ``adray build-m3dm``,
writes the artifact under ``ROOT/models/<category>/`` and registers it (``adray models list``); k-shot and
zero-shot categories need no fit. A category whose registered model was fitted on the same items is
skipped. ``--bgad-args`` / ``--m3dm-args`` pass flags of those commands through (e.g. tiny test models).
Prints one status line per category; exit code 1 when any category failed. See
:mod:`adray.strategy.fitting`.
"""

from __future__ import annotations

import argparse
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from adray.commands.plan import PlanInputConfig
from adray.config import Flag, add_flags, flag_values


class FitConfig(PlanInputConfig):
    """The flags of ``adray fit`` (``--input`` and ``--rules`` as ``adray plan``'s)."""

    model_config = ConfigDict(title="fit configuration")

    detector: Annotated[Literal["auto"], Flag("--detector")] = Field(
        "auto", description="auto: fit what the plan calls for per category (the only choice so far)"
    )
    output: Annotated[str, Flag("--output", metavar="ROOT")] = Field(
        description="results root: its labels count, artifacts go to ROOT/models/, registrations to "
        "ROOT/models/registry/, the plan to ROOT/plans/"
    )
    categories: Annotated[list[str] | None, Flag("--category", metavar="NAME", repeatable=True)] = Field(
        None, description="fit only this category (repeatable)"
    )
    bgad_args: Annotated[str, Flag("--bgad-args", metavar="FLAGS")] = Field(
        "", description='flags of `adray fit-bgad` for BGAD fits, as one string (e.g. "--workers 2")'
    )
    m3dm_args: Annotated[str, Flag("--m3dm-args", metavar="FLAGS")] = Field(
        "", description='flags of `adray build-m3dm` for M3DM builds, as one string (e.g. "--workers 2")'
    )
    force: Annotated[bool, Flag("--force")] = Field(
        False, description="fit even when the registered model was fitted on the same items"
    )
    address: str | None = None  # Ray cluster; flag: cluster.add_address_argument


FLAGS = ("detector", "input", "output", "categories", "rules", "bgad_args", "m3dm_args", "force")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from adray.pipeline.cluster import add_address_argument

    add_flags(parser, FitConfig, FLAGS)
    add_address_argument(parser)


def run(args: argparse.Namespace) -> int:
    from adray import storage
    from adray.strategy.fitting import FITTED, fit_plan
    from adray.strategy.inventory import inventory_from_tables, read_manifest_table
    from adray.strategy.plan import plan_inventory, plan_table, plan_url, write_plan
    from adray.strategy.rules import load_rules

    cfg = FitConfig(**flag_values(FitConfig, args), address=args.address)
    rules = load_rules(cfg.rules)
    root = storage.absolute_url(cfg.output)
    input_uri = storage.absolute_url(cfg.input)
    manifest = read_manifest_table(input_uri)
    labels = _latest_labels(root)
    inventory = inventory_from_tables(manifest, labels, input_uri=input_uri, labels_root=root)
    inventory.keep_categories(cfg.categories)
    plan = plan_inventory(inventory, rules)
    print(plan_table(plan))
    print(f"plan written: {storage.redact_url(write_plan(plan, plan_url(root)))}")
    if any(c.strategy in FITTED for c in plan.categories):
        from adray.pipeline.cluster import ensure_ray

        ensure_ray(cfg.address)
    statuses = fit_plan(plan, manifest, labels, root, bgad_args=cfg.bgad_args, m3dm_args=cfg.m3dm_args,
                        force=cfg.force)  # fmt: skip
    for s in statuses:
        print(s.line())
    failed = [s.category for s in statuses if s.status == "failed"]
    print(f"fit: {sum(s.status == 'fitted' for s in statuses)} fitted, "
          f"{sum(s.status == 'skipped' for s in statuses)} skipped, {len(failed)} failed")  # fmt: skip
    return 1 if failed else 0


def _latest_labels(root: str):
    from adray.labels import latest_labels

    try:
        return latest_labels(root)
    except FileNotFoundError:
        return None
