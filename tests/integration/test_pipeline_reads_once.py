"""A run reads each of its result files once: the resume set and the row check share the reads (local Ray)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from adray import catalog, storage
from adray.pipeline import ScoreConfig, score_archive
from adray.pipeline.results_store import ResultsStore

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.integration import test_pipeline_support as sup  # noqa: E402

pytestmark = pytest.mark.integration


def _name(source) -> str:
    """A read source's file name (result file names are unique: run id, write uuid, task index)."""
    path = str(getattr(source, "path", None) or getattr(source, "name", None) or source)
    return ("results:" if "/results/" in path else "") + path.rsplit("/", 1)[-1]


def _names(store: ResultsStore) -> set[str]:
    return {"results:" + f.url.rsplit("/", 1)[-1] for f in store.result_files("once-1")}


def test_a_resumed_run_reads_each_result_file_once(tmp_path, ray_session, monkeypatch):
    archive, out = str(tmp_path / "archive"), str(tmp_path / "out")
    manifest = storage.join_url(archive, "manifest.parquet")
    catalog.write_manifest(sup.manifest_from_rows(sup.write_good_items(archive, 8)), manifest)
    cfg = dict(input=manifest, output=out, detectors=["greymad"], plugins=[sup.PLUGIN], run_id="once-1")
    store = ResultsStore(out)

    # every Parquet read on the driver, by file: the store's reader and any direct pyarrow read
    reads: Counter[str] = Counter()
    real = pq.read_table

    def counted(source, *args, **kwargs):
        reads[_name(source)] += 1
        return real(source, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", counted)

    score_archive(ScoreConfig(**cfg, limit=5))
    first = _names(store)
    assert first and {k for k in reads if k.startswith("results:")} == first
    assert all(reads[k] == 1 for k in first)

    storage.remove(store.run_record_url("once-1"))  # the first attempt "crashed" before its commit
    reads.clear()
    summary = score_archive(ScoreConfig(**cfg))
    assert summary.rows_in == summary.rows_out == 8
    assert summary.detectors[0].resumed == 5 and summary.detectors[0].scored_now == 3
    files = _names(store)
    assert files > first
    results_reads = {k: n for k, n in reads.items() if k.startswith("results:")}
    assert results_reads == {k: 1 for k in files}  # old files once (resume set), new ones once (check)
    assert store.read_run_record("once-1")["counts"]["out"] == 8
