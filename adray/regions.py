"""Defect regions: the connected parts of an anomaly map above the pixel threshold, as plain records.

:func:`find_regions` is a pure function (numpy in, dicts out) used by the finalize stage of a scoring run
(:func:`adray.pipeline.rows.finalize_batch`) on each item's map *at the image's own resolution*, so the
boxes and areas are in the pixels of the stored image. Regions are 8-connected (a diagonal step joins
two pixels), found with :func:`scipy.ndimage.label`; a pixel belongs to a region when its value is
``>= pixel_threshold`` (the same rule as ``image_score >= threshold``).

Each region is ``{"x0", "y0", "x1", "y1", "area_px", "area_mm2", "peak", "mean"}``: ``x0``/``y0`` the
first column/row inside the region, ``x1``/``y1`` one past the last (so width = ``x1 - x0``, as Python
slices and PIL boxes), ``area_px`` the number of pixels above the threshold (not the box's area),
``area_mm2`` = ``area_px * pixel_size_mm ** 2`` when a pixel size is known (else ``None``), ``peak`` and
``mean`` the largest and mean map value over the region's pixels. At most ``max_regions`` are kept,
largest area first (ties: higher peak first); the count before the cap is returned beside them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

#: Regions kept per item (largest first); results store the count before the cap in ``region_count``.
MAX_REGIONS = 32
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def find_regions(
    anomaly_map: np.ndarray,
    pixel_threshold: float,
    *,
    max_regions: int = MAX_REGIONS,
    pixel_size_mm: float | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """``(regions, count)``: the 8-connected regions of ``anomaly_map >= pixel_threshold``.

    ``anomaly_map``: float ``[H, W]`` in image pixels. ``regions``: at most ``max_regions`` dicts (see the
    module docstring), largest ``area_px`` first; ``count``: how many regions there were before the cap.
    Raises ``ValueError`` for a map that is not 2-D, a non-finite threshold, ``max_regions < 0`` or a
    pixel size that is not positive.
    """
    m = np.asarray(anomaly_map, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"find_regions wants a 2-D map [H, W], got shape {m.shape}")
    if not np.isfinite(pixel_threshold):
        raise ValueError(f"pixel_threshold must be finite, got {pixel_threshold}")
    if max_regions < 0:
        raise ValueError(f"max_regions must be >= 0, got {max_regions}")
    if pixel_size_mm is not None and not (np.isfinite(pixel_size_mm) and pixel_size_mm > 0):
        raise ValueError(f"pixel_size_mm must be a positive number, got {pixel_size_mm}")
    labels, count = ndimage.label(m >= np.float32(pixel_threshold), structure=_EIGHT_CONNECTED)
    if count == 0:
        return [], 0
    index = np.arange(1, count + 1)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    peaks = np.asarray(ndimage.maximum(m, labels, index), dtype=np.float64)
    means = np.asarray(ndimage.mean(m, labels, index), dtype=np.float64)
    boxes = ndimage.find_objects(labels)
    order = np.lexsort((-peaks, -areas))[:max_regions]  # last key first: area desc, then peak desc
    scale = None if pixel_size_mm is None else float(pixel_size_mm) ** 2
    regions = []
    for k in order:
        rows, cols = boxes[k]
        area = int(areas[k])
        regions.append(
            {
                "x0": int(cols.start),
                "y0": int(rows.start),
                "x1": int(cols.stop),
                "y1": int(rows.stop),
                "area_px": area,
                "area_mm2": None if scale is None else area * scale,
                "peak": float(peaks[k]),
                "mean": float(means[k]),
            }
        )
    return regions, int(count)


def region_mask(anomaly_map: np.ndarray, pixel_threshold: float, region: dict[str, Any]) -> np.ndarray:
    """Boolean ``[H, W]``: the pixels of one region :func:`find_regions` returned for this map and threshold
    (the connected component with that box and area). For tests and tools that compare regions with
    ground-truth masks. Raises ``ValueError`` when no component of the map matches the region."""
    m = np.asarray(anomaly_map, dtype=np.float32)
    labels, _ = ndimage.label(m >= np.float32(pixel_threshold), structure=_EIGHT_CONNECTED)
    box = (slice(region["y0"], region["y1"]), slice(region["x0"], region["x1"]))
    for label in np.unique(labels[box]):
        if label == 0:
            continue
        component = labels == label
        if (
            int(component.sum()) == region["area_px"]
            and ndimage.find_objects(component.astype(np.int32))[0] == box
        ):
            return component
    raise ValueError(f"no region of this map matches {region}")
