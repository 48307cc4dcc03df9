"""Test support (no tests here): results written to disk the way the pipeline lays them out.

The layout is :mod:`adray.pipeline.results_store`'s: ``<root>/results/detector=<name>/date=<date>/`` holding
``<run_id>.<uuid>.parquet``, the two partition columns kept in the folder names, not in the files.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from adray.pipeline.results_store import ResultsStore


def write_result_files(root: str, table: pa.Table, run_id: str) -> None:
    """One Parquet file per ``(detector, date)`` of ``table`` (a results-schema table with both partition
    columns) under the local output ``root``, named for ``run_id``."""
    for detector, date in sorted(set(zip(table["detector"].to_pylist(), table["date"].to_pylist()))):
        rows = pc.and_(pc.equal(table["detector"], detector), pc.equal(table["date"], date))
        folder = Path(ResultsStore(root).results_url) / f"detector={detector}" / f"date={date}"
        folder.mkdir(parents=True, exist_ok=True)
        part = table.filter(rows).drop(["detector", "date"])
        pq.write_table(part, folder / f"{run_id}.{uuid.uuid4().hex}.parquet")
