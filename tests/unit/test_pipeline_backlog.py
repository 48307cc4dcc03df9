"""Delta selection, resume bookkeeping and the DuckDB views over fixture results (no Ray)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from adray import storage
from adray.pipeline.backlog import delta, rows_already_written
from adray.pipeline.query import connect
from adray.pipeline.rows import build_run_record, results_table, write_run_record


def _rows(run_id: str, items: list[tuple[str, str, str, str]], when: str = "2026-01-02") -> pa.Table:
    """Result rows for ``(item_id, version, token, status)`` tuples."""
    n = len(items)
    t = datetime.fromisoformat(f"{when}T10:00:00+00:00")
    return results_table(
        {
            "run_id": [run_id] * n,
            "item_id": [i[0] for i in items],
            "uri": [f"s3://b/{i[0]}.png" for i in items],
            "pc_uri": [None] * n,
            "category": ["bottle"] * n,
            "detector": ["winclip"] * n,
            "detector_version": [i[1] for i in items],
            "image_score": [0.5 if i[3] == "ok" else None for i in items],
            "threshold": [None] * n,
            "is_anomalous": [None] * n,
            "mask_uri": [None] * n,
            "map_min": [None] * n,
            "map_max": [None] * n,
            "status": [i[3] for i in items],
            "error": [None if i[3] == "ok" else "boom" for i in items],
            "label": [None] * n,
            "defect_type": [None] * n,
            "content_token": [i[2] for i in items],
            "scored_at": [t] * n,
            "latency_ms": [1.0] * n,
            "date": [when] * n,
        }
    )


def _write(root: str, run_id: str, table: pa.Table, commit: bool = True, name: str = "abc_000000-0") -> None:
    folder = storage.join_url(root, "results", "detector=winclip", f"date={table['date'][0].as_py()}")
    storage.makedirs(folder)
    pq.write_table(
        table.drop_columns(["detector", "date"]), storage.join_url(folder, f"{run_id}.{name}.parquet")
    )
    if commit:
        now = datetime.now(timezone.utc)
        write_run_record(
            root,
            build_run_record(
                run_id=run_id,
                started_at=now,
                finished_at=now,
                input_uri="m.parquet",
                output=root,
                detectors=[{"name": "winclip", "version": "v1"}],
                counts={"in": table.num_rows, "out": table.num_rows},
                timings={"total_s": 1.0},
                config={},
            ),
        )


def _candidates(items: list[tuple[str, str, str]]) -> pa.Table:
    return pa.table(
        {
            "item_id": [i[0] for i in items],
            "detector_version": [i[1] for i in items],
            "content_token": [i[2] for i in items],
        }
    )


def test_delta_keeps_new_changed_new_version_and_retryable_errors(tmp_path):
    root = str(tmp_path)
    _write(
        root,
        "r1",
        _rows("r1", [("a", "v1", "t1", "ok"), ("b", "v1", "t1", "ok"), ("e", "v1", "t1", "error")]),
    )
    _write(root, "r2", _rows("r2", [("u", "v1", "t1", "ok")]), commit=False)  # never committed
    cands = _candidates(
        [
            ("a", "v1", "t1"),  # unchanged -> skipped
            ("b", "v1", "t2"),  # changed content
            ("a", "v2", "t1"),  # new detector version
            ("n", "v1", "t1"),  # new item
            ("e", "v1", "t1"),  # errored before -> retried
            ("u", "v1", "t1"),  # only in an uncommitted run -> still to do
        ]
    )
    kept = delta(cands, root)
    got = set(zip(kept["item_id"].to_pylist(), kept["detector_version"].to_pylist()))
    assert got == {("b", "v1"), ("a", "v2"), ("n", "v1"), ("e", "v1"), ("u", "v1")}
    # a run's own rows do not hide its delta when it is re-run under the same id
    again = delta(cands, root, exclude_run="r1")
    assert again.num_rows == cands.num_rows


def test_views_read_only_committed_runs_and_latest_per_item(tmp_path):
    root = str(tmp_path)
    _write(root, "r1", _rows("r1", [("a", "v1", "t1", "ok"), ("b", "v1", "t1", "ok")], when="2026-01-01"))
    _write(root, "r2", _rows("r2", [("a", "v2", "t1", "ok")], when="2026-01-02"))
    _write(root, "r3", _rows("r3", [("a", "v3", "t1", "ok")], when="2026-01-03"), commit=False)
    con = connect(root)
    assert con.execute("SELECT count(*) FROM results").fetchone()[0] == 3
    latest = dict(con.execute("SELECT item_id, run_id FROM latest_scores").fetchall())
    assert latest == {"a": "r2", "b": "r1"}
    assert {r[0] for r in con.execute("SELECT run_id FROM runs").fetchall()} == {"r1", "r2"}
    assert con.execute("SELECT typeof(date), typeof(scored_at) FROM results LIMIT 1").fetchone() == (
        "VARCHAR",
        "TIMESTAMP WITH TIME ZONE",
    )


def test_views_read_files_written_before_the_note_column_as_null_notes(tmp_path):
    root = str(tmp_path)
    _write(root, "old", _rows("old", [("a", "v1", "t1", "ok")]).drop_columns(["note"]), name="o_000000-0")
    con = connect(root)
    assert con.execute("SELECT item_id, note FROM results").fetchall() == [("a", None)]
    noted = _rows("new", [("b", "v1", "t1", "ok")])
    noted = noted.set_column(noted.schema.get_field_index("note"), "note", pa.array(["scaled from 12 bits"]))
    _write(root, "new", noted)
    con = connect(root)
    assert dict(con.execute("SELECT item_id, note FROM results").fetchall()) == {
        "a": None,
        "b": "scaled from 12 bits",
    }


def test_empty_root_has_typed_empty_views(tmp_path):
    con = connect(str(tmp_path / "nothing"))
    assert con.execute("SELECT count(*) FROM latest_scores").fetchone()[0] == 0
    assert dict(con.execute("DESCRIBE results").fetchall()[i][:2] for i in range(3))["item_id"] == "VARCHAR"


def test_resume_finds_the_runs_rows_and_drops_partial_files(tmp_path):
    root = str(tmp_path)
    _write(root, "r9", _rows("r9", [("a", "v1", "t1", "ok"), ("b", "v1", "t1", "corrupt")]), commit=False)
    cut = storage.join_url(root, "results", "detector=winclip", "date=2026-01-02", "r9.cut_000001-0.parquet")
    storage.write_bytes(cut, b"PAR1 truncated")
    other = storage.join_url(root, "results", "detector=winclip", "date=2026-01-02", "r10.x_000000-0.parquet")
    storage.write_bytes(other, b"not mine")
    done, removed = rows_already_written(root, "r9")
    assert sorted(done["item_id"].to_pylist()) == ["a", "b"]
    assert removed == [cut] and not storage.exists(cut) and storage.exists(other)
    assert json.loads(json.dumps(done.schema.names)) == ["item_id", "detector_version"]


def test_reference_picking_never_takes_a_skipped_file():
    """k-shot references come from readable train/good items only: a zero-byte or non-image file the catalog
    kept as a row (skip_status set) is never a WinCLIP+ reference."""
    import pyarrow as pa

    from adray.pipeline.runner import pick_references
    from adray.pipeline.spec import ScoreConfig
    from adray.schemas import load_schema

    names = [f"/data/bottle/train/good/{i:03d}.png" for i in range(6)]
    skip = ["empty", "unsupported", "refused", None, None, None]
    table = pa.Table.from_pylist(
        [
            {
                "item_id": f"{i:016x}",
                "uri": u,
                "category": "bottle",
                "split": "train",
                "label": 0,
                "defect_type": "good",
                "skip_status": s,
                "skip_reason": None if s is None else "test",
            }
            for i, (u, s) in enumerate(zip(names, skip))
        ],
        schema=load_schema("manifest"),
    )
    config = ScoreConfig(input="/data/m.parquet", output="/tmp/out", shots=6, seed=0)
    picked = pick_references(config, table)["bottle"]
    assert sorted(u for u, _ in picked) == names[3:]
