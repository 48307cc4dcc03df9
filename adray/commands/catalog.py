"""`adray catalog`: build a manifest from a dataset prefix (or validate a given manifest) and summarise it."""

from __future__ import annotations

import argparse
import json
import sys

from adray.catalog import LAYOUTS, CatalogError, catalog_to


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        required=True,
        help="dataset prefix (s3://bucket/mvtec, /data/visa, ...) or a manifest file (.parquet, .csv, .jsonl)",
    )
    parser.add_argument(
        "--output", required=True, help="where to write the manifest (.parquet, .csv or .jsonl)"
    )
    parser.add_argument(
        "--layout",
        default="auto",
        choices=("auto", *LAYOUTS, "manifest"),
        help="dataset layout; auto detects it (a manifest file as --input is read as a manifest)",
    )
    parser.add_argument(
        "--category", action="append", dest="categories", help="catalog only this category (repeatable)"
    )
    parser.add_argument("--report-json", help="also write the catalog report as JSON to this URL")


def run(args: argparse.Namespace) -> int:
    try:
        report = catalog_to(args.input, args.output, args.layout, categories=args.categories)
    except (CatalogError, FileNotFoundError) as e:
        print(f"adray catalog: error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"manifest written to {args.output}")
    if args.report_json:
        from adray import storage

        storage.write_text(args.report_json, json.dumps(report.to_dict(), indent=2))
    return 0
