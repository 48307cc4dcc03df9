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
from dataclasses import dataclass
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
    n = batch.num_rows
    now = datetime.now(timezone.utc)
    status, error = list(cols["status"]), list(cols["error"])
    item_mm = [pixel_size_mm if v is None else float(v) for v in cols.get("pixel_size_mm", [None] * n)]
    stored = _store_maps(
        cols, batch.column("map").to_pylist(), status, error, ResultsStore(output), item_mm, write_masks
    )
    return results_table(
        _result_columns(cols, status, error, stored, run_id=run_id, detector=detector, now=now)
    )


@dataclass
class _StoredMaps:
    """Per row, what storing its anomaly map gave: the mask PNG's URI (redacted), the map's value range
    and the defect regions above its ``pixel_threshold``; None where nothing was stored."""

    mask_uri: list[str | None]
    map_min: list[float | None]
    map_max: list[float | None]
    regions: list[list[dict[str, Any]] | None]
    region_count: list[int | None]


def _store_maps(
    cols: dict[str, list[Any]],
    maps: list[bytes | None],
    status: list[str],
    error: list[str | None],
    results: ResultsStore,
    item_mm: list[float | None],
    write_masks: bool,
) -> _StoredMaps:
    """Each ``ok`` row's map at image resolution: its regions, and its PNG written (threads); a row whose
    write fails becomes ``status`` ``error`` (``status`` and ``error`` are updated in place)."""
    n = len(maps)
    out = _StoredMaps([None] * n, [None] * n, [None] * n, [None] * n, [None] * n)
    frames = cols.get("map_frame", [None] * n)  # M3DM's pad offsets: the map in the scan's own pixels
    pixel_thr = cols.get("pixel_threshold", [None] * n)

    def store(i: int) -> None:
        m = np.frombuffer(maps[i], dtype=np.float32).reshape(cols["map_h"][i], cols["map_w"][i]).copy()
        m = map_to_image(m, (int(cols["orig_h"][i]), int(cols["orig_w"][i])), frames[i])
        if pixel_thr[i] is not None:
            out.regions[i], out.region_count[i] = find_regions(m, pixel_thr[i], pixel_size_mm=item_mm[i])
        png, lo, hi = encode_map_png16(m)
        url = results.mask_url(cols["detector_version"][i], cols["item_id"][i])
        if write_masks:
            storage.write_bytes(url, png)
        out.mask_uri[i], out.map_min[i], out.map_max[i] = storage.redact_url(url), float(lo), float(hi)

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
    return out


def _result_columns(
    cols: dict[str, list[Any]],
    status: list[str],
    error: list[str | None],
    stored: _StoredMaps,
    *,
    run_id: str,
    detector: str,
    now: datetime,
) -> dict[str, list[Any]]:
    """The ``results`` columns of a batch's rows; score, map and threshold values only where ``ok``."""
    n = len(status)

    def if_ok(values: list[Any]) -> list[Any]:
        return [v if st == "ok" else None for v, st in zip(values, status)]

    score = if_ok(cols["image_score"])
    thr = cols["threshold"]
    return {
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
        "mask_uri": if_ok(stored.mask_uri),
        "map_min": if_ok(stored.map_min),
        "map_max": if_ok(stored.map_max),
        "status": status,
        "error": [None if st == "ok" else storage.redact_text(e or st) for e, st in zip(error, status)],
        "label": cols["label"],
        "defect_type": cols["defect_type"],
        "content_token": cols["content_token"],
        "scored_at": [now] * n,
        "latency_ms": if_ok(cols["latency_ms"]),
        "date": [now.strftime("%Y-%m-%d")] * n,
        "note": cols.get("note", [None] * n),
        "threshold_source": if_ok(cols.get("threshold_source", [None] * n)),
        "pixel_threshold": if_ok(cols.get("pixel_threshold", [None] * n)),
        "regions": if_ok(stored.regions),
        "region_count": if_ok(stored.region_count),
        "strategy": cols.get("strategy", [None] * n),  # --detector auto's rung (a work-list column)
    }


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
