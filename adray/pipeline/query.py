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

from adray.labels import create_views as create_label_views
from adray.pipeline.results_store import RUN_FILE_SEPARATOR, ResultsStore  # noqa: F401  (public here before)
from adray.strategy.registry import create_views as create_model_views
from adray.tables import cell, text_table


def connect(root: str, *, exclude_run: str | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the ``results``, ``runs``, ``latest_scores``, ``labels`` and
    ``latest_labels`` views of ``root``; ``exclude_run`` leaves that run's files out of ``results`` (and so
    out of ``latest_scores``), so they are never read."""
    store = ResultsStore(root)
    con = store.duckdb()
    records = store.run_records()
    con.register("_runs", runs_table(records))
    con.execute("CREATE VIEW runs AS SELECT * FROM _runs")
    store.add_results_view(con, store.committed_files(records, exclude_run=exclude_run))
    con.execute(
        "CREATE VIEW latest_scores AS SELECT * FROM results "
        "QUALIFY row_number() OVER (PARTITION BY item_id, detector ORDER BY scored_at DESC, run_id DESC) = 1"
    )
    create_label_views(con, root)
    create_model_views(con, root)
    return con


def list_result_files(root: str) -> list[tuple[str, str]]:
    """``(url, run_id)`` of every Parquet file under ``root/results`` (:meth:`ResultsStore.result_files`)."""
    return [(f.url, f.run_id) for f in ResultsStore(root).result_files()]


def list_run_records(root: str) -> list[dict[str, Any]]:
    """Every readable run record under ``root/runs`` (:meth:`ResultsStore.run_records`)."""
    return ResultsStore(root).run_records()


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
