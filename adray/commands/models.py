"""`adray models list --output ROOT`: the model registry of a results root, newest registration first,
with each artifact's status (``ok``, ``missing``: the artifact no longer exists, ``unreadable``: it could
not be checked now) and which registration ``best`` picks per category (:mod:`adray.strategy.registry`).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="print every registered model with its status")
    ls.add_argument(
        "--output", "--results", dest="output", required=True, metavar="ROOT",
        help="results root whose models/registry/ to read (local path or s3://...)",
    )  # fmt: skip
    ls.add_argument("--category", default=None, help="only this category")
    ls.add_argument("--ids", action="store_true", help="also print the item ids each model was fitted on")


def run(args: argparse.Namespace) -> int:
    from adray.strategy.registry import list_models, pick_best
    from adray.tables import text_table

    records = list_models(args.output, category=args.category)
    if not records:
        print("no models registered under this root")
        return 0
    best = {}
    for category in {r.category for r in records}:
        chosen = pick_best(r for r in records if r.category == category)
        best[category] = chosen.registration if chosen else None
    cols = ["category", "detector", "strategy", "version", "status", "best", "registered_at", "items",
            "counts", "validation", "uri"]  # fmt: skip
    rows = [
        [r.category, r.detector, r.strategy, r.version, r.status, "*" if best[r.category] == r.registration else "",
         r.registered_at, len(r.item_ids), _pairs(r.counts), _pairs(r.validation), r.uri]
        for r in records
    ]  # fmt: skip
    print(text_table(cols, rows))
    missing = sum(r.status != "ok" for r in records)
    print(
        f"({len(records)} registration(s), {missing} not usable now)"
        if missing
        else f"({len(records)} registration(s))"
    )
    if args.ids:
        for r in records:
            print(f"{r.category} {r.detector} {r.version}: {' '.join(r.item_ids)}")
    return 0


def _pairs(values: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()) or "-"
