"""`adray catalog`: build a manifest from a dataset prefix (or validate a given manifest) and summarise it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Annotated

from pydantic import ConfigDict, Field

from adray.catalog import LAYOUTS, CatalogError, catalog_to
from adray.config import Config, Flag, add_flags, flag_values


class CatalogConfig(Config):
    """The flags of ``adray catalog``."""

    model_config = ConfigDict(title="catalog configuration")

    input: Annotated[str, Flag("--input")] = Field(
        description="dataset prefix (s3://bucket/mvtec, /data/visa, ...) or a manifest file (.parquet, .csv, "
        ".jsonl)"
    )
    output: Annotated[str, Flag("--output")] = Field(
        description="where to write the manifest (.parquet, .csv or .jsonl)"
    )
    layout: Annotated[str, Flag("--layout", choices=("auto", *LAYOUTS, "manifest"))] = Field(
        "auto",
        description="dataset layout; auto detects it (a manifest file as --input is read as a manifest)",
    )
    categories: Annotated[list[str] | None, Flag("--category", repeatable=True)] = Field(
        None, description="catalog only this category (repeatable)"
    )
    report_json: Annotated[str | None, Flag("--report-json")] = Field(
        None, description="also write the catalog report as JSON to this URL"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, CatalogConfig, ("input", "output", "layout", "categories", "report_json"))


def run(args: argparse.Namespace) -> int:
    cfg = CatalogConfig(**flag_values(CatalogConfig, args))
    try:
        report = catalog_to(cfg.input, cfg.output, cfg.layout, categories=cfg.categories)
    except (CatalogError, FileNotFoundError) as e:
        print(f"adray catalog: error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"manifest written to {cfg.output}")
    if cfg.report_json:
        from adray import storage

        storage.write_text(cfg.report_json, json.dumps(report.to_dict(), indent=2))
    return 0
