"""An interrupted run resumes under its run id without duplicates (local storage, local Ray cluster)."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from adray import catalog, storage
from adray.cli import run_command
from adray.pipeline import ScoreConfig, score_archive
from adray.pipeline.rows import run_record_url

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.integration import test_pipeline_support as sup  # noqa: E402

pytestmark = pytest.mark.integration


def test_interrupted_run_resumes_without_duplicates(tmp_path, ray_session, capsys):
    archive, out = str(tmp_path / "archive"), str(tmp_path / "out")
    rows = sup.write_good_items(archive, 10) + sup.bad_items(archive)[:3]
    manifest = storage.join_url(archive, "manifest.parquet")
    catalog.write_manifest(sup.manifest_from_rows(rows), manifest)
    cfg = dict(input=manifest, output=out, detectors=["greymad"], plugins=[sup.PLUGIN], run_id="resume-1")

    # "crash": the first 6 items were written, the record never was, and one file was cut off mid-write
    score_archive(ScoreConfig(**cfg, limit=6))
    storage.remove(run_record_url(out, "resume-1"))
    folder = next(p for p in (tmp_path / "out" / "results" / "detector=greymad").iterdir())
    cut = folder / "resume-1.deadbeef_000009-0.parquet"
    cut.write_bytes(b"PAR1 cut off")

    code = run_command(
        "score",
        [
            "--input",
            manifest,
            "--output",
            out,
            "--detector",
            "greymad",
            "--plugin",
            sup.PLUGIN,
            "--run-id",
            "resume-1",
        ],
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "rows in 13 = rows out 13: OK" in printed
    table = pads.dataset(str(tmp_path / "out" / "results"), format="parquet", partitioning="hive").to_table()
    ids = table["item_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 13
    assert not cut.exists()
    record = storage.read_text(run_record_url(out, "resume-1"))
    assert '"resumed": 6' in record and '"scored_now": 7' in record
