"""schemas/*.json as pyarrow schemas; table and document validation with readable errors."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from adray import schemas
from adray.schemas import SchemaError, conform_table, load_schema, validate_record, validate_table

RESULT_COLUMNS = [
    "run_id", "item_id", "uri", "pc_uri", "category", "detector", "detector_version", "image_score",
    "threshold", "is_anomalous", "mask_uri", "map_min", "map_max", "status", "error", "label",
    "defect_type", "content_token", "scored_at", "latency_ms", "date", "note", "threshold_source",
    "pixel_threshold", "regions", "region_count", "strategy",
]  # fmt: skip


@pytest.mark.parametrize("name", schemas.SCHEMA_NAMES)
def test_every_schema_file_is_versioned_and_documented(name):
    doc = schemas.schema_doc(name)
    assert doc["name"] == name and doc["version"] == 1
    entries = doc.get("columns") or doc.get("fields")
    assert entries, name
    for e in entries:
        assert set(e) >= {"name", "type", "nullable", "description"}, e
        assert len(e["description"]) > 10, e["name"]
    schema = load_schema(name)
    assert schema.metadata[b"adray.schema"] == name.encode()
    assert schema.field(entries[0]["name"]).metadata[b"description"]


def test_results_schema_has_the_contract_columns_and_types():
    s = load_schema("results")
    assert s.names == RESULT_COLUMNS
    assert s.field("image_score").type == pa.float32()
    assert s.field("is_anomalous").type == pa.bool_()
    assert s.field("label").type == pa.int8()
    assert s.field("scored_at").type == pa.timestamp("us", tz="UTC")
    assert not s.field("run_id").nullable and s.field("image_score").nullable


def test_manifest_schema_columns():
    assert load_schema("manifest").names == [
        "item_id", "uri", "pc_uri", "category", "split", "label", "defect_type", "gt_mask_uri", "content_token",
        "skip_status", "skip_reason",
    ]  # fmt: skip


def test_unknown_schema_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="manifest, results, run_record, artifact"):
        load_schema("nope")


def _manifest_rows(**overrides):
    base = {
        "item_id": ["a", "b"],
        "uri": ["s3://b/x.png", "s3://b/y.png"],
        "category": ["bottle", "bottle"],
        "split": ["test", "test"],
    }
    base.update(overrides)
    return pa.table(base)


def test_conform_casts_reorders_and_fills_nullable_columns():
    t = _manifest_rows(label=pa.array([0, 1], pa.int64()))
    t = t.select(["label", "uri", "split", "category", "item_id"])
    out = conform_table(t, "manifest")
    assert out.schema.names == load_schema("manifest").names
    assert out.column("label").type == pa.int8()
    assert out.column("pc_uri").null_count == 2
    validate_table(out, "manifest")


def test_conform_keeps_or_drops_extra_columns():
    t = _manifest_rows(line=["l1", "l2"])
    assert conform_table(t, "manifest").column_names[-1] == "line"
    assert "line" not in conform_table(t, "manifest", drop_extra=True).column_names


def test_conform_names_the_missing_required_column_and_the_required_set():
    t = _manifest_rows().drop_columns(["category"])
    with pytest.raises(SchemaError) as e:
        conform_table(t, "manifest")
    msg = str(e.value)
    assert "missing required column 'category'" in msg
    assert "required columns: item_id, uri, category, split" in msg


def test_conform_reports_impossible_casts():
    t = _manifest_rows(label=["zero", "one"])
    with pytest.raises(SchemaError, match="'label' of type string cannot be cast to int8"):
        conform_table(t, "manifest")


def test_conform_casts_iso_strings_to_utc_timestamps():
    now = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    t = pa.table({"scored_at": ["2024-05-01T12:00:00Z"]})
    cast = t.column("scored_at").cast(load_schema("results").field("scored_at").type)
    assert cast[0].as_py() == now


def test_validate_table_lists_every_problem_at_once():
    t = pa.table(
        {
            "item_id": ["a", None],
            "uri": ["x", "y"],
            "category": ["c", "c"],
            "label": pa.array([0, 1], pa.int64()),
        }
    )
    with pytest.raises(SchemaError) as e:
        validate_table(t, "manifest")
    msg = str(e.value)
    assert "missing columns: pc_uri, split, defect_type, gt_mask_uri, content_token" in msg
    assert "'label' has type int64, expected int8" in msg
    assert "'item_id' has 1 null value(s) but is not nullable" in msg
    assert len(e.value.problems) == 3


def test_conform_rejects_nulls_in_non_nullable_columns():
    with pytest.raises(SchemaError, match="'split' has 1 null"):
        conform_table(_manifest_rows(split=["test", None]), "manifest")


def test_results_table_round_trip():
    now = datetime.now(timezone.utc)
    row = {
        "run_id": "r1",
        "item_id": "i1",
        "uri": "s3://b/x.png",
        "category": "bottle",
        "detector": "winclip",
        "detector_version": "abc",
        "image_score": 0.5,
        "status": "ok",
        "scored_at": now,
        "date": now.strftime("%Y-%m-%d"),
    }
    out = conform_table(pa.Table.from_pylist([row]), "results")
    assert out.column("image_score").type == pa.float32()
    assert out.column("is_anomalous").null_count == 1
    validate_table(out, "results")


def _run_record():
    return {
        "run_id": "2024-05-01T12-00-00-abc",
        "started_at": "2024-05-01T12:00:00+00:00",
        "finished_at": "2024-05-01T12:05:00Z",
        "status": "committed",
        "input": "s3://b/manifests/delta.parquet",
        "output": "s3://b/results",
        "detectors": [{"name": "winclip", "version": "abc"}],
        "counts": {"in": 10, "out": 10, "ok": 9, "error": 1, "anomalous": 3, "not_applicable": 0},
        "timings": {"total_s": 12.5},
        "config": {"batch_size": 8},
        "adray_version": "0.1.0",
    }


def test_valid_run_record_passes_and_unknown_keys_are_allowed():
    doc = _run_record()
    doc["extra"] = {"anything": 1}
    validate_record(doc, "run_record")


def test_run_record_problems_are_listed_by_path():
    doc = _run_record()
    del doc["output"]
    doc["status"] = "running"
    doc["started_at"] = "2024-05-01 12:00"  # no time zone
    doc["counts"]["ok"] = "9"
    doc["detectors"][0].pop("version")
    with pytest.raises(SchemaError) as e:
        validate_record(doc, "run_record")
    msg = str(e.value)
    assert "output: missing (required)" in msg
    assert "status: 'running' is not one of ['committed']" in msg
    assert "started_at: expected an ISO 8601 timestamp with time zone" in msg
    assert "counts.ok: expected int64, got str" in msg
    assert "detectors[0].version: missing (required)" in msg


def test_artifact_config_written_by_save_artifact_validates(tmp_path):
    import torch

    from adray.detectors.base import save_artifact

    save_artifact(
        str(tmp_path / "art"),
        detector="winclip",
        version="v123",
        config={"backbone": "ViT-B-16-plus-240"},
        tensors={"w": torch.zeros(2)},
        metadata={"fitted_at": "now"},
    )
    doc = json.loads((tmp_path / "art" / "config.json").read_text())
    validate_record(doc, "artifact")
    doc["files"] = {"weights.safetensors": 5}
    doc["schema"] = "other"
    with pytest.raises(SchemaError, match="files: expected map<string, string>"):
        validate_record(doc, "artifact")


def test_record_must_be_an_object():
    with pytest.raises(SchemaError, match="expected a JSON object"):
        validate_record([], "artifact")


def test_readme_duckdb_queries_run_on_committed_results(tmp_path, monkeypatch):
    import duckdb
    import pyarrow.parquet as pq

    t0 = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    rows = []
    for run, hour in (("r1", 12), ("r2", 13), ("r3", 14)):  # r3 never commits
        for i, (status, score) in enumerate([("ok", 0.9), ("corrupt", None), ("ok", 0.1)]):
            rows.append(
                {
                    "run_id": run, "item_id": f"i{i}", "uri": f"/u{i}", "category": "bottle",
                    "detector": "winclip", "detector_version": "abc123", "image_score": score,
                    "threshold": 0.5, "is_anomalous": None if score is None else score >= 0.5,
                    "status": status, "error": None if status == "ok" else "broken",
                    "content_token": f"s:{i}", "scored_at": t0.replace(hour=hour), "date": "2024-05-01",
                }
            )  # fmt: skip
    table = conform_table(pa.Table.from_pylist(rows), "results")
    part = tmp_path / "out/results/date=2024-05-01"
    part.mkdir(parents=True)
    pq.write_table(table.drop_columns(["date"]), part / "part-0.parquet")
    (tmp_path / "out/runs").mkdir()
    for run in ("r1", "r2"):
        (tmp_path / f"out/runs/{run}.json").write_text(json.dumps({"run_id": run, "status": "committed"}))
    manifest = {"item_id": ["i0", "i1", "i2", "i9"], "content_token": ["s:0", "s:1", "s:new", "s:9"]}
    pq.write_table(pa.table(manifest), tmp_path / "manifest.parquet")

    readme = (schemas.schemas_dir() / "README.md").read_text()
    sql = readme.split("\n## Querying with DuckDB\n", 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    statements = [s.strip() for s in sql.split(";") if s.strip()]
    monkeypatch.chdir(tmp_path)
    con = duckdb.connect()
    for view in statements[:3]:
        assert "CREATE VIEW" in view
        con.execute(view)
    latest = con.sql("SELECT run_id, item_id FROM latest ORDER BY item_id").fetchall()
    assert latest == [("r2", "i0"), ("r2", "i1"), ("r2", "i2")]  # newest committed run, r3 ignored
    rate, failures, delta = (con.sql(s).fetchall() for s in statements[3:])
    assert rate[0][2:] == (2, 0.5)
    assert failures == [("corrupt", 1, "broken")]
    assert sorted(r[0] for r in delta) == ["i2", "i9"]  # changed content + never scored
