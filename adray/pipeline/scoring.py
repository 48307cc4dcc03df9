"""The scoring stage: a callable class run by a Ray Data actor pool (``compute=ActorPoolStrategy``).

``__init__`` loads the detector once per actor (``DetectorSet`` + one warm instance); ``__call__`` stacks
the preprocessed arrays of the rows that decoded, groups them by category (zero-shot detectors hold one
instance per category) and calls ``detector.score`` under ``torch.inference_mode``. Rows that failed
earlier pass through untouched. A detector error fails only its group's rows (``status="error"``).

A run with several detectors has one actor pool for all of them: each actor holds every detector of the
run (``specs``), and a row's ``pass_index`` (set by the decode stage, which read and decoded the item
once for all of them) says which one scores it.

The low-resolution anomaly map leaves as raw float32 bytes plus its shape: maps are resized to the
item's original size, encoded and uploaded by the CPU stage that follows, so the accelerator never waits
on PNG encoding or object-storage latency, and variable shapes never meet Ray's tensor columns.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from adray import storage
from adray.detectors.thresholds import decision_of
from adray.pipeline.decode import unpack_arrays
from adray.pipeline.detector_set import DetectorSet
from adray.pipeline.spec import DetectorSpec


class ScoringActor:
    """Ray Data UDF: preprocessed rows in, scores and low-resolution maps out (pyarrow batches)."""

    def __init__(
        self,
        spec: DetectorSpec | None = None,
        warm_category: str | None = None,
        torch_threads: int = 0,
        retain_memory: bool = True,
        secret_env: dict[str, str] | None = None,
        specs: Sequence[DetectorSpec] = (),
        warm_categories: Sequence[str | None] = (),
    ) -> None:
        """``spec`` (one detector) or ``specs`` (a run's detectors, by ``pass_index``; ``warm_categories``
        one per spec). ``secret_env``: secret-named variables of ``--actor-env``
        (:func:`adray.job_env.split_secret_env`), set in ``os.environ`` before anything else, so before any
        storage client or detector is built; they come here rather than in the actor's ``runtime_env``,
        whose values Ray writes into its logs. Raises ``ValueError`` when neither is given."""
        if secret_env:
            os.environ.update(secret_env)
            storage._s3fs.cache_clear()  # a reused worker process may hold a client with other credentials
        import torch

        if retain_memory:  # no page-fault storm per batch; see adray.runtime
            from adray.runtime import retain_freed_memory

            retain_freed_memory()
        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        chosen = tuple(specs) or ((spec,) if spec is not None else ())
        if not chosen:
            raise ValueError("ScoringActor needs spec or specs")
        warm = tuple(warm_categories) or (warm_category,) * len(chosen)
        self.sets = [DetectorSet(s) for s in chosen]
        for detectors, category in zip(self.sets, warm):
            detectors.for_category(category)  # load the model now, once per actor
        self.detectors = self.sets[0]

    def __call__(self, batch: pa.Table) -> pa.Table:
        return score_batch(self.sets, batch)


def score_batch(detectors: DetectorSet | Sequence[DetectorSet], batch: pa.Table) -> pa.Table:
    """Score the ``status == "ok"`` rows of a decoded batch; see the module docstring. With several
    detector sets, a row's ``pass_index`` column picks its set (no column: the first)."""
    import torch

    sets = [detectors] if isinstance(detectors, DetectorSet) else list(detectors)
    n = batch.num_rows
    passes = batch.column("pass_index").to_pylist() if "pass_index" in batch.column_names else [0] * n
    status = batch.column("status").to_pylist()
    error = batch.column("error").to_pylist()
    categories = batch.column("category").to_pylist()
    pre = batch.column("pre").to_pylist()
    image_score: list[float | None] = [None] * n
    threshold: list[float | None] = [None] * n
    pixel_threshold: list[float | None] = [None] * n
    threshold_source: list[str | None] = [None] * n
    latency: list[float | None] = [None] * n
    map_bytes: list[bytes | None] = [None] * n
    map_h = [0] * n
    map_w = [0] * n

    for (k, category), rows in _ok_groups(status, passes, categories).items():
        try:
            detector = sets[k].for_category(category)
            inputs = _stack([unpack_arrays(pre[i]) for i in rows])
            t0 = time.perf_counter()
            with torch.inference_mode():
                scores, maps = detector.score(inputs).numpy()
            per_item_ms = (time.perf_counter() - t0) * 1000.0 / len(rows)
            decision = decision_of(detector)  # image and pixel thresholds, and how they were set
        except Exception as e:  # one broken group must not lose the other rows of the batch
            for i in rows:
                status[i], error[i] = "error", f"detector failed: {type(e).__name__}: {e}"
            continue
        for j, i in enumerate(rows):
            m = np.ascontiguousarray(maps[j], dtype=np.float32)
            if not np.isfinite(scores[j]) or not np.isfinite(m).all():
                status[i], error[i] = "error", "detector returned a non-finite score or map"
                continue
            image_score[i] = float(scores[j])
            threshold[i], pixel_threshold[i] = decision.threshold, decision.pixel_threshold
            threshold_source[i] = decision.source
            latency[i] = per_item_ms
            map_bytes[i] = m.tobytes()
            map_h[i], map_w[i] = m.shape
    columns = (
        ("status", status, pa.string()),
        ("error", error, pa.string()),
        ("image_score", image_score, pa.float32()),
        ("threshold", threshold, pa.float32()),
        ("pixel_threshold", pixel_threshold, pa.float32()),
        ("threshold_source", threshold_source, pa.string()),
        ("latency_ms", latency, pa.float32()),
        ("map", map_bytes, pa.binary()),
        ("map_h", map_h, pa.int32()),
        ("map_w", map_w, pa.int32()),
    )
    return _append_columns(batch.drop_columns(["pre", "status", "error"]), columns)


def _ok_groups(
    status: list[str], passes: list[int], categories: list[str]
) -> dict[tuple[int, str], list[int]]:
    """Row indices of the ``ok`` rows per ``(pass_index, category)``, in row order: one score call each."""
    groups: dict[tuple[int, str], list[int]] = {}
    for i, (s, k, category) in enumerate(zip(status, passes, categories)):
        if s == "ok":
            groups.setdefault((k, category), []).append(i)
    return groups


def _append_columns(table: pa.Table, columns: Sequence[tuple[str, list[Any], pa.DataType]]) -> pa.Table:
    """``table`` with each ``(name, values, arrow type)`` appended as a column, in order."""
    for name, values, typ in columns:
        table = table.append_column(name, pa.array(values, typ))
    return table


def _stack(samples: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    import torch

    return {key: torch.from_numpy(np.stack([s[key] for s in samples])) for key in samples[0]}
