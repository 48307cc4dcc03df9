"""Issue 15 item 4: one reader from a manifest row to a sample, one manifest loader.

The decode stage, the fit jobs (BGAD, M3DM), WinCLIP+ reference loading, the winclip command and the
evaluation report all read through :func:`adray.io.samples.read_sample`, and its verdicts are the decode
stage's row statuses; "prefix or manifest URI" is decided by :func:`adray.catalog.open_manifest` alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from adray import catalog, storage
from adray.io import samples
from adray.io.images import decode_image
from adray.pipeline.decode import DETECTOR_VERSIONS, PASSES, decode_batch, merge_passes
from adray.pipeline.spec import DetectorSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.integration import counting_storage as counting  # noqa: E402
from tests.integration import test_pipeline_support as sup  # noqa: E402

GREY = DetectorSpec(ref="greymad", weights="random", device="cpu", plugins=(sup.PLUGIN,))
XYZ = DetectorSpec(ref="greyxyz", weights="random", device="cpu", plugins=(sup.PLUGIN,))


def _work(rows: list[dict], version: str) -> pa.Table:
    table = sup.manifest_from_rows(rows)
    return table.append_column("detector_version", pa.array([version] * len(rows), pa.string()))


def test_the_reader_and_the_decode_stage_give_every_bad_item_the_same_status(tmp_path):
    rows = sup.bad_items(str(tmp_path))
    for with_pc in (False, True):
        subset = [r for r in rows if bool(r.get("pc_uri")) == with_pc]
        spec = XYZ if with_pc else GREY
        out = decode_batch(_work(subset, "v"), spec=spec, max_pixels=100 * 100, needs_xyz=with_pc)
        modalities = ("rgb", "xyz") if with_pc else ("rgb",)
        alone = [samples.read_sample(r, modalities=modalities, max_pixels=100 * 100) for r in subset]
        assert [s.status for s in alone] == out["status"].to_pylist() == [r["expect"] for r in subset]
        assert [s.error for s in alone] == out["error"].to_pylist()
        assert any(s.status != "ok" for s in alone) and any(s.ok for s in alone)


def test_the_reader_and_the_decode_stage_decode_each_read_with_one_function(tmp_path, monkeypatch):
    from adray.pipeline import decode

    rows = sup.write_good_items(str(tmp_path), 2, with_pc=True)
    rows[1]["pc_uri"] = str(tmp_path / "absent.tiff")
    seen: list[str] = []
    real = samples.decode_read

    def spy(read, **kw):
        seen.append(kw["uri"])
        return real(read, **kw)

    monkeypatch.setattr(samples, "decode_read", spy)
    monkeypatch.setattr(decode, "decode_read", spy)
    out = decode_batch(_work(rows, "v"), spec=XYZ, needs_xyz=True, max_pixels=10**6)
    alone = [samples.read_sample(r, modalities=("rgb", "xyz")) for r in rows]
    assert seen == [r["uri"] for r in rows] * 2
    assert out["status"].to_pylist() == [s.status for s in alone] == ["ok", "not_found"]
    assert out["error"].to_pylist() == [s.error for s in alone]


def test_a_sample_keeps_the_point_clouds_verdict_apart_and_raises_only_when_asked(tmp_path):
    row = sup.write_good_items(str(tmp_path), 1, with_pc=True)[0]
    row["pc_uri"] = str(tmp_path / "absent.tiff")
    s = samples.read_sample(row, modalities=("rgb", "xyz"))
    assert s.status == "not_found" and "point cloud" in s.error and s.image.shape == (32, 32, 3)
    assert s.status_for(("rgb",)) is None and s.status_for(("rgb", "xyz"))[0] == "not_found"
    with pytest.raises(samples.SampleError) as e:
        s.raise_for_status()
    assert e.value.status == "not_found"
    ok = samples.read_sample(row)  # RGB only: the cloud is never read
    assert ok.ok and ok.xyz is None and np.array_equal(ok.image, sup.image(0))


def test_a_row_with_a_mask_and_a_bit_depth_cell_reads_both(tmp_path):
    row = sup.write_good_items(str(tmp_path), 1)[0]
    mask = np.zeros((32, 32), np.uint8)
    mask[4:9, 2:5] = 255
    storage.write_bytes(str(tmp_path / "m.png"), sup.png_bytes(mask))
    s = samples.read_sample({**row, "gt_mask_uri": str(tmp_path / "m.png")}, mask=True)
    assert s.ok and s.mask.dtype == bool and int(s.mask.sum()) == 15
    bad = samples.read_sample({**row, "bit_depth": 40})
    assert bad.status == "unsupported" and "bit_depth" in bad.error
    skipped = samples.read_sample({**row, "skip_status": "not_image", "skip_reason": "a text file"})
    assert skipped.status == "not_image" and skipped.image is None


def test_every_former_reader_goes_through_read_sample(tmp_path, monkeypatch):
    from adray.commands.winclip import _read
    from adray.detectors.bgad.data import load_items
    from adray.detectors.m3dm.config import M3DMConfig
    from adray.pipeline.detector_set import _read_reference
    from adray.train.m3dm import read_sample as m3dm_read

    row = sup.write_good_items(str(tmp_path), 1, with_pc=True)[0]
    row["item_id"] = "i0"
    storage.write_bytes(str(tmp_path / "m.png"), sup.png_bytes(np.full((32, 32), 255, np.uint8)))
    seen: list[str] = []
    real = samples.read_sample

    def spy(r, **kw):
        seen.append(str(r["uri"]))
        return real(r, **kw)

    monkeypatch.setattr(samples, "read_sample", spy)
    expected = decode_image(storage.read_bytes(row["uri"]))
    assert np.array_equal(_read_reference(row["uri"]), expected)
    assert np.array_equal(_read(row["uri"]), expected)
    m3dm = m3dm_read(row["uri"], row["pc_uri"], M3DMConfig(category="widget"))
    assert np.array_equal(m3dm["image"], expected) and m3dm["xyz"].shape == (32, 32, 3)
    [item] = load_items([{**row, "gt_mask_uri": str(tmp_path / "m.png")}], "anomaly", 16)
    assert item.image.shape[:2] == (16, 16) and item.mask.all()
    assert seen == [row["uri"]] * 4


def test_merged_passes_list_each_item_once_with_its_detectors(tmp_path):
    rows = sup.write_good_items(str(tmp_path), 3, with_pc=True)
    first, second = _work(rows, "vg"), _work(rows[1:], "vx")
    merged = merge_passes([first, second])
    assert merged.num_rows == 3 and merged["item_id"].to_pylist() == sorted(first["item_id"].to_pylist())
    by_item = dict(
        zip(
            merged["item_id"].to_pylist(),
            zip(merged[PASSES].to_pylist(), merged[DETECTOR_VERSIONS].to_pylist()),
        )
    )
    assert by_item == {
        **{i: ([0], ["vg"]) for i in first["item_id"].to_pylist()},
        **{i: ([0, 1], ["vg", "vx"]) for i in second["item_id"].to_pylist()},
    }
    assert merge_passes([first.slice(0, 0), second]).num_rows == 2


def test_the_decode_stage_reads_each_item_once_for_several_detectors(tmp_path):
    rows = sup.write_good_items(str(tmp_path / "data"), 3, with_pc=True)
    for r in rows:
        r["uri"], r["pc_uri"] = f"{counting.SCHEME}://{r['uri']}", f"{counting.SCHEME}://{r['pc_uri']}"
    merged = merge_passes([_work(rows, "vg"), _work(rows, "vx")])
    out = decode_batch(
        merged, specs=(GREY, XYZ), needs_xyz=(False, True), names=("greymad", "greyxyz"), max_pixels=10**6
    )
    assert out["detector"].to_pylist() == ["greymad"] * 3 + ["greyxyz"] * 3  # grouped by pass
    assert out["pass_index"].to_pylist() == [0, 0, 0, 1, 1, 1]
    assert out["detector_version"].to_pylist() == ["vg"] * 3 + ["vx"] * 3
    assert out["status"].to_pylist() == ["ok"] * 6
    reads = counting.reads(str(tmp_path))
    assert sorted(reads.values()) == [1] * 6 and len(reads) == 6  # 3 images + 3 clouds, each once
    one = decode_batch(_work(rows, "vg"), spec=GREY, needs_xyz=False, max_pixels=10**6)
    alone = dict(zip(one["item_id"].to_pylist(), one["pre"].to_pylist()))
    assert alone == dict(zip(out["item_id"].to_pylist()[:3], out["pre"].to_pylist()[:3]))  # as alone


def test_one_manifest_loader_for_files_and_prefixes(tmp_path, monkeypatch):
    from adray.evaluation.join import load_manifest as eval_manifest
    from adray.train.bgad import load_rows

    a = sup.write_good_items(str(tmp_path / "data"), 2, category="a")
    b = sup.write_good_items(str(tmp_path / "data"), 1, category="b")
    url = str(tmp_path / "m.parquet")
    catalog.write_manifest(sup.manifest_from_rows(a + b), url)
    table, report = catalog.open_manifest(url)
    assert report is None and table.num_rows == 3
    only_b, _ = catalog.open_manifest(url, categories=["b"])
    assert only_b["category"].to_pylist() == ["b"]
    calls: list[tuple] = []
    real = catalog.open_manifest

    def spy(source, layout="auto", **kw):
        calls.append((source, kw.get("categories")))
        return real(source, layout, **kw)

    monkeypatch.setattr(catalog, "open_manifest", spy)
    assert len(load_rows(url, "a")) == 2
    assert len(eval_manifest(url)) == 3
    assert calls == [(url, ["a"]), (url, None)]
