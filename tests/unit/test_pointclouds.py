"""Point-cloud decoding: TIFF / NPY / NPZ / PLY / PCD, zeros for missing points, typed errors."""

from __future__ import annotations

import io

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
