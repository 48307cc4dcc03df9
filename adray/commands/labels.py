"""`adray labels import FILE --output ROOT` and `adray labels list --output ROOT`.

``import`` appends a CSV or Parquet labels file (columns ``item_id,uri,label,defect_type,mask_uri,
labelled_by,labelled_at``; ``item_id`` or ``uri`` and ``label`` required) to the labels table under ROOT,
all or nothing (see :mod:`adray.labels`); a bad file is one error naming its rows, exit code 2.
``list`` prints the latest label per item (``--all``: every imported row, the audit trail).
"""

from __future__ import annotations

import argparse
from typing import Annotated

from pydantic import ConfigDict, Field

from adray.commands.query import QueryConfig
from adray.config import Flag, add_flags, flag_values


class LabelsListConfig(QueryConfig):
    """The flags of ``adray labels list``: the results root and row limit of ``adray query``, and ``--all``."""

    model_config = ConfigDict(title="labels list configuration")

    all: Annotated[bool, Flag("--all")] = Field(
        False, description="every imported row, newest first (the audit trail)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    imp = sub.add_parser("import", help="append a labels file (CSV or Parquet) to ROOT/labels/")
    imp.add_argument("file", metavar="FILE", help="labels file: *.csv or *.parquet, any storage URL")
    add_flags(imp, QueryConfig, ("output",))
    ls = sub.add_parser("list", help="print the latest label per item")
    add_flags(ls, LabelsListConfig, ("all", "max_rows", "output"))


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

    cfg = LabelsListConfig(**flag_values(LabelsListConfig, args))
    con = connect(cfg.output)
    cols = "item_id, uri, label, defect_type, mask_uri, labelled_by, labelled_at"
    if cfg.all:
        sql = f"SELECT {cols}, import_id FROM labels ORDER BY labelled_at DESC, imported_at DESC"
    else:
        sql = f"SELECT {cols} FROM latest_labels ORDER BY labelled_at DESC, item_id"
    print(format_result(con.sql(sql), max_rows=cfg.max_rows))
    return 0
