"""What is left to score: the re-inspection delta and the resume set of a run.

- :func:`delta` keeps the candidate ``(item, detector version)`` pairs that committed results have not
  yet scored with the same content token: a DuckDB anti-join on ``(item_id, detector_version,
  content_token)``. New items, changed items (new content token) and new detector versions stay; rows
  whose status says nothing about the item are retried (:data:`RETRY_STATUSES`: ``error``, a detector or
  memory failure; ``read_error``, the object could not be read at the time; ``not_allowed``, outside the
  run's ``--allow-prefix``).
- :func:`rows_already_written` reads the rows a run with the same run id already wrote (a re-run or an
  interrupted run), so that only the rest is scored: this is what makes ``--run-id`` idempotent.
  Unreadable files of that run (a write cut off mid-file) are deleted first; they were never committed.
  A run keeps the :class:`~adray.pipeline.results_store.RunRows` it read (:func:`read_run_rows`), so its
  row check before the commit reads only the files written since.
"""

from __future__ import annotations

import logging

import pyarrow as pa

from adray.pipeline.query import connect
from adray.pipeline.results_store import RUN_FILE_SEPARATOR, ResultsStore, RunRows

log = logging.getLogger(__name__)

#: Statuses that do not count as "scored" for re-inspection: the next run tries again.
RETRY_STATUSES = ("error", "read_error", "not_allowed")


def delta(candidates: pa.Table, output: str, *, exclude_run: str | None = None) -> pa.Table:
    """``candidates`` (with ``item_id, detector_version, content_token``) minus what committed runs scored.

    ``exclude_run`` leaves one run's own rows out of the comparison, so that re-running a committed
    re-inspection under its run id selects the same delta again (and its rows are then found as written).
    """
    if candidates.num_rows == 0:
        return candidates
    con = connect(output, exclude_run=exclude_run)  # that run's files are not even read
    con.register("_candidates", candidates)
    retry = ", ".join(f"'{s}'" for s in RETRY_STATUSES)
    kept = con.sql(
        "SELECT c.* FROM _candidates c ANTI JOIN ("
        "  SELECT DISTINCT item_id, detector_version, content_token FROM results"
        f"  WHERE status NOT IN ({retry}) AND run_id IS DISTINCT FROM $exclude"
        ") r ON c.item_id = r.item_id AND c.detector_version = r.detector_version"
        " AND c.content_token IS NOT DISTINCT FROM r.content_token",
        params={"exclude": exclude_run},
    ).to_arrow_table()
    con.close()
    return kept.cast(candidates.schema) if kept.num_rows else candidates.slice(0, 0)


def read_run_rows(output: str, run_id: str) -> RunRows:
    """The rows run ``run_id`` already wrote under ``output`` (unreadable files of it deleted)."""
    rows = RunRows(ResultsStore(output), run_id)
    rows.refresh(remove_unreadable=True)
    return rows


def rows_already_written(output: str, run_id: str) -> tuple[pa.Table, list[str]]:
    """``(item_id, detector_version)`` of rows run ``run_id`` already wrote, and the partial files removed."""
    rows = read_run_rows(output, run_id)
    return rows.keys(), rows.removed


def result_file_prefix(run_id: str) -> str:
    return f"{run_id}{RUN_FILE_SEPARATOR}"
