"""Point-cloud decoding: TIFF / NPY / NPZ / PLY / PCD, zeros for missing points, typed errors."""

from __future__ import annotations

import io
import struct
import zipfile

import numpy as np
import pytest
import tifffile

from adray.io.pointclouds import (
    PointCloudDecodeError,
    decode_pointcloud,
    read_pointcloud,
    to_organised,
    valid_mask,
)


def _organised(h: int = 6, w: int = 5) -> np.ndarray:
    rng = np.random.default_rng(0)
    xyz = rng.uniform(0.1, 1.0, (h, w, 3)).astype(np.float32)
    xyz[0, 0] = 0.0
    return xyz


def test_tiff_round_trip_keeps_organised_grid_and_zeros():
    xyz = _organised()
    xyz[1, 1] = np.nan
    buf = io.BytesIO()
    tifffile.imwrite(buf, xyz)
    out = decode_pointcloud(buf.getvalue(), "scan/000.tiff")
    assert out.shape == (6, 5, 3) and out.dtype == np.float32
    assert not valid_mask(out)[0, 0] and not valid_mask(out)[1, 1]  # NaN became a missing point
    np.testing.assert_array_equal(out[2:], xyz[2:])


def test_npy_and_npz(tmp_path):
    pts = np.arange(30, dtype=np.float64).reshape(10, 3)
    buf = io.BytesIO()
    np.save(buf, pts)
    assert decode_pointcloud(buf.getvalue(), ".npy").shape == (10, 3)
    buf = io.BytesIO()
    np.savez(buf, points=pts)
    out = decode_pointcloud(buf.getvalue(), "x.npz")
    assert out.dtype == np.float32 and np.allclose(out, pts)
    path = tmp_path / "c.npy"
    np.save(path, pts)
    assert read_pointcloud(str(path)).shape == (10, 3)


@pytest.mark.parametrize("ext", [".ply", ".pcd"])
def test_open3d_formats_through_a_temporary_file(tmp_path, ext):
    import open3d as o3d

    pts = np.random.default_rng(1).uniform(-1, 1, (50, 3))
    path = str(tmp_path / f"c{ext}")
    o3d.io.write_point_cloud(path, o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts)))
    with open(path, "rb") as f:
        out = decode_pointcloud(f.read(), path)
    assert out.shape == (50, 3)
    assert np.allclose(out, pts, atol=1e-5)


def test_bad_inputs_raise_typed_errors():
    with pytest.raises(PointCloudDecodeError) as e:
        decode_pointcloud(b"not a tiff", "a.tiff")
    assert e.value.kind == "corrupt"
    with pytest.raises(PointCloudDecodeError) as e:
        decode_pointcloud(b"abc", "a.obj")
    assert e.value.kind == "unsupported"
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((4, 4), np.float32))
    with pytest.raises(PointCloudDecodeError) as e:
        decode_pointcloud(buf.getvalue(), "a.tif")
    assert e.value.kind == "shape"
    assert isinstance(e.value, ValueError)


def test_to_organised_rasterises_and_keeps_nearest_z():
    pts = np.array([[0, 0, 5], [0, 0, 2], [1, 1, 3]], dtype=np.float32)
    grid = to_organised(pts, size=4)
    assert grid.shape == (4, 4, 3)
    assert valid_mask(grid).sum() == 2
    assert grid[0, 0, 2] == 2.0  # the closer of the two points in the same cell
    assert grid[3, 3, 2] == 3.0


# ------------------------------------------- size bounds, any failure typed, no quoting (issue 13, items 3, 4, 10)

HUGE_PLY = (  # 125 bytes that declare 10^9 vertices: open3d reserves ~24 GB for them
    b"ply\nformat binary_little_endian 1.0\nelement vertex 1000000000\n"
    b"property float x\nproperty float y\nproperty float z\nend_header\n"
)


def _ply(points: np.ndarray, ascii_: bool) -> bytes:
    head = "ply\nformat {} 1.0\nelement vertex {}\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    if ascii_:
        body = "".join(f"{x} {y} {z}\n" for x, y, z in points).encode()
        return head.format("ascii", len(points)).encode() + body
    return head.format("binary_little_endian", len(points)).encode() + points.astype("<f4").tobytes()


def _pcd(points: np.ndarray, declared: int | None = None, layout: str = "binary") -> bytes:
    n = len(points) if declared is None else declared
    head = (
        "# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
        f"WIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA {layout}\n"
    )
    if layout == "ascii":
        return head.encode() + "".join(f"{x} {y} {z}\n" for x, y, z in points).encode()
    return head.encode() + points.astype("<f4").tobytes()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npy_header_only(shape: tuple[int, ...]) -> bytes:
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def _tiff_declaring(height: int, width: int) -> bytes:
    """A small xyz TIFF whose ImageWidth / ImageLength tags are patched to ``width`` x ``height``."""
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ones((4, 4, 3), np.float32))
    data = bytearray(buf.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        tags = tif.pages[0].tags
        for code, value in ((256, width), (257, height)):
            tag = tags[code]
            fmt = "<H" if tag.dtype == 3 else "<I"
            struct.pack_into(fmt, data, tag.valueoffset, value)
    return bytes(data)


def _kind(data: bytes, name: str, **kw) -> str:
    with pytest.raises(PointCloudDecodeError) as e:
        decode_pointcloud(data, name, **kw)
    return e.value.kind


@pytest.fixture
def open3d_must_not_run(monkeypatch):
    import open3d as o3d

    def refuse(*a, **k):
        raise AssertionError("open3d was asked to read a file the header check should have refused")

    monkeypatch.setattr(o3d.io, "read_point_cloud", refuse)


def test_ply_header_declaring_a_billion_vertices_is_too_large_before_open3d_runs(open3d_must_not_run):
    assert len(HUGE_PLY) < 130
    with pytest.raises(PointCloudDecodeError) as e:
        decode_pointcloud(HUGE_PLY, "huge.ply")
    assert e.value.kind == "too_large"
    assert "1000000000 points, over the limit of 64000000" in str(e.value)
    ascii_huge = HUGE_PLY.replace(b"binary_little_endian", b"ascii")
    assert _kind(ascii_huge, "huge.ply") == "too_large"


def test_pcd_binary_with_a_huge_count_is_too_large_before_open3d_runs(open3d_must_not_run):
    pcd = _pcd(np.zeros((2, 3)), declared=2_000_000_000)
    assert _kind(pcd, "huge.pcd") == "too_large"
    assert _kind(_pcd(np.zeros((2, 3)), declared=2_000_000_000, layout="ascii"), "huge.pcd") == "too_large"


@pytest.mark.parametrize("ext", [".ply", ".pcd"])
def test_truncated_ply_and_pcd_are_corrupt_before_open3d_runs(open3d_must_not_run, ext):
    pts = np.random.default_rng(2).uniform(-1, 1, (100, 3))
    data = _ply(pts, ascii_=False) if ext == ".ply" else _pcd(pts)
    with pytest.raises(PointCloudDecodeError) as e:
        decode_pointcloud(data[:-7], f"cut{ext}")
    assert e.value.kind == "corrupt" and "truncated" in str(e.value) and "1200 bytes" in str(e.value)


def test_pcd_compressed_block_larger_than_its_points_is_corrupt(open3d_must_not_run):
    head = _pcd(np.zeros((0, 3)), declared=10, layout="binary_compressed")
    data = head + struct.pack("<II", 16, 10**9) + b"\x00" * 16
    assert _kind(data, "z.pcd") == "corrupt"


@pytest.mark.parametrize("ext", [".ply", ".pcd"])
def test_max_points_is_configurable_and_exact(ext):
    pts = np.random.default_rng(3).uniform(-1, 1, (50, 3)).astype(np.float32)
    data = _ply(pts, ascii_=True) if ext == ".ply" else _pcd(pts, layout="ascii")
    assert _kind(data, f"c{ext}", max_points=49) == "too_large"
    assert decode_pointcloud(data, f"c{ext}", max_points=50).shape == (50, 3)


def test_tiff_declaring_a_huge_shape_is_too_large():
    assert _kind(_tiff_declaring(60_000, 60_000), "big.tiff") == "too_large"
    xyz = _organised(6, 5)
    buf = io.BytesIO()
    tifffile.imwrite(buf, xyz)
    assert _kind(buf.getvalue(), "a.tiff", max_points=29) == "too_large"
    assert decode_pointcloud(buf.getvalue(), "a.tiff", max_points=30).shape == (6, 5, 3)


def test_npy_and_npz_headers_declaring_huge_shapes_are_too_large():
    header = _npy_header_only((1_000_000_000, 3))  # no data at all behind it
    assert _kind(header, "h.npy") == "too_large"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("xyz.npy", header)
    assert _kind(buf.getvalue(), "h.npz") == "too_large"
    assert _kind(_npy(np.zeros((40, 3), np.float32)), "a.npy", max_points=39) == "too_large"


def test_truncated_npy_is_corrupt():
    data = _npy(np.arange(300, dtype=np.float32).reshape(100, 3))
    with pytest.raises(PointCloudDecodeError) as e:
        decode_pointcloud(data[:-1], "cut.npy")
    assert e.value.kind == "corrupt" and "1200 bytes), 1199 follow" in str(e.value)
    assert _kind(data[:5], "cut.npy") == "corrupt"  # not even a header


@pytest.mark.parametrize("make", [lambda a: _npy(a), lambda a: _npz(xyz=a), lambda a: _npz(anything=a)])
def test_object_arrays_are_unsupported_and_never_unpickled(make):
    class Boom:
        def __reduce__(self):  # unpickling would call this: it must never happen
            return (pytest.fail, ("an object array was unpickled",))

    name = "o.npy" if make(np.zeros((1, 3))).startswith(b"\x93NUMPY") else "o.npz"
    assert _kind(make(np.array([Boom(), 1, 2], dtype=object)), name) == "unsupported"


def test_npz_with_several_arrays_picks_xyz_or_refuses_without_listing_names():
    pts = np.ones((4, 3), np.float32)
    assert decode_pointcloud(_npz(normals=pts * 2, xyz=pts), "a.npz").max() == 1.0
    with pytest.raises(PointCloudDecodeError) as e:
        decode_pointcloud(_npz(secret_name_a=pts, secret_name_b=pts), "b.npz")
    assert e.value.kind == "shape" and "holds 2 arrays" in str(e.value) and "secret_name" not in str(e.value)
    assert _kind(b"PK\x03\x04 not really a zip", "c.npz") == "corrupt"


def _valid_files() -> dict[str, bytes]:
    pts = np.random.default_rng(4).uniform(-1, 1, (30, 3)).astype(np.float32)
    buf = io.BytesIO()
    tifffile.imwrite(buf, _organised())
    return {
        "a.ply": _ply(pts, ascii_=False),
        "b.ply": _ply(pts, ascii_=True),
        "a.pcd": _pcd(pts),
        "b.pcd": _pcd(pts, layout="ascii"),
        "a.npy": _npy(pts),
        "a.npz": _npz(points=pts),
        "a.tiff": buf.getvalue(),
    }


@pytest.mark.parametrize("name", list(_valid_files()))
def test_any_damage_gives_a_point_cloud_or_a_typed_error_never_another_exception(name):
    data = _valid_files()[name]
    rng = np.random.default_rng(5)
    variants = [data[:k] for k in range(0, len(data), max(1, len(data) // 40))]
    for _ in range(40):
        flipped = bytearray(data)
        for pos in rng.integers(0, len(data), 4):
            flipped[pos] = int(rng.integers(0, 256))
        variants.append(bytes(flipped))
    for v in variants:
        try:
            out = decode_pointcloud(v, name, max_points=10_000)
        except PointCloudDecodeError as e:
            assert e.kind in ("empty", "corrupt", "too_large", "unsupported", "shape", "dtype")
        else:
            assert out.dtype == np.float32 and out.shape[-1] == 3


SECRET = "root:$6$Zq8xKp2W$AKIAVERYSECRETKEY9f3hunter2:19000:0:99999:7:::"


def _npy_raw(header: str) -> bytes:
    head = header.encode("latin1")
    head += b" " * (-(len(head) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("s.tiff", b"II*\x00" + SECRET.encode()),
        ("s.tiff", SECRET.encode()),
        ("s.npy", _npy_raw("{'" + SECRET + "': 1}")),  # numpy's error lists the header's keys
        ("s.npy", _npy_raw("{'descr': '" + SECRET + "', 'fortran_order': False, 'shape': (3,)}")),
        ("s.npz", b"PK\x03\x04" + SECRET.encode()),
        ("s.ply", b"ply\nformat ascii 1.0\nelement vertex " + SECRET.encode() + b"\nend_header\n"),
        ("s.pcd", b"# .PCD\nPOINTS " + SECRET.encode() + b"\nDATA binary\n"),
        ("s.ply", SECRET.encode()),
    ],
)
def test_point_cloud_errors_never_quote_the_file(name, data):
    with pytest.raises(PointCloudDecodeError) as e:
        decode_pointcloud(data, name)
    message = str(e.value)
    leaked = [SECRET[i : i + 4] for i in range(len(SECRET) - 3) if SECRET[i : i + 4] in message]
    assert not leaked, message
