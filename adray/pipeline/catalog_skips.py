"""Rows the decode stage does not read: the catalog's skips and a manifest ``pixel_size_mm`` that is not a
positive number. Each gets its ``(status, error)`` problem, so it still leaves the stage as one row."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from adray.io.samples import Problem


def catalog_skips(batch: pa.Table, uris: list[str]) -> list[Problem | None]:
    """Per row, ``(status, error)`` from the manifest's ``skip_status`` / ``skip_reason`` (a file the catalog
    keeps so that it gets its row, but that is not to be read: refused name, not an image, zero bytes), or
    ``error`` for a ``pixel_size_mm`` that is not a positive number (the item is not read)."""
    n = batch.num_rows
    sizes = batch.column("pixel_size_mm").to_pylist() if "pixel_size_mm" in batch.column_names else [None] * n
    if "skip_status" not in batch.column_names:
        return [bad_pixel_size(v, u) for v, u in zip(sizes, uris)]
    statuses = batch.column("skip_status").to_pylist()
    reasons = batch.column("skip_reason").to_pylist() if "skip_reason" in batch.column_names else statuses
    return [
        (s, f"{u}: {r or s}") if s else bad_pixel_size(v, u)
        for s, r, u, v in zip(statuses, reasons, uris, sizes)
    ]


def bad_pixel_size(value: Any, uri: str) -> Problem | None:
    """``("error", why)`` when a manifest's ``pixel_size_mm`` is given but not a positive finite number."""
    try:
        ok = value is None or (np.isfinite(float(value)) and float(value) > 0)
    except (TypeError, ValueError):
        ok = False
    return (
        None
        if ok
        else ("error", f"{uri}: manifest column pixel_size_mm must be a positive number, got {value!r}")
    )
