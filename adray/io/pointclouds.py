"""Point-cloud decoding: MVTec 3D-AD organised xyz TIFFs, PLY / PCD (through open3d), NPY / NPZ.

Every decoder returns float32 with missing points as exact zeros (the MVTec 3D-AD convention; NaN and
inf are turned into zeros too):

- TIFF: organised ``[H, W, 3]``;
- NPY / NPZ: ``[H, W, 3]`` (organised) or ``[N, 3]`` as stored (NPZ: key ``xyz``, ``points`` or the only array);
- PLY / PCD: unorganised ``[N, 3]``; open3d reads files only, so the bytes go through a temporary file.

:func:`to_organised` rasterises an unorganised cloud onto an ``[S, S, 3]`` grid (orthographic along z),
which is what the organised-cloud detectors (M3DM) take.
"""

from __future__ import annotations

import io
import os
import tempfile

import numpy as np

from adray import storage

SUFFIXES = (".tiff", ".tif", ".ply", ".pcd", ".npy", ".npz")


class PointCloudDecodeError(ValueError):
    """A point cloud could not be decoded; ``kind`` is a short machine-readable reason."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


def decode_pointcloud(data: bytes, name_or_ext: str) -> np.ndarray:
    """Decode point-cloud bytes; ``name_or_ext`` is a file name, URI or suffix (``"tiff"``, ``".ply"``)."""
    ext = _suffix(name_or_ext)
    if not data:
        raise PointCloudDecodeError("empty", f"no bytes to decode for {name_or_ext!r}")
    if ext in (".tiff", ".tif"):
        points = _decode_tiff(data, name_or_ext)
    elif ext in (".npy", ".npz"):
        points = _decode_numpy(data, ext, name_or_ext)
    elif ext in (".ply", ".pcd"):
        points = _decode_open3d(data, ext, name_or_ext)
    else:
        raise PointCloudDecodeError(
            "unsupported", f"{name_or_ext!r} is not a point cloud format we read ({', '.join(SUFFIXES)})"
        )
    return _clean(points, name_or_ext)


def read_pointcloud(uri: str) -> np.ndarray:
    """Read and decode the point cloud at ``uri`` (any storage URL)."""
    return decode_pointcloud(storage.read_bytes(uri), uri)


def to_organised(points: np.ndarray, size: int = 224) -> np.ndarray:
    """Rasterise an ``[N, 3]`` cloud onto a ``[size, size, 3]`` grid (zeros where no point falls).

    The x/y extent of the valid points is mapped onto the grid with equal scale on both axes (centred);
    where several points fall in one cell, the one with the smallest z (closest to a camera looking
    down +z) wins. Organised ``[H, W, 3]`` input is returned unchanged.
    """
    if points.ndim == 3:
        return points
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    pts = pts[np.any(pts != 0, axis=1)]
    grid = np.zeros((size, size, 3), dtype=np.float32)
    if len(pts) == 0:
        return grid
    lo = pts[:, :2].min(axis=0)
    span = float((pts[:, :2].max(axis=0) - lo).max()) or 1.0
    offset = (span - (pts[:, :2].max(axis=0) - lo)) / 2
    cells = np.clip(((pts[:, :2] - lo + offset) / span * (size - 1)).round().astype(np.int64), 0, size - 1)
    order = np.argsort(-pts[:, 2], kind="stable")  # later writes win: the smallest z is written last
    flat = cells[order, 1] * size + cells[order, 0]
    grid.reshape(-1, 3)[flat] = pts[order]
    return grid


def valid_mask(xyz: np.ndarray) -> np.ndarray:
    """Boolean mask of present points (any nonzero coordinate), shape ``xyz.shape[:-1]``."""
    return np.any(xyz != 0, axis=-1)


# ------------------------------------------------------------------------------------------ decoders


def _suffix(name_or_ext: str) -> str:
    name = name_or_ext.lower().split("?", 1)[0]
    ext = os.path.splitext(name)[1] or ("." + name.lstrip("."))
    return ext


def _decode_tiff(data: bytes, name: str) -> np.ndarray:
    import tifffile

    try:
        arr = tifffile.imread(io.BytesIO(data))
    except Exception as e:  # tifffile raises many types for corrupt files
        raise PointCloudDecodeError("corrupt", f"cannot read TIFF {name!r}: {e}") from e
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise PointCloudDecodeError(
            "shape", f"TIFF {name!r} has shape {arr.shape}; an organised xyz cloud is [H, W, 3]"
        )
    return arr


def _decode_numpy(data: bytes, ext: str, name: str) -> np.ndarray:
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:
        raise PointCloudDecodeError("corrupt", f"cannot read {ext} {name!r}: {e}") from e
    if ext == ".npz":
        keys = list(loaded.keys())
        key = next((k for k in ("xyz", "points", "pc") if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise PointCloudDecodeError("shape", f"{name!r} holds {keys}; name the array 'xyz' or 'points'")
        loaded = loaded[key]
    arr = np.asarray(loaded)
    if arr.shape[-1:] != (3,) or arr.ndim not in (2, 3):
        raise PointCloudDecodeError("shape", f"{name!r} has shape {arr.shape}; want [N, 3] or [H, W, 3]")
    return arr


def _decode_open3d(data: bytes, ext: str, name: str) -> np.ndarray:
    import open3d as o3d

    fd, path = tempfile.mkstemp(suffix=ext)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        cloud = o3d.io.read_point_cloud(path, format=ext.lstrip("."))
    finally:
        os.unlink(path)
    arr = np.asarray(cloud.points)
    if arr.size == 0:
        raise PointCloudDecodeError("empty", f"open3d read no points from {name!r} (corrupt or empty {ext})")
    return arr


def _clean(arr: np.ndarray, name: str) -> np.ndarray:
    if not np.issubdtype(arr.dtype, np.number):
        raise PointCloudDecodeError("dtype", f"{name!r} holds {arr.dtype}, not numbers")
    out = np.array(arr, dtype=np.float32, copy=True)
    bad = ~np.isfinite(out).all(axis=-1)
    out[bad] = 0.0
    return out
