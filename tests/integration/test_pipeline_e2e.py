"""End to end on a moto S3 server with the local Ray cluster: tiny WinCLIP (random weights) over a synthetic
MVTec-layout archive plus one item of every bad kind, and an rgb+xyz test detector for the point clouds."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from adray import catalog, schemas, storage, synthetic
from adray.io.masks import decode_map_png16, resize_map
from adray.pipeline import ScoreConfig, reinspect, score_archive
from adray.pipeline.query import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.integration import test_pipeline_support as sup  # noqa: E402

pytestmark = pytest.mark.integration
TINY = {"model_name": "adray-tiny-clip"}


def _bucket(endpoint: str) -> str:
    import boto3

    name = f"adray-pipe-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


def _config(archive: str, out: str, **kw) -> ScoreConfig:
    base = dict(
        input=storage.join_url(archive, "manifest.parquet"),
        output=out,
        detectors=["winclip", "greyxyz"],
        weights="random",
        detector_options=TINY,
        plugins=[sup.PLUGIN],
        max_pixels=100 * 100,
        batch_size=8,
        run_id="e2e-1",
    )
    base.update(kw)
    return ScoreConfig(**base)


def _write_manifest(archive: str, extra_rows: list[dict]) -> None:
    manifest, _ = catalog.build_manifest(storage.join_url(archive, "mvtec"), "mvtec")
    extra = sup.manifest_from_rows(extra_rows).select(manifest.column_names).cast(manifest.schema)
    catalog.write_manifest(pa.concat_tables([manifest, extra]), storage.join_url(archive, "manifest.parquet"))


@pytest.fixture(scope="module")
def archive(s3_server):
    root = _bucket(s3_server)
    synthetic.generate_mvtec_ad(
        storage.join_url(root, "mvtec"),
        categories=("bottle",),
        image_size=32,
        n_train=2,
        n_test_good=2,
        n_test_per_defect=1,
        defects=("scratch", "hole"),
    )
    bad = sup.bad_items(root)
    _write_manifest(root, bad)
    return {"root": root, "bad": bad}


@pytest.fixture(scope="module")
def first_run(archive, ray_session):
    out = storage.join_url(archive["root"], "out")
    summary = score_archive(_config(archive["root"], out))
    return {"out": out, "summary": summary}


def _rows(out: str):
    fs, path = storage.pyarrow_filesystem(storage.join_url(out, "results"))
    hive = pads.partitioning(pa.schema([("detector", pa.string()), ("date", pa.string())]), flavor="hive")
    table = pads.dataset(path, filesystem=fs, format="parquet", partitioning=hive).to_table()
    return table.select(schemas.load_schema("results").names)


def test_every_item_gets_one_row_per_applicable_detector_with_its_status(archive, first_run):
    s = first_run["summary"]
    print(s.format_table())
    rows = _rows(first_run["out"])
    schemas.validate_table(rows, "results")  # types as stored, no casts
    n_items = s.items
    win = rows.filter(pads.field("detector") == "winclip").to_pylist()
    xyz = rows.filter(pads.field("detector") == "greyxyz").to_pylist()
    assert len(win) == n_items and len({r["item_id"] for r in win}) == n_items
    n_pc = sum(1 for r in archive["bad"] if r["pc_uri"])
    assert len(xyz) == n_pc and s.detectors[1].not_applicable == n_items - n_pc
    assert s.rows_in == s.rows_out == n_items + n_pc

    expected = sup.expected_status([r for r in archive["bad"] if not r["pc_uri"]])
    got = {r["item_id"]: r["status"] for r in win}
    assert {k: got[k] for k in expected} == expected
    assert sum(r["status"] == "ok" for r in win) == n_items - sum(v != "ok" for v in expected.values())
    expected_xyz = sup.expected_status([r for r in archive["bad"] if r["pc_uri"]])
    assert {r["item_id"]: r["status"] for r in xyz} == expected_xyz
    for r in win + xyz:
        assert (r["status"] == "ok") == (r["image_score"] is not None) == (r["mask_uri"] is not None)
        assert r["status"] == "ok" or r["error"]
    record = storage.read_text(storage.join_url(first_run["out"], "runs", "e2e-1.json"))
    schemas.validate_record(__import__("json").loads(record), "run_record")


def test_masks_decode_back_to_the_detectors_maps(archive, first_run):
    from adray.detectors.base import create_detector
    from adray.io.images import decode_image

    rows = _rows(first_run["out"]).filter(pads.field("detector") == "winclip").to_pylist()
    ok = [r for r in rows if r["status"] == "ok" and r["category"] == "bottle"][:2]
    det = create_detector("winclip", class_name="bottle", weights="random", **TINY)
    for r in ok:
        image = decode_image(storage.read_bytes(r["uri"]))
        direct = det.score({"image": det.preprocess({"image": image})["image"][None]})
        expect = resize_map(direct.anomaly_map[0].numpy(), image.shape[:2])
        amap = decode_map_png16(storage.read_bytes(r["mask_uri"]), r["map_min"], r["map_max"])
        assert amap.shape == image.shape[:2]
        tol = (r["map_max"] - r["map_min"]) / 65535 + 1e-5
        assert np.abs(amap - expect).max() <= tol * 2
        assert r["image_score"] == pytest.approx(float(direct.image_score[0]), rel=1e-4, abs=1e-6)
        assert r["detector_version"] == det.version


def test_same_run_id_again_adds_no_rows(archive, first_run):
    before = _rows(first_run["out"]).num_rows
    again = score_archive(_config(archive["root"], first_run["out"]))
    assert again.total("scored_now") == 0 and again.rows_out == first_run["summary"].rows_out
    assert _rows(first_run["out"]).num_rows == before


def test_reinspect_scores_exactly_new_and_changed_items(archive, first_run):
    root, out = archive["root"], first_run["out"]
    new = sup.write_good_items(root, 3, category="bottle", seed0=500)
    changed = next(
        u for u, _ in storage.walk_files(storage.join_url(root, "mvtec", "bottle", "test", "good"))
    )
    storage.write_bytes(changed, sup.png_bytes(sup.image(777)))
    _write_manifest(root, archive["bad"] + new)

    s = reinspect(_config(root, out, run_id="e2e-delta"))
    print(s.format_table())
    win = s.detectors[0]
    assert (win.rows_in, win.rows_out, win.ok) == (4, 4, 4)
    assert s.detectors[1].rows_in == 0  # the point-cloud items did not change
    con = connect(out)
    scored = {r[0] for r in con.execute("SELECT uri FROM results WHERE run_id = 'e2e-delta'").fetchall()}
    assert scored == {r["uri"] for r in new} | {changed}
    latest = con.execute(
        "SELECT run_id FROM latest_scores WHERE detector = 'winclip' AND uri = ?", [changed]
    ).fetchone()
    assert latest == ("e2e-delta",)
    n_runs = con.execute("SELECT count(*) FROM runs WHERE status = 'committed'").fetchone()[0]
    assert n_runs == 2
    # nothing new: the next re-inspection scores nothing
    again = reinspect(_config(root, out, run_id="e2e-delta-2"))
    assert again.rows_in == 0 and again.total("skipped_delta") > 0
