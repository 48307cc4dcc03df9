"""A run over good items plus point clouds that once failed a run (object-array NPZ) or exhausted memory
(a PLY header declaring 10^9 vertices): every item gets its row, the good ones are scored, the run commits.

Before issue 13 the NPZ raised outside the decoder's error handling: Ray retried the decode task, the run
failed, and the good items got no rows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from adray import catalog, schemas, storage
from adray.pipeline import ScoreConfig, score_archive

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.integration import test_pipeline_support as sup  # noqa: E402
from tests.unit.test_decode_faults import write_bad_pointcloud_items  # noqa: E402

pytestmark = pytest.mark.integration


def test_bad_point_clouds_get_rows_and_the_run_commits(tmp_path, ray_session):
    root = str(tmp_path / "archive")
    good = sup.write_good_items(root, 4, with_pc=True)
    bad = write_bad_pointcloud_items(root)
    manifest = storage.join_url(root, "manifest.parquet")
    catalog.write_manifest(sup.manifest_from_rows(good + bad), manifest)
    out = str(tmp_path / "out")
    config = ScoreConfig(
        input=manifest,
        output=out,
        detectors=["greyxyz"],
        weights="random",
        plugins=[sup.PLUGIN],
        batch_size=4,
        decode_batch_size=4,
        run_id="bad-pc-1",
    )
    summary = score_archive(config)

    fs, path = storage.pyarrow_filesystem(storage.join_url(out, "results"))
    hive = pads.partitioning(pa.schema([("detector", pa.string()), ("date", pa.string())]), flavor="hive")
    rows = pads.dataset(path, filesystem=fs, format="parquet", partitioning=hive).to_table()
    rows = rows.select(schemas.load_schema("results").names).to_pylist()
    expected = sup.expected_status(good + bad)
    assert {r["item_id"]: r["status"] for r in rows} == expected
    assert len(rows) == len(expected)  # one row per item, no duplicates from retried tasks
    for r in rows:
        assert (r["status"] == "ok") == (r["image_score"] is not None)
        assert r["status"] == "ok" or r["error"]
    record = json.loads(storage.read_text(storage.join_url(out, "runs", "bad-pc-1.json")))
    assert record["status"] == "committed"
    assert record["counts"]["ok"] == sum(v == "ok" for v in expected.values())
    assert summary.rows_out == len(expected)
