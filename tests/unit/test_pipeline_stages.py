"""The pipeline's stage functions called directly on numpy/arrow batches (no Ray)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from adray import schemas, storage
from adray.io.masks import decode_map_png16
from adray.pipeline.decode import IMAGE_BYTES, PC_BYTES, decode_batch, pack_arrays, unpack_arrays
from adray.pipeline.detector_set import DetectorSet
from adray.pipeline.rows import finalize_batch
from adray.pipeline.scoring import score_batch
from adray.pipeline.spec import DetectorSpec, ScoreConfig, parse_options

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.integration import test_pipeline_support as sup  # noqa: E402

GREY = DetectorSpec("greymad", weights="random", device="cpu", plugins=(sup.PLUGIN,))
XYZ = DetectorSpec("greyxyz", weights="random", device="cpu", plugins=(sup.PLUGIN,))


def _batch(rows: list[dict], version: str, with_pc: bool) -> pa.Table:
    """What the download stage hands to decode: manifest rows + version + bytes (null when missing)."""

    def read(url):
        if url is None or not storage.exists(url):
            return None
        return storage.read_bytes(url)

    table = sup.manifest_from_rows(rows)
    table = table.append_column("detector_version", pa.array([version] * len(rows), pa.string()))
    table = table.append_column(IMAGE_BYTES, pa.array([read(r["uri"]) for r in rows], pa.binary()))
    if with_pc:
        table = table.append_column(PC_BYTES, pa.array([read(r["pc_uri"]) for r in rows], pa.binary()))
    return table


def test_every_bad_kind_gets_its_status_and_a_readable_error(tmp_path):
    rows = sup.bad_items(str(tmp_path))
    image_rows = [r for r in rows if r["pc_uri"] is None]
    out = decode_batch(_batch(image_rows, "v", False), spec=GREY, max_pixels=100 * 100, needs_xyz=False)
    got = dict(zip([r["name"] for r in image_rows], out["status"].to_pylist()))
    assert got == {r["name"]: r["expect"] for r in image_rows}
    for status, error, h in zip(*(out[c].to_pylist() for c in ("status", "error", "orig_h"))):
        assert (error is None) == (status == "ok")
        assert (h == 32) == (status == "ok")

    pc_rows = [r for r in rows if r["pc_uri"] is not None]
    out = decode_batch(_batch(pc_rows, "v", True), spec=XYZ, max_pixels=100 * 100, needs_xyz=True)
    got = dict(zip([r["name"] for r in pc_rows], out["status"].to_pylist()))
    assert got == {r["name"]: r["expect"] for r in pc_rows}
    assert "no valid points" in out["error"][[r["name"] for r in pc_rows].index("pc_allnan")].as_py()


def test_pack_round_trip_keeps_dtype_and_shape():
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones((2, 2, 2), np.uint8)}
    back = unpack_arrays(pack_arrays(arrays))
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v)


def test_scoring_scores_ok_rows_and_passes_failures_through(tmp_path):
    rows = sup.write_good_items(str(tmp_path), 3) + sup.bad_items(str(tmp_path))[:2]
    detectors = DetectorSet(GREY)
    decoded = decode_batch(_batch(rows, "v", False), spec=GREY, max_pixels=10**6, needs_xyz=False)
    scored = score_batch(detectors, decoded).to_pydict()
    assert scored["status"] == ["ok", "ok", "ok", "not_found", "empty"]
    assert all(np.isfinite(scored["image_score"][:3])) and scored["image_score"][3:] == [None, None]
    assert scored["map"][3] is None and scored["map_h"][0] == sup.SIDE
    # batch invariance: scoring one item alone gives the same score
    alone = score_batch(detectors, decoded.slice(0, 1)).to_pydict()
    assert alone["image_score"][0] == pytest.approx(scored["image_score"][0])


def test_finalize_writes_masks_at_input_size_and_typed_rows(tmp_path):
    rows = sup.write_good_items(str(tmp_path), 2) + sup.bad_items(str(tmp_path))[:1]
    detectors = DetectorSet(GREY)
    scored = score_batch(
        detectors, decode_batch(_batch(rows, "v1", False), spec=GREY, max_pixels=10**6, needs_xyz=False)
    )
    out = finalize_batch(scored, run_id="r1", detector="greymad", output=str(tmp_path / "out"))
    schemas.validate_table(out, "results")
    assert out.schema.equals(schemas.load_schema("results"), check_metadata=False)
    rec = out.to_pylist()
    assert [r["status"] for r in rec] == ["ok", "ok", "not_found"]
    assert rec[2]["mask_uri"] is None and rec[2]["image_score"] is None and rec[2]["error"]
    assert rec[0]["is_anomalous"] == (rec[0]["image_score"] >= 0.2)
    assert rec[0]["mask_uri"].endswith(f"masks/detector_version=v1/{rec[0]['item_id']}.png")
    amap = decode_map_png16(storage.read_bytes(rec[0]["mask_uri"]), rec[0]["map_min"], rec[0]["map_max"])
    assert amap.shape == (32, 32)
    assert amap.mean() == pytest.approx(rec[0]["image_score"], abs=0.02)


def test_all_failed_batch_keeps_column_types(tmp_path):
    rows = sup.bad_items(str(tmp_path))[:2]
    scored = score_batch(
        DetectorSet(GREY),
        decode_batch(_batch(rows, "v", False), spec=GREY, max_pixels=10**6, needs_xyz=False),
    )
    out = finalize_batch(scored, run_id="r1", detector="greymad", output=str(tmp_path / "o"))
    assert out.schema.field("image_score").type == pa.float32()
    assert out.schema.field("mask_uri").type == pa.string() and out["mask_uri"].null_count == 2


def test_config_validation_and_options():
    with pytest.raises(ValueError, match="run-id"):
        ScoreConfig(input="/tmp/a", output="/tmp/b", run_id="bad id!").validated()
    cfg = ScoreConfig(input="/tmp/a", output="/tmp/b").validated()
    assert cfg.run_id.startswith("run-")
    assert parse_options(["model_name=adray-tiny-clip", "size=64"]) == {
        "model_name": "adray-tiny-clip",
        "size": 64,
    }


def test_applicability_by_modality_and_category():
    rgb = DetectorSet(DetectorSpec("greymad", options=(("categories", ["bottle"]),), plugins=(sup.PLUGIN,)))
    assert rgb.applies_to("bottle", False) and not rgb.applies_to("carpet", False)
    xyz = DetectorSet(XYZ)
    assert xyz.applies_to("any", True) and not xyz.applies_to("any", False)


def test_cpu_scoring_actors_default_to_a_passive_omp_wait_policy(monkeypatch) -> None:
    from adray.pipeline.spec import ScoreConfig, parse_env

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    cpu = ScoreConfig(input="in", output="out")
    assert cpu.actor_env_vars() == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert ScoreConfig(input="in", output="out", num_gpus=1).actor_env_vars() == {}
    pinned = ScoreConfig(input="in", output="out", actor_env=parse_env(["OMP_WAIT_POLICY=ACTIVE", "X=1=2"]))
    assert pinned.actor_env_vars() == {"OMP_WAIT_POLICY": "ACTIVE", "X": "1=2"}
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the person's own setting wins over the default
    assert cpu.actor_env_vars() == {}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_env(["novalue"])
