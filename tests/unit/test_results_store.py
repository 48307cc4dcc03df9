"""The results store: paths, file names, listing a run's files, the run record, reading each file once."""

from __future__ import annotations

from datetime import datetime, timezone

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adray import storage
from adray.pipeline import lease, query, rows
from adray.pipeline.backlog import delta
from adray.pipeline.results_store import (
    ResultsStore,
    RunRows,
    build_run_record,
    parse_result_file,
    result_file_stem,
)


def _table(run_id: str, items: list[str], status: str = "ok") -> pa.Table:
    n = len(items)
    now = datetime(2026, 1, 2, 10, tzinfo=timezone.utc)
    return rows.results_table(
        {
            "run_id": [run_id] * n,
            "item_id": items,
            "uri": [f"s3://b/{i}.png" for i in items],
            "pc_uri": [None] * n,
            "category": ["bottle"] * n,
            "detector": ["grey"] * n,
            "detector_version": ["v1"] * n,
            "image_score": [0.5] * n,
            "threshold": [0.4] * n,
            "is_anomalous": [True] * n,
            "status": [status] * n,
            "error": [None] * n,
            "label": [None] * n,
            "defect_type": [None] * n,
            "content_token": ["t"] * n,
            "scored_at": [now] * n,
            "latency_ms": [1.0] * n,
            "date": ["2026-01-02"] * n,
        }
    )


def _write(store: ResultsStore, run_id: str, items: list[str], task: int, detector: str = "grey") -> str:
    folder = storage.join_url(store.results_url, f"detector={detector}", "date=2026-01-02")
    storage.makedirs(folder)
    url = storage.join_url(folder, result_file_stem(run_id, "abc123", task) + "-0.parquet")
    pq.write_table(_table(run_id, items).drop_columns(["detector", "date"]), url)
    return url


def _record(run_id: str) -> dict:
    now = datetime.now(timezone.utc)
    return build_run_record(
        run_id=run_id,
        started_at=now,
        finished_at=now,
        input_uri="s3://user:secret@b/manifest.parquet",
        output="out/results",
        detectors=[{"name": "grey", "version": "v1"}],
        counts={"in": 1, "out": 1, "ok": 1},
        timings={"total_s": 1.0},
        config={},
    )


def test_paths_and_names(tmp_path):
    root = str(tmp_path / "out")
    store = ResultsStore(root)
    assert store.results_url == storage.join_url(root, "results")
    assert store.masks_url == storage.join_url(root, "masks")
    assert store.run_record_url("r1") == storage.join_url(root, "runs", "r1.json")
    assert store.lease_url("r1") == storage.join_url(root, "leases", "r1.json")
    assert store.manifest_url("r1") == storage.join_url(root, "manifests", "r1.parquet")
    assert store.mask_url("v1", "bottle/test/x/000") == storage.join_url(
        root, "masks", "detector_version=v1", "bottle/test/x/000.png"
    )
    with pytest.raises(ValueError, match="escape"):
        store.mask_url("v1", "../x")
    # the old names forward to the store
    assert rows.run_record_url(root, "r1") == store.run_record_url("r1")
    assert lease.lease_url(root, "r1") == store.lease_url("r1")

    stem = result_file_stem("run-7", "u1", 3)
    assert stem == "run-7.u1_000003"
    f = parse_result_file(f"s3://b/out/results/detector=bgad/date=2026-01-02/{stem}-0.parquet")
    assert (f.run_id, f.detector) == ("run-7", "bgad")
    assert parse_result_file("s3://b/out/results/detector=bgad/date=2026-01-02/norun.parquet") is None
    assert parse_result_file("s3://b/out/results/detector=bgad/x.y.json") is None


def test_listing_and_committed_files(tmp_path):
    store = ResultsStore(str(tmp_path / "out"))
    assert store.result_files() == [] and store.run_records() == []
    a = _write(store, "ra", ["i1"], 0)
    b = _write(store, "rb", ["i2"], 0, detector="other")
    storage.write_text(storage.join_url(store.results_url, "detector=grey", "notes.txt"), "not a result")
    listed = {f.url: f for f in store.result_files()}
    assert set(listed) == {a, b}
    assert (listed[b].run_id, listed[b].detector) == ("rb", "other")
    assert [f.url for f in store.result_files("ra")] == [a]
    assert query.list_result_files(store.root) == [(f.url, f.run_id) for f in store.result_files()]

    assert store.committed_files() == []  # no run record: nothing committed
    store.write_run_record(_record("ra"))
    storage.write_text(store.run_record_url("torn"), '{"run_id": "torn", "sta')
    assert store.committed_files() == [a]
    assert store.committed_files(exclude_run="ra") == []
    con = store.duckdb()
    store.add_results_view(con, store.committed_files())
    assert con.sql("SELECT run_id, item_id, detector FROM results").fetchall() == [("ra", "i1", "grey")]


def test_run_record_round_trip(tmp_path):
    store = ResultsStore(str(tmp_path / "out"))
    assert store.read_run_record("r1") is None
    record = _record("r1")
    assert "secret" not in record["input"]
    url = store.write_run_record(record)
    assert url == store.run_record_url("r1")
    assert store.read_run_record("r1") == record
    assert rows.read_run_record(store.root, "r1") == record
    assert [r["run_id"] for r in store.run_records()] == ["r1"]


def test_run_rows_read_each_file_once(tmp_path, monkeypatch):
    store = ResultsStore(str(tmp_path / "out"))
    reads: list[str] = []
    real = ResultsStore.read_result_file

    def counted(self, url, columns=None):
        reads.append(url)
        return real(self, url, columns)

    monkeypatch.setattr(ResultsStore, "read_result_file", counted)
    first = _write(store, "r1", ["i1", "i2"], 0)
    _write(store, "other", ["i9"], 0)
    cut = storage.join_url(store.results_url, "detector=grey", "date=2026-01-02", "r1.dead_000009-0.parquet")
    storage.write_bytes(cut, b"PAR1 cut off")

    run = RunRows(store, "r1")
    with pytest.raises(pa.ArrowInvalid):
        run.refresh()  # an unreadable file is an error unless the caller removes it
    run.refresh(remove_unreadable=True)
    assert run.removed == [cut] and not storage.exists(cut)
    assert run.keys().to_pylist() == [
        {"item_id": "i1", "detector_version": "v1"},
        {"item_id": "i2", "detector_version": "v1"},
    ]
    second = _write(store, "r1", ["i3"], 1)
    reads.clear()
    run.refresh()
    assert reads == [second]  # the file read before is not read again
    table = run.table()
    assert sorted(table["item_id"].to_pylist()) == ["i1", "i2", "i3"]
    assert set(table["detector"].to_pylist()) == {"grey"}
    assert set(run.tables) == {first, second}
    assert RunRows(store, "none").table().num_rows == 0


def test_delta_never_reads_the_excluded_runs_files(tmp_path):
    # re-running a committed re-inspection under its run id: the delta leaves that run's own files unread
    store = ResultsStore(str(tmp_path / "out"))
    _write(store, "old", ["i1"], 0)
    store.write_run_record(_record("old"))
    own = _write(store, "again", ["i2"], 0)
    store.write_run_record(_record("again"))
    storage.write_bytes(own, b"PAR1 not parquet")  # any read of it would fail
    candidates = pa.table(
        {
            "item_id": ["i1", "i2"],
            "detector_version": ["v1", "v1"],
            "content_token": ["t", "t"],
        }
    )
    assert delta(candidates, store.root, exclude_run="again")["item_id"].to_pylist() == ["i2"]
    with pytest.raises(duckdb.Error):
        delta(candidates, store.root)
