"""Typed result rows and the run record.

:func:`finalize_batch` is the last CPU stage of the graph: it brings each anomaly map back to its
item's original pixels (:func:`adray.io.masks.map_to_image`: padding the preprocessing added, as M3DM's
square padding, is cut off before the resize), writes it as a 16-bit PNG to
``masks/detector_version=<v>/<item_id>.png`` (the key depends only on the detector version and the item,
so retries and re-runs overwrite), and returns a pyarrow table with exactly the ``results`` schema, so
all-null columns keep their types in Parquet.

:func:`build_run_record` / :func:`write_run_record` make ``runs/<run_id>.json``, validated against
``schemas/run_record`` and written last: its presence commits the run's rows. The paths, the record and
the listing of a run's files belong to :mod:`adray.pipeline.results_store`; the names here forward.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from adray import schemas, storage
from adray.io.masks import encode_map_png16, map_to_image
from adray.pipeline.results_store import (  # noqa: F401  (build_run_record, PARTITION_COLS: public here before)
    PARTITION_COLS,
    ResultsStore,
    build_run_record,
)
from adray.regions import find_regions

#: Result columns in the order of ``schemas/results``.
RESULT_FIELDS = tuple(schemas.load_schema("results").names)
_MASK_WRITE_THREADS = 8


def finalize_batch(
    batch: pa.Table,
    *,
    run_id: str,
    detector: str,
    output: str,
    write_masks: bool = True,
    pixel_size_mm: float | None = None,
) -> pa.Table:
    """``map_batches`` UDF (pyarrow format): maps -> mask PNGs in storage; rows -> typed results table.

    ``detector`` names the rows' detector unless the batch has a ``detector`` column (a run whose
    detectors share one graph: :func:`adray.pipeline.graph.build_dataset`).

    Each map at image resolution also gives the item's defect regions above its ``pixel_threshold``
    (:func:`adray.regions.find_regions`; areas in mm² with the item's ``pixel_size_mm`` manifest column,
    else the run's ``pixel_size_mm``)."""
    cols = {name: batch.column(name).to_pylist() for name in batch.column_names if name != "map"}
    maps = batch.column("map").to_pylist()
    n = batch.num_rows
    now = datetime.now(timezone.utc)
    mask_uri: list[str | None] = [None] * n
    map_min: list[float | None] = [None] * n
    map_max: list[float | None] = [None] * n
    status, error = list(cols["status"]), list(cols["error"])
    frames = cols.get("map_frame", [None] * n)  # M3DM's pad offsets: the map in the scan's own pixels
    results = ResultsStore(output)
    pixel_thr = cols.get("pixel_threshold", [None] * n)
    item_mm = [pixel_size_mm if v is None else float(v) for v in cols.get("pixel_size_mm", [None] * n)]
    regions: list[list[dict[str, Any]] | None] = [None] * n
    region_count: list[int | None] = [None] * n

    def store(i: int) -> None:
        m = np.frombuffer(maps[i], dtype=np.float32).reshape(cols["map_h"][i], cols["map_w"][i]).copy()
        m = map_to_image(m, (int(cols["orig_h"][i]), int(cols["orig_w"][i])), frames[i])
        if pixel_thr[i] is not None:
            regions[i], region_count[i] = find_regions(m, pixel_thr[i], pixel_size_mm=item_mm[i])
        png, lo, hi = encode_map_png16(m)
        url = results.mask_url(cols["detector_version"][i], cols["item_id"][i])
        if write_masks:
            storage.write_bytes(url, png)
        mask_uri[i], map_min[i], map_max[i] = storage.redact_url(url), float(lo), float(hi)

    todo = [i for i in range(n) if status[i] == "ok" and maps[i] is not None]
    with ThreadPoolExecutor(max_workers=min(_MASK_WRITE_THREADS, max(1, len(todo)))) as pool:
        futures = {i: pool.submit(store, i) for i in todo}
    for i, fut in futures.items():
        exc = fut.exception()
        if exc is not None:
            status[i], error[i] = (
                "error",
                f"mask write failed: {type(exc).__name__}: {storage.redact_text(str(exc))}",
            )

    score = [s if st == "ok" else None for s, st in zip(cols["image_score"], status)]
    thr = cols["threshold"]
    data = {
        "run_id": [run_id] * n,
        "item_id": cols["item_id"],
        "uri": [storage.redact_url(u) for u in cols["uri"]],
        "pc_uri": [storage.redact_url(u) for u in cols["pc_uri"]],
        "category": cols["category"],
        "detector": cols.get("detector") or [detector] * n,  # per row when one graph scores several
        "detector_version": cols["detector_version"],
        "image_score": score,
        "threshold": thr,
        "is_anomalous": [None if s is None or t is None else bool(s >= t) for s, t in zip(score, thr)],
        "mask_uri": [u if st == "ok" else None for u, st in zip(mask_uri, status)],
        "map_min": [v if st == "ok" else None for v, st in zip(map_min, status)],
        "map_max": [v if st == "ok" else None for v, st in zip(map_max, status)],
        "status": status,
        "error": [None if st == "ok" else storage.redact_text(e or st) for e, st in zip(error, status)],
        "label": cols["label"],
        "defect_type": cols["defect_type"],
        "content_token": cols["content_token"],
        "scored_at": [now] * n,
        "latency_ms": [v if st == "ok" else None for v, st in zip(cols["latency_ms"], status)],
        "date": [now.strftime("%Y-%m-%d")] * n,
        "note": cols.get("note", [None] * n),
        "threshold_source": [
            v if st == "ok" else None for v, st in zip(cols.get("threshold_source", [None] * n), status)
        ],
        "pixel_threshold": [v if st == "ok" else None for v, st in zip(pixel_thr, status)],
        "regions": [v if st == "ok" else None for v, st in zip(regions, status)],
        "region_count": [v if st == "ok" else None for v, st in zip(region_count, status)],
        "strategy": cols.get("strategy", [None] * n),  # --detector auto's rung (a work-list column)
    }
    return results_table(data)


def results_table(data: dict[str, list[Any]]) -> pa.Table:
    """Build a table with exactly the ``results`` schema from column lists (absent nullable columns: null)."""
    schema = schemas.load_schema("results")
    n = len(data["run_id"])
    arrays = [
        pa.array(data[f.name] if f.name in data or not f.nullable else [None] * n, type=f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


# ------------------------------------------------------------------------------------------ run record
# The run record lives in the results store (adray.pipeline.results_store); these keep the old names.


def run_record_url(output: str, run_id: str) -> str:
    """``<output>/runs/<run_id>.json`` (:meth:`ResultsStore.run_record_url`)."""
    return ResultsStore(output).run_record_url(run_id)


def write_run_record(output: str, record: dict[str, Any]) -> str:
    """Commit a run: :meth:`ResultsStore.write_run_record`."""
    return ResultsStore(output).write_run_record(record)


def read_run_record(output: str, run_id: str) -> dict[str, Any] | None:
    """:meth:`ResultsStore.read_run_record`: the record, or ``None`` when the run never committed."""
    return ResultsStore(output).read_run_record(run_id)
