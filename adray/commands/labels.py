"""`adray labels import FILE --output ROOT` and `adray labels list --output ROOT`.

``import`` appends a CSV or Parquet labels file (columns ``item_id,uri,label,defect_type,mask_uri,
labelled_by,labelled_at``; ``item_id`` or ``uri`` and ``label`` required) to the labels table under ROOT,
all or nothing (see :mod:`adray.labels`); a bad file is one error naming its rows, exit code 2.
``list`` prints the latest label per item (``--all``: every imported row, the audit trail).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    imp = sub.add_parser("import", help="append a labels file (CSV or Parquet) to ROOT/labels/")
    imp.add_argument("file", metavar="FILE", help="labels file: *.csv or *.parquet, any storage URL")
    ls = sub.add_parser("list", help="print the latest label per item")
    ls.add_argument("--all", action="store_true", help="every imported row, newest first (the audit trail)")
    ls.add_argument("--max-rows", type=int, default=50, help="print at most this many rows")
    for p in (imp, ls):
        p.add_argument(
            "--output",
            "--results",
            dest="output",
            required=True,
            metavar="ROOT",
            help="results root written by adray score (local path or s3://...)",
        )


def run(args: argparse.Namespace) -> int:
    if args.action == "import":
        return _import(args)
    return _list(args)


def _import(args: argparse.Namespace) -> int:
    from adray.labels import import_labels

    res = import_labels(args.file, args.output)
    print(
        f"imported {res.n_rows} label(s) of {res.n_items} item(s) ({res.n_anomalous} anomalous) "
        f"as {res.import_id}\nwritten: {res.url}"
    )
    if res.ignored_columns:
        print(f"ignored columns: {', '.join(res.ignored_columns)}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from adray.pipeline.query import connect, format_result

    con = connect(args.output)
    cols = "item_id, uri, label, defect_type, mask_uri, labelled_by, labelled_at"
    if args.all:
        sql = f"SELECT {cols}, import_id FROM labels ORDER BY labelled_at DESC, imported_at DESC"
    else:
        sql = f"SELECT {cols} FROM latest_labels ORDER BY labelled_at DESC, item_id"
    print(format_result(con.sql(sql), max_rows=args.max_rows))
    return 0
