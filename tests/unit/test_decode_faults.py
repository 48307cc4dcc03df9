"""The decode stage under odd and hostile inputs: every item leaves as one row, whatever its bytes do.

Issue 13: one bad point cloud never fails the run (item 3), point clouds are bounded from their headers
(item 4), 16-bit images with fewer significant bits are scaled from them and say so (item 8), and an
error never carries the file's content (item 10).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from adray import storage
from adray.io import samples as decode_module  # the decoders the decode stage calls
from adray.pipeline.decode import IMAGE_BYTES, PC_BYTES, decode_batch
from adray.pipeline.detector_set import DetectorSet
from adray.pipeline.rows import finalize_batch
from adray.pipeline.scoring import score_batch
from adray.pipeline.spec import DetectorSpec, ScoreConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.integration import test_pipeline_support as sup  # noqa: E402
from tests.unit.test_pointclouds import _npy, _npz  # noqa: E402

GREY = DetectorSpec("greymad", weights="random", device="cpu", plugins=(sup.PLUGIN,))
XYZ = DetectorSpec("greyxyz", weights="random", device="cpu", plugins=(sup.PLUGIN,))
SECRET = "root:$6$Zq8xKp2W$AKIAVERYSECRETKEY9f3hunter2:19000:0:99999:7:::"
HUGE_PLY = (
    b"ply\nformat binary_little_endian 1.0\nelement vertex 1000000000\n"
    b"property float x\nproperty float y\nproperty float z\nend_header\n"
)


def bad_pointclouds() -> dict[str, tuple[str, bytes, str]]:
    """``name -> (suffix, bytes, expected status)``: point clouds that once failed a run or exhausted memory."""
    cloud = sup.xyz(1)
    objects = np.empty((32, 32, 3), dtype=object)
    objects[...] = 1.0
    return {
        "npz_objects": (".npz", _npz(xyz=objects), "unsupported"),
        "npy_objects": (".npy", _npy(objects), "unsupported"),
        "ply_billion": (".ply", HUGE_PLY, "too_large"),
        "npy_truncated": (".npy", _npy(cloud)[:-100], "corrupt"),
        "npz_two_unnamed": (".npz", _npz(a=cloud, b=cloud), "corrupt"),
        "npz_xyz_of_two": (".npz", _npz(normals=cloud * 0, xyz=cloud), "ok"),
        "pcd_huge": (
            ".pcd",
            b"# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
            b"WIDTH 900000000\nHEIGHT 1\nPOINTS 900000000\nDATA binary\n",
            "too_large",
        ),
        "secret_as_tiff": (".tiff", SECRET.encode(), "corrupt"),
        "good_tiff": (".tiff", sup.tiff_bytes(cloud), "ok"),
    }


def write_bad_pointcloud_items(root: str) -> list[dict]:
    """Manifest rows (with ``expect``) of a good image and each of :func:`bad_pointclouds`."""
    rows = []
    for i, (name, (suffix, data, expect)) in enumerate(bad_pointclouds().items()):
        uri = storage.join_url(root, "pcs", f"{name}.png")
        pc_uri = storage.join_url(root, "pcs", f"{name}{suffix}")
        storage.write_bytes(uri, sup.png_bytes(sup.image(100 + i)))
        storage.write_bytes(pc_uri, data)
        rows.append({"name": name, "uri": uri, "pc_uri": pc_uri, "category": "widget", "expect": expect})
    return rows


def _batch(rows: list[dict], with_pc: bool, extra: dict[str, pa.Array] | None = None) -> pa.Table:
    def read(url):
        return storage.read_bytes(url) if url and storage.exists(url) else None

    table = sup.manifest_from_rows(rows)
    table = table.append_column("detector_version", pa.array(["v"] * len(rows), pa.string()))
    for name, values in (extra or {}).items():
        table = table.append_column(name, values)
    table = table.append_column(IMAGE_BYTES, pa.array([read(r["uri"]) for r in rows], pa.binary()))
    if with_pc:
        table = table.append_column(PC_BYTES, pa.array([read(r["pc_uri"]) for r in rows], pa.binary()))
    return table


def _leaks(message: str, secret: str = SECRET) -> list[str]:
    return [secret[i : i + 4] for i in range(len(secret) - 3) if secret[i : i + 4] in message]


def test_each_bad_point_cloud_becomes_its_own_row(tmp_path):
    rows = write_bad_pointcloud_items(str(tmp_path))
    out = decode_batch(_batch(rows, True), spec=XYZ, max_pixels=10**6, needs_xyz=True)
    got = dict(zip([r["name"] for r in rows], out["status"].to_pylist()))
    assert got == {r["name"]: r["expect"] for r in rows}
    errors = dict(zip([r["name"] for r in rows], out["error"].to_pylist()))
    assert "never unpickles" in errors["npz_objects"]
    assert "1000000000 points, over the limit of 64000000" in errors["ply_billion"]
    secret_error = errors["secret_as_tiff"].replace(rows[-2]["pc_uri"], "<uri>")  # the path is no secret
    assert "text" in secret_error and not _leaks(secret_error)


def test_max_points_reaches_the_point_cloud_decoder(tmp_path):
    rows = [r for r in write_bad_pointcloud_items(str(tmp_path)) if r["name"] == "good_tiff"]
    batch = _batch(rows, True)
    fits = decode_batch(batch, spec=XYZ, max_pixels=10**6, needs_xyz=True, max_points=32 * 32)
    assert fits["status"][0].as_py() == "ok"
    small = decode_batch(batch, spec=XYZ, max_pixels=10**6, needs_xyz=True, max_points=32 * 32 - 1)
    assert small["status"][0].as_py() == "too_large"


@pytest.mark.parametrize(
    ("raised", "status", "said"),
    [
        (RuntimeError("reader bug"), "corrupt", "RuntimeError"),
        (KeyError("x"), "corrupt", "KeyError"),
        (MemoryError(), "error", "ran out of memory"),  # retryable: re-inspection picks it up
    ],
)
def test_any_exception_of_a_decoder_becomes_the_items_row(tmp_path, monkeypatch, raised, status, said):
    rows = sup.write_good_items(str(tmp_path), 3, with_pc=True)

    def decode_scan_pointcloud(data, name, shape, **kw):
        if name.endswith("001.tiff"):
            raise raised
        return real(data, name, shape, **kw)

    real = decode_module.decode_scan_pointcloud
    monkeypatch.setattr(decode_module, "decode_scan_pointcloud", decode_scan_pointcloud)
    out = decode_batch(_batch(rows, True), spec=XYZ, max_pixels=10**6, needs_xyz=True)
    assert out["status"].to_pylist() == ["ok", status, "ok"]
    assert said in out["error"][1].as_py()


def test_an_exception_of_the_image_decoder_becomes_the_items_row(tmp_path, monkeypatch):
    rows = sup.write_good_items(str(tmp_path), 2)

    def boom(data, **kw):
        raise IndexError("inside a plugin")

    monkeypatch.setattr(decode_module, "decode_image_noted", boom)
    out = decode_batch(_batch(rows, False), spec=GREY, max_pixels=10**6, needs_xyz=False)
    assert out["status"].to_pylist() == ["corrupt", "corrupt"]
    assert "IndexError" in out["error"][0].as_py() and "inside a plugin" not in out["error"][0].as_py()


@pytest.mark.parametrize(
    "content",
    [
        SECRET.encode() + b"\n",
        b"HOME=/root\x00AWS_SECRET_ACCESS_KEY=" + SECRET.encode() + b"\x00",
        b"\x89PNG\r\n\x1a\n" + SECRET.encode(),
    ],
)
def test_a_manifest_entry_pointing_at_a_secret_file_gets_a_row_without_its_content(tmp_path, content):
    secret_file = tmp_path / "shadow"
    secret_file.write_bytes(content)
    rows = [{"uri": str(secret_file), "pc_uri": None, "category": "widget"}]
    out = decode_batch(_batch(rows, False), spec=GREY, max_pixels=10**6, needs_xyz=False)
    error = out["error"][0].as_py().replace(str(secret_file), "<uri>")  # the path is no secret
    assert out["status"][0].as_py() in ("unsupported", "corrupt")
    assert f"{len(content)} bytes" in error and not _leaks(error), error


def _png16(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def _twelve_bit_items(root: str, n: int = 2) -> list[dict]:
    rows = []
    for i in range(n):
        uri = storage.join_url(root, "cam", f"{i}.png")
        values = np.random.default_rng(i).integers(0, 4096, (32, 32))
        values[0, 0] = 4095
        storage.write_bytes(uri, _png16(values))
        rows.append({"uri": uri, "pc_uri": None, "category": "widget"})
    return rows


def test_12_bit_images_are_scaled_from_12_bits_and_the_row_says_so(tmp_path):
    rows = _twelve_bit_items(str(tmp_path))
    decoded = decode_batch(_batch(rows, False), spec=GREY, max_pixels=10**6, needs_xyz=False)
    scored = score_batch(DetectorSet(GREY), decoded)
    out = finalize_batch(scored, run_id="r1", detector="greymad", output=str(tmp_path / "o")).to_pylist()
    assert [r["status"] for r in out] == ["ok", "ok"]
    assert all("scaled from 12 significant bits" in r["note"] for r in out)
    # read as 16-bit these images were nearly black: greymad's score (mean |pixel - grey|) was ~0.5
    assert all(r["image_score"] < 0.3 for r in out)


def test_declared_bit_depth_run_flag_and_manifest_column(tmp_path):
    rows = _twelve_bit_items(str(tmp_path), 3)
    batch = _batch(rows, False)
    run16 = decode_batch(batch, spec=GREY, max_pixels=10**6, needs_xyz=False, bit_depth=16)
    assert run16["note"].to_pylist() == [None, None, None]
    column = {"bit_depth": pa.array([None, "16", "abc"], pa.string())}
    mixed = decode_batch(
        _batch(rows, False, column), spec=GREY, max_pixels=10**6, needs_xyz=False, bit_depth=12
    )
    assert mixed["status"].to_pylist() == ["ok", "ok", "unsupported"]
    assert mixed["note"][0].as_py() == "16-bit image scaled from 12 significant bits (declared)"
    assert mixed["note"][1].as_py() is None  # the item's column wins over the run's flag
    assert "bit_depth must be an integer from 1 to 16" in mixed["error"][2].as_py()


def test_score_config_checks_the_new_bounds():
    with pytest.raises(ValueError, match="--bit-depth"):
        ScoreConfig(input="/tmp/m.parquet", output="/tmp/o", bit_depth=17, run_id="r").validated()
    with pytest.raises(ValueError, match="--max-points"):
        ScoreConfig(input="/tmp/m.parquet", output="/tmp/o", max_points=0, run_id="r").validated()


def test_score_flags_parse_max_points_and_bit_depth():
    import argparse

    from adray.commands import score

    parser = argparse.ArgumentParser()
    score.add_arguments(parser)
    base = ["--input", "/tmp/m.parquet", "--output", "/tmp/o"]
    config = score.config_from_args(parser.parse_args(base + ["--max-points", "1000", "--bit-depth", "12"]))
    assert (config.max_points, config.bit_depth) == (1000, 12)
    assert score.config_from_args(parser.parse_args(base + ["--bit-depth", "auto"])).bit_depth is None
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--bit-depth", "20"])
