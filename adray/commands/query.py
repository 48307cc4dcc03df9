"""`adray query --output ROOT "SQL"`: DuckDB over committed results, local or on S3.

Views: ``results`` (rows of committed runs), ``runs`` (run records), ``latest_scores`` (latest row per
item and detector), ``labels`` and ``latest_labels`` (imported labels; the latest per item), ``models``
(the model registry, each artifact's status). Without SQL, prints the views' columns.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sql", nargs="?", default=None, help="SQL over results, runs, latest_scores, labels, latest_labels"
    )
    parser.add_argument(
        "--output",
        "--results",
        dest="output",
        required=True,
        metavar="ROOT",
        help="results root written by adray score (local path or s3://...)",
    )
    parser.add_argument("--max-rows", type=int, default=50, help="print at most this many rows")


def run(args: argparse.Namespace) -> int:
    from adray.pipeline.query import connect, format_result

    con = connect(args.output)
    if not args.sql:
        for view in ("results", "latest_scores", "runs", "labels", "latest_labels", "models"):
            cols = con.execute(f"DESCRIBE {view}").fetchall()
            print(f"{view}: " + ", ".join(f"{c[0]} {c[1]}" for c in cols))
        return 0
    print(format_result(con.sql(args.sql), max_rows=args.max_rows))
    return 0
