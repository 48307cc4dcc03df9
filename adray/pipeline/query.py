"""DuckDB over a results root, local or object storage, with three views:

- ``results``: every row of committed runs (``runs/<run_id>.json`` exists with ``status = 'committed'``);
- ``runs``: one row per run record (counts flattened, detectors as JSON text);
- ``latest_scores``: the latest row per ``(item_id, detector)`` among committed results;
- ``labels`` / ``latest_labels``: the imported labels (``schemas/labels``) and the latest one per item
  (:mod:`adray.labels`);
- ``models``: the model registry, one row per registered artifact with its status
  (:mod:`adray.strategy.registry`).

Object storage goes through the s3fs filesystem registered with DuckDB (``register_filesystem``), so no
``httpfs`` extension download is needed. Result files are named ``<run_id>.<write uuid>_...parquet``;
the views read only files of committed runs, so a crashed run's partial files never reach a query.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

from adray import schemas, storage
from adray.labels import create_views as create_label_views
from adray.strategy.registry import create_views as create_model_views
from adray.tables import cell, text_table

RUN_FILE_SEPARATOR = "."


def connect(root: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the ``results``, ``runs``, ``latest_scores``, ``labels`` and
    ``latest_labels`` views of ``root``."""
    con = duckdb.connect()
    loc = storage.resolve(root)
    if loc.protocol != "file":
        con.register_filesystem(loc.fs)
    records = list_run_records(root)
    con.register("_runs", runs_table(records))
    con.execute("CREATE VIEW runs AS SELECT * FROM _runs")
    committed = {r["run_id"] for r in records if r.get("status") == "committed"}
    files = [url for url, run_id in list_result_files(root) if run_id in committed]
    cols = ", ".join(f'"{c}"' for c in schemas.load_schema("results").names)
    con.register("_empty_results", schemas.empty_table("results"))
    if files:
        # The empty typed table supplies nullable columns added to the schema after older files were written.
        file_list = "[" + ", ".join(_sql_str(f) for f in files) + "]"
        con.execute(
            f"CREATE VIEW results AS SELECT {cols} FROM (SELECT * FROM _empty_results UNION ALL BY NAME "
            f"SELECT * FROM read_parquet({file_list}, hive_partitioning = true, "
            "hive_types = {'detector': VARCHAR, 'date': VARCHAR}, union_by_name = true))"
        )
    else:
        con.execute(f"CREATE VIEW results AS SELECT {cols} FROM _empty_results")
    con.execute(
        "CREATE VIEW latest_scores AS SELECT * FROM results "
        "QUALIFY row_number() OVER (PARTITION BY item_id, detector ORDER BY scored_at DESC, run_id DESC) = 1"
    )
    create_label_views(con, root)
    create_model_views(con, root)
    return con


def list_result_files(root: str) -> list[tuple[str, str]]:
    """``(url, run_id)`` of every Parquet file under ``root/results`` (run id from the file name)."""
    out = []
    base = storage.join_url(root, "results")
    _fresh(base)
    if not storage.exists(base):
        return out
    for url, _ in storage.walk_files(base):
        name = url.rsplit("/", 1)[-1]
        if name.endswith(".parquet") and RUN_FILE_SEPARATOR in name[: -len(".parquet")]:
            out.append((url, name.split(RUN_FILE_SEPARATOR, 1)[0]))
    return out


def list_run_records(root: str) -> list[dict[str, Any]]:
    base = storage.join_url(root, "runs")
    _fresh(base)
    if not storage.exists(base):
        return []
    records = []
    for url, _ in storage.walk_files(base):
        if url.endswith(".json"):
            try:
                records.append(json.loads(storage.read_text(url)))
            except (ValueError, FileNotFoundError):
                continue  # a half-written or foreign file is not a committed run
    return records


def _fresh(url: str) -> None:
    """Drop cached listings: a long-lived process must see files written since its last look."""
    loc = storage.resolve(url)
    loc.fs.invalidate_cache()  # all of it: s3fs drops only a path and its parents, not cached subfolders


def runs_table(records: list[dict[str, Any]]) -> pa.Table:
    def count(r: dict[str, Any], k: str) -> int | None:
        return (r.get("counts") or {}).get(k)

    timings = [r.get("timings") or {} for r in records]
    return pa.table(
        {
            "run_id": pa.array([r.get("run_id") for r in records], pa.string()),
            "status": pa.array([r.get("status") for r in records], pa.string()),
            "started_at": pa.array(
                [_time(r.get("started_at")) for r in records], pa.timestamp("us", tz="UTC")
            ),
            "finished_at": pa.array(
                [_time(r.get("finished_at")) for r in records], pa.timestamp("us", tz="UTC")
            ),
            "input": pa.array([r.get("input") for r in records], pa.string()),
            "detectors": pa.array([json.dumps(r.get("detectors")) for r in records], pa.string()),
            "items_in": pa.array([count(r, "in") for r in records], pa.int64()),
            "items_out": pa.array([count(r, "out") for r in records], pa.int64()),
            "ok": pa.array([count(r, "ok") for r in records], pa.int64()),
            "errors": pa.array([count(r, "error") for r in records], pa.int64()),
            "anomalous": pa.array([count(r, "anomalous") for r in records], pa.int64()),
            "not_applicable": pa.array([count(r, "not_applicable") for r in records], pa.int64()),
            "total_s": pa.array([t.get("total_s") for t in timings], pa.float64()),
            "items_per_s": pa.array([t.get("items_per_s") for t in timings], pa.float64()),
        }
    )


def format_result(rel: duckdb.DuckDBPyRelation | None, max_rows: int = 50) -> str:
    """A plain-text table of a DuckDB result (first ``max_rows`` rows)."""
    if rel is None:
        return "(no result)"
    names = list(rel.columns)
    rows = rel.limit(max_rows + 1).fetchall()
    more = len(rows) > max_rows
    shown = rows[:max_rows]
    count = f"({len(shown)} row{'s' if len(shown) != 1 else ''}{', more not shown' if more else ''})"
    return text_table(names, [[cell(v) for v in row] for row in shown]) + "\n" + count


def _time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"
