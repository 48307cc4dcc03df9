"""Point-cloud decoding: MVTec 3D-AD organised xyz TIFFs, PLY / PCD (through open3d), NPY / NPZ.

Every decoder returns float32 with missing points as exact zeros (the MVTec 3D-AD convention; NaN and
inf are turned into zeros too):

- TIFF: organised ``[H, W, 3]``;
- NPY / NPZ: ``[H, W, 3]`` (organised) or ``[N, 3]`` as stored (NPZ: key ``xyz``, ``points`` or the only array);
- PLY / PCD: unorganised ``[N, 3]``; open3d reads files only, so the bytes go through a temporary file.

Every format's header is checked before any point is allocated (:mod:`adray.io.pointcloud_headers`):
more than ``max_points`` declared is ``too_large``, a header declaring more data than the file holds is
``corrupt``, a NumPy object array is ``unsupported`` (never unpickled). Any other failure of a reader is
``corrupt`` as well: :func:`decode_pointcloud` raises :class:`PointCloudDecodeError` and nothing else
(except ``MemoryError``). Messages describe the bytes (size, format name) and never quote them.

:func:`to_organised` rasterises an unorganised cloud onto an ``[H, W, 3]`` grid (orthographic along z),
which is what the organised-cloud detectors (M3DM) take. :func:`decode_scan_pointcloud` is the one reader
of an item's cloud for building and for scoring alike: organised clouds must be on their image's pixel
grid, unorganised ones (``[N, 3]``: PLY, PCD, NPY) are rasterised onto it, so whatever can be fitted can
be scored.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile

import numpy as np

from adray import storage
from adray.io import pointcloud_headers as headers
from adray.io.pointcloud_headers import PointCloudDecodeError
from adray.io.sniff import describe_bytes, describe_exception

__all__ = [
    "DEFAULT_MAX_POINTS",
    "SUFFIXES",
    "PointCloudDecodeError",
    "decode_pointcloud",
    "decode_scan_pointcloud",
    "organise_for_image",
    "read_pointcloud",
    "to_organised",
    "valid_mask",
]

SUFFIXES = (".tiff", ".tif", ".ply", ".pcd", ".npy", ".npz")
#: Default bound on declared points (xyz triples): 64e6 float32 points are 768 MB.
DEFAULT_MAX_POINTS = 64_000_000
#: NPZ arrays looked for by name, in order, when the archive holds more than one.
NPZ_KEYS = ("xyz", "points", "pc")


def decode_pointcloud(data: bytes, name_or_ext: str, *, max_points: int = DEFAULT_MAX_POINTS) -> np.ndarray:
    """Decode point-cloud bytes; ``name_or_ext`` is a file name, URI or suffix (``"tiff"``, ``".ply"``).

    Returns float32 ``[H, W, 3]`` or ``[N, 3]``. Raises :class:`PointCloudDecodeError` (``kind``: empty,
    corrupt, too_large, unsupported, shape, dtype) for every unreadable input.
    """
    ext = _suffix(name_or_ext)
    if not data:
        raise PointCloudDecodeError("empty", f"no bytes to decode for {name_or_ext!r}")
    try:
        if ext in (".tiff", ".tif"):
            points = _decode_tiff(data, name_or_ext, max_points)
        elif ext in (".npy", ".npz"):
            points = _decode_numpy(data, ext, name_or_ext, max_points)
        elif ext in (".ply", ".pcd"):
            points = _decode_open3d(data, ext, name_or_ext, max_points)
        else:
            raise PointCloudDecodeError(
                "unsupported", f"{name_or_ext!r} is not a point cloud format we read ({', '.join(SUFFIXES)})"
            )
        return _clean(points, name_or_ext)
    except (PointCloudDecodeError, MemoryError):
        raise
    except Exception as e:  # a reader's own failure: the file is unreadable, whatever the exception
        raise PointCloudDecodeError(
            "corrupt", f"cannot read {ext} {name_or_ext!r} ({describe_exception(e)}; {describe_bytes(data)})"
        ) from e


def read_pointcloud(uri: str, *, max_points: int = DEFAULT_MAX_POINTS) -> np.ndarray:
    """Read and decode the point cloud at ``uri`` (any storage URL)."""
    return decode_pointcloud(storage.read_bytes(uri), uri, max_points=max_points)


def to_organised(points: np.ndarray, size: int | tuple[int, int] = 224) -> np.ndarray:
    """Rasterise an ``[N, 3]`` cloud onto a ``[H, W, 3]`` grid (zeros where no point falls).

    ``size`` is ``S`` (a square grid) or ``(H, W)``. The x/y extent of the valid points is fitted into the
    grid with equal scale on both axes (x along columns, y along rows), centred; where several points fall
    in one cell, the one with the smallest z (closest to a camera looking down +z) wins. Organised
    ``[H, W, 3]`` input is returned unchanged.
    """
    if points.ndim == 3:
        return points
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    pts = pts[np.any(pts != 0, axis=1)]
    grid = np.zeros((h, w, 3), dtype=np.float32)
    if len(pts) == 0:
        return grid
    lo = pts[:, :2].min(axis=0)
    extent = pts[:, :2].max(axis=0) - lo  # (x, y)
    cells_wide = np.array([max(w - 1, 1), max(h - 1, 1)], dtype=np.float64)
    step = float((extent / cells_wide).max()) or 1.0  # scene units per cell, the same on both axes
    offset = (cells_wide - extent / step) / 2
    cells = ((pts[:, :2] - lo) / step + offset).round().astype(np.int64)
    cells = np.clip(cells, 0, np.array([w - 1, h - 1]))
    order = np.argsort(-pts[:, 2], kind="stable")  # later writes win: the smallest z is written last
    flat = cells[order, 1] * w + cells[order, 0]
    grid.reshape(-1, 3)[flat] = pts[order]
    return grid


def organise_for_image(points: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The organised ``[H, W, 3]`` cloud of an item whose image is ``shape = (H, W, ...)``.

    An organised cloud must be on the image's pixel grid (raises :class:`PointCloudDecodeError` ``shape``
    otherwise); an unorganised ``[N, 3]`` cloud is rasterised onto it with :func:`to_organised`.
    """
    h, w = int(shape[0]), int(shape[1])
    if points.ndim == 3:
        if points.shape[:2] != (h, w):
            raise PointCloudDecodeError("shape", f"grid {points.shape[:2]} does not match the image {(h, w)}")
        return points
    return to_organised(points, (h, w))


def decode_scan_pointcloud(
    data: bytes, name: str, image_shape: tuple[int, ...], *, max_points: int = DEFAULT_MAX_POINTS
) -> np.ndarray:
    """Decode an item's point cloud onto its image's grid: float32 ``[H, W, 3]``, zeros = no point.

    The one reader for building and scoring: :func:`decode_pointcloud`, then :func:`organise_for_image`.
    Raises :class:`PointCloudDecodeError` as :func:`decode_pointcloud` does, ``shape`` for an organised
    cloud on another grid than the image, ``empty`` when no valid point is left.
    """
    xyz = organise_for_image(decode_pointcloud(data, name, max_points=max_points), image_shape)
    if not valid_mask(xyz).any():
        raise PointCloudDecodeError("empty", "has no valid points (all zero, NaN or inf)")
    return xyz


def valid_mask(xyz: np.ndarray) -> np.ndarray:
    """Boolean mask of present points (any nonzero coordinate), shape ``xyz.shape[:-1]``."""
    return np.any(xyz != 0, axis=-1)


# ------------------------------------------------------------------------------------------ decoders


def _suffix(name_or_ext: str) -> str:
    name = name_or_ext.lower().split("?", 1)[0]
    ext = os.path.splitext(name)[1] or ("." + name.lstrip("."))
    return ext


def _decode_tiff(data: bytes, name: str, max_points: int) -> np.ndarray:
    import tifffile

    try:
        tif = tifffile.TiffFile(io.BytesIO(data))
    except Exception as e:  # tifffile raises many types; its messages may quote the header
        raise PointCloudDecodeError(
            "corrupt", f"cannot read TIFF {name!r} ({describe_exception(e)}; {describe_bytes(data)})"
        ) from e
    with tif:
        if not tif.series:
            raise PointCloudDecodeError("empty", f"TIFF {name!r} holds no image")
        series = tif.series[0]
        shape = tuple(int(s) for s in series.shape)
        headers.check_points(-(-int(np.prod(shape)) // 3), max_points, f"TIFF {name!r} of shape {shape}")
        if len(shape) != 3 or shape[-1] != 3:
            raise PointCloudDecodeError(
                "shape", f"TIFF {name!r} has shape {shape}; an organised xyz cloud is [H, W, 3]"
            )
        try:
            arr = series.asarray()
        except MemoryError:
            raise
        except Exception as e:
            raise PointCloudDecodeError(
                "corrupt",
                f"TIFF {name!r} data is unreadable ({describe_exception(e)}; {describe_bytes(data)})",
            ) from e
    return arr


def _decode_numpy(data: bytes, ext: str, name: str, max_points: int) -> np.ndarray:
    if ext == ".npy":
        fp = io.BytesIO(data)
        shape, dtype = headers.read_npy_header(fp)
        headers.check_array(shape, dtype, len(data) - fp.tell(), max_points, f".npy {name!r}")
        fp.seek(0)
        arr = np.load(fp, allow_pickle=False)
    else:
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as e:
            raise PointCloudDecodeError("corrupt", f".npz {name!r} is not a readable ZIP archive") from e
        with archive:
            arrays = {n[: -len(".npy")]: n for n in archive.namelist() if n.endswith(".npy")}
            key = next((k for k in NPZ_KEYS if k in arrays), next(iter(arrays)) if len(arrays) == 1 else None)
            if key is None:
                # member names are the file's content: count them, do not list them
                raise PointCloudDecodeError(
                    "shape",
                    f".npz {name!r} holds {len(arrays)} arrays and none is named "
                    f"{', '.join(repr(k) for k in NPZ_KEYS)}; name the cloud 'xyz' or 'points'",
                )
            member = arrays[key]
            with archive.open(member) as fp:
                shape, dtype = headers.read_npy_header(fp)
                available = archive.getinfo(member).file_size - fp.tell()
            what = (
                f".npz {name!r} array {key!r}" if key in NPZ_KEYS else f".npz {name!r}"
            )  # names are content
            headers.check_array(shape, dtype, available, max_points, what)
            with archive.open(member) as fp:
                arr = np.lib.format.read_array(fp, allow_pickle=False)
    if arr.shape[-1:] != (3,) or arr.ndim not in (2, 3):
        raise PointCloudDecodeError("shape", f"{name!r} has shape {arr.shape}; want [N, 3] or [H, W, 3]")
    return arr


def _decode_open3d(data: bytes, ext: str, name: str, max_points: int) -> np.ndarray:
    # open3d trusts the header's counts and reserves memory for them: check them first
    (headers.check_ply if ext == ".ply" else headers.check_pcd)(data, max_points, name)
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
