"""`adray query --output ROOT "SQL"`: DuckDB over committed results, local or on S3.

Views: ``results`` (rows of committed runs), ``runs`` (run records), ``latest_scores`` (latest row per
item and detector), ``labels`` and ``latest_labels`` (imported labels; the latest per item), ``models``
(the model registry, each artifact's status). Without SQL, prints the views' columns.
"""

from __future__ import annotations

import argparse
from typing import Annotated

from pydantic import ConfigDict, Field

from adray.config import Config, Flag, add_flags, flag_values


class QueryConfig(Config):
    """The flags of ``adray query`` (``--output`` and ``--max-rows`` also serve ``adray labels``)."""

    model_config = ConfigDict(title="query configuration")

    output: Annotated[str, Flag("--output", aliases=("--results",), metavar="ROOT")] = Field(
        description="results root written by adray score (local path or s3://...)"
    )
    max_rows: Annotated[int, Flag("--max-rows")] = Field(50, description="print at most this many rows")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sql", nargs="?", default=None, help="SQL over results, runs, latest_scores, labels, latest_labels"
    )
    add_flags(parser, QueryConfig, ("output", "max_rows"))


def run(args: argparse.Namespace) -> int:
    from adray.pipeline.query import connect, format_result

    cfg = QueryConfig(**flag_values(QueryConfig, args))
    con = connect(cfg.output)
    if not args.sql:
        for view in ("results", "latest_scores", "runs", "labels", "latest_labels", "models"):
            cols = con.execute(f"DESCRIBE {view}").fetchall()
            print(f"{view}: " + ", ".join(f"{c[0]} {c[1]}" for c in cols))
        return 0
    print(format_result(con.sql(args.sql), max_rows=cfg.max_rows))
    return 0
