"""Decisions and defect regions through the pipeline's stage functions (no Ray), and the summary's n/a."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from adray import schemas, storage
from adray.io.masks import decode_map_png16
from adray.pipeline.decode import decode_batch
from adray.pipeline.detector_set import DetectorSet
from adray.pipeline.rows import finalize_batch
from adray.pipeline.scoring import score_batch
from adray.pipeline.summary import DetectorCounts, anomalous_cell
from adray.regions import find_regions

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.integration import test_pipeline_support as sup  # noqa: E402
from tests.unit.test_pipeline_stages import GREY, _batch  # noqa: E402


def _scored(tmp_path):
    rows = sup.write_good_items(str(tmp_path), 2) + sup.bad_items(str(tmp_path))[:1]
    decoded = decode_batch(_batch(rows, "v1", False), spec=GREY, max_pixels=10**6, needs_xyz=False)
    return score_batch(DetectorSet(GREY), decoded)


def test_a_detector_without_a_decision_is_legacy_and_gets_no_regions(tmp_path):
    out = finalize_batch(_scored(tmp_path), run_id="r", detector="greymad", output=str(tmp_path / "o"))
    schemas.validate_table(out, "results")
    rec = out.to_pylist()
    assert [r["threshold_source"] for r in rec] == ["legacy", "legacy", None]  # GreyMad: threshold only
    assert all(
        r["regions"] is None and r["region_count"] is None and r["pixel_threshold"] is None for r in rec
    )


def test_regions_are_found_on_the_image_sized_map_with_the_pixel_threshold(tmp_path):
    scored = _scored(tmp_path)
    pixel = scored.column("image_score").to_pylist()  # each map's mean: about half its pixels above
    scored = scored.set_column(
        scored.schema.get_field_index("pixel_threshold"), "pixel_threshold", pa.array(pixel, pa.float32())
    )
    out = finalize_batch(
        scored, run_id="r", detector="greymad", output=str(tmp_path / "o"), pixel_size_mm=0.1
    )
    schemas.validate_table(out, "results")
    assert out.schema.field("regions").type == schemas.load_schema("results").field("regions").type
    for r in out.to_pylist()[:2]:
        amap = decode_map_png16(storage.read_bytes(r["mask_uri"]), r["map_min"], r["map_max"])
        expected, count = find_regions(amap, r["pixel_threshold"], pixel_size_mm=0.1)
        assert r["region_count"] == count and len(r["regions"]) == len(expected) > 0
        for got, want in zip(r["regions"], expected):  # the PNG's 16-bit quantisation moves values a little
            assert all(0 <= got[k] <= amap.shape[1] for k in ("x0", "x1"))
            assert all(0 <= got[k] <= amap.shape[0] for k in ("y0", "y1"))
            assert got["area_mm2"] == np.float64(got["area_px"]) * 0.1**2
            assert abs(got["area_px"] - want["area_px"]) <= max(2, want["area_px"] // 20)
            assert got["peak"] >= r["pixel_threshold"] and got["mean"] <= got["peak"]
    assert out.to_pylist()[2]["regions"] is None


def test_summary_says_na_where_no_decision_is_known():
    c = DetectorCounts(name="x", versions=["v"], ok=5, anomalous=0, undecided=5)
    assert anomalous_cell(c) == "n/a"
    c.undecided, c.anomalous = 2, 1
    assert anomalous_cell(c) == "1 (+2 n/a)"
    c.undecided = 0
    assert anomalous_cell(c) == "1"


def test_schemas_readme_region_queries_run_on_a_results_root(tmp_path):
    """The SQL block of schemas/README.md's "Defect regions" section, on rows the finalize stage wrote."""
    from datetime import datetime, timezone

    import pyarrow.parquet as pq

    from adray.pipeline.query import connect
    from adray.pipeline.rows import build_run_record, write_run_record

    scored = _scored(tmp_path)
    pixel = scored.column("image_score").to_pylist()
    scored = scored.set_column(
        scored.schema.get_field_index("pixel_threshold"), "pixel_threshold", pa.array(pixel, pa.float32())
    )
    root = str(tmp_path / "root")
    out = finalize_batch(scored, run_id="r1", detector="greymad", output=root)
    date = out.column("date")[0].as_py()
    folder = Path(root) / "results" / "detector=greymad" / f"date={date}"
    folder.mkdir(parents=True)
    pq.write_table(out.drop_columns(["detector", "date"]), folder / "r1.x_000000.parquet")
    now = datetime.now(timezone.utc)
    record = build_run_record(
        run_id="r1", started_at=now, finished_at=now, input_uri=root, output=root,
        detectors=[{"name": "greymad", "version": "v1"}], counts={"in": 3, "out": 3}, timings={}, config={},
    )  # fmt: skip
    write_run_record(root, record)
    text = (Path(__file__).resolve().parents[2] / "schemas" / "README.md").read_text()
    block = text.split("\n### Defect regions\n", 1)[1].split("```sql\n", 1)[1].split("```", 1)[0]
    statements = [s.strip() for s in block.split(";") if s.strip()]
    assert len(statements) == 3
    con = connect(root)
    by_class, many, largest = (con.execute(s).fetchall() for s in statements)
    n_regions = sum(r["region_count"] for r in out.to_pylist() if r["region_count"])
    assert sum(row[3] for row in by_class) == n_regions > 0
    assert {row[0] for row in many} == {r["item_id"] for r in out.to_pylist() if (r["region_count"] or 0) > 3}
    biggest = max(g["area_px"] for r in out.to_pylist() if r["regions"] for g in r["regions"])
    assert largest and largest[0][8] == biggest
