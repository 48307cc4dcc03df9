"""A manifest's ``pixel_size_mm`` column reaches the result stage: each item's regions get ``area_mm2`` at
its own pixel size, items without one take the run's ``--pixel-size-mm`` (stage functions, no Ray)."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa

from adray import schemas
from adray.pipeline.decode import decode_batch
from adray.pipeline.detector_set import DetectorSet
from adray.pipeline.rows import finalize_batch
from adray.pipeline.scoring import score_batch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.integration import test_pipeline_support as sup  # noqa: E402
from tests.unit.test_pipeline_stages import GREY, _batch  # noqa: E402


def _with_pixel_threshold(scored: pa.Table) -> pa.Table:
    pixel = scored.column("image_score").to_pylist()  # GreyMad's score is its map's mean: regions exist
    at = scored.schema.get_field_index("pixel_threshold")
    return scored.set_column(at, "pixel_threshold", pa.array(pixel, pa.float32()))


def test_manifest_pixel_size_wins_over_the_run_flag(tmp_path):
    rows = sup.write_good_items(str(tmp_path), 3)
    batch = _batch(rows, "v1", False)
    batch = batch.append_column("pixel_size_mm", pa.array([0.2, None, 0.05], pa.float64()))
    decoded = decode_batch(batch, spec=GREY, max_pixels=10**6, needs_xyz=False)
    assert decoded.column("pixel_size_mm").to_pylist() == [0.2, None, 0.05]
    scored = _with_pixel_threshold(score_batch(DetectorSet(GREY), decoded))
    out = finalize_batch(
        scored, run_id="r", detector="greymad", output=str(tmp_path / "o"), pixel_size_mm=0.1
    )
    schemas.validate_table(out, "results")
    for rec, size in zip(out.to_pylist(), (0.2, 0.1, 0.05)):
        assert rec["regions"], "GreyMad's map is above its mean somewhere"
        for region in rec["regions"]:
            assert region["area_mm2"] == region["area_px"] * size**2


def test_without_the_column_or_the_flag_areas_stay_in_pixels(tmp_path):
    rows = sup.write_good_items(str(tmp_path), 1)
    decoded = decode_batch(_batch(rows, "v1", False), spec=GREY, max_pixels=10**6, needs_xyz=False)
    assert "pixel_size_mm" not in decoded.column_names
    scored = _with_pixel_threshold(score_batch(DetectorSet(GREY), decoded))
    out = finalize_batch(scored, run_id="r", detector="greymad", output=str(tmp_path / "o"))
    (rec,) = out.to_pylist()
    assert rec["regions"] and all(r["area_mm2"] is None and r["area_px"] > 0 for r in rec["regions"])


def test_a_non_positive_manifest_pixel_size_is_an_item_error_naming_the_column(tmp_path):
    rows = sup.write_good_items(str(tmp_path), 4)
    batch = _batch(rows, "v1", False)
    batch = batch.append_column("pixel_size_mm", pa.array([0.0, -0.5, float("nan"), 0.1], pa.float64()))
    decoded = decode_batch(batch, spec=GREY, max_pixels=10**6, needs_xyz=False)
    scored = _with_pixel_threshold(score_batch(DetectorSet(GREY), decoded))
    out = finalize_batch(scored, run_id="r", detector="greymad", output=str(tmp_path / "o"))
    recs = out.to_pylist()
    assert [r["status"] for r in recs] == ["error", "error", "error", "ok"]
    for rec, given in zip(recs[:3], ("0.0", "-0.5", "nan")):
        assert "pixel_size_mm must be a positive number, got " + given in rec["error"]
        assert "mask write failed" not in rec["error"] and rec["regions"] is None
    assert recs[3]["regions"] and recs[3]["regions"][0]["area_mm2"] is not None
