"""What a point-cloud file declares about its size, read from the header before anything is allocated.

A 115-byte PLY header may declare 10^9 vertices; a reader that trusts it reserves tens of GB before it
finds out the data is not there. Each check here reads only the header (PLY / PCD text lines, the NPY
header dictionary, TIFF tags) and raises :class:`PointCloudDecodeError`:

- ``too_large`` when the declared points exceed ``max_points`` (points = vertices for PLY, ``POINTS`` or
  ``WIDTH * HEIGHT`` for PCD, elements / 3 for arrays);
- ``corrupt`` when the header is unreadable or declares more data than the file holds (truncated: for
  binary layouts the exact size, for text layouts a lower bound of two characters per value);
- ``unsupported`` for NumPy object arrays (stored pickled; adray never unpickles).

Messages give numbers from the header and sizes, never text quoted from the file.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

#: PLY and PCD headers longer than this are refused (real ones are a few hundred bytes).
HEADER_LIMIT = 1 << 16

_PLY_TYPE_BYTES = {
    "char": 1, "int8": 1, "uchar": 1, "uint8": 1,
    "short": 2, "int16": 2, "ushort": 2, "uint16": 2,
    "int": 4, "int32": 4, "uint": 4, "uint32": 4, "float": 4, "float32": 4,
    "double": 8, "float64": 8,
}  # fmt: skip


class PointCloudDecodeError(ValueError):
    """A point cloud could not be decoded; ``kind`` is a short machine-readable reason."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


def check_points(points: int, max_points: int, what: str) -> None:
    """Raise ``too_large`` when ``points`` (as declared by ``what``) is over ``max_points``."""
    if points > max_points:
        raise PointCloudDecodeError(
            "too_large",
            f"{what} declares {points} points, over the limit of {max_points} "
            "(raise max_points / --max-points if such clouds are expected)",
        )


def check_ply(data: bytes, max_points: int, name: str) -> None:
    """Check a PLY header: vertex count within ``max_points`` and enough bytes after ``end_header``."""
    end = data.find(b"end_header", 0, HEADER_LIMIT)
    if not data.startswith((b"ply\n", b"ply\r\n")) or end < 0:
        raise PointCloudDecodeError("corrupt", f"{name!r} has no PLY header in its first {HEADER_LIMIT} bytes")
    newline = data.find(b"\n", end)
    available = len(data) - (newline + 1 if newline >= 0 else len(data))
    fmt, element, vertices, row_bytes, n_props, fixed = "", "", None, 0, 0, True
    for line in data[:end].decode("ascii", "replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "format":
            fmt = parts[1]
        elif len(parts) >= 3 and parts[0] == "element":
            element = parts[1]
            if element == "vertex":
                vertices = _count(parts[2], f"PLY {name!r} vertex count")
        elif len(parts) >= 2 and parts[0] == "property" and element == "vertex":
            n_props += 1
            size = _PLY_TYPE_BYTES.get(parts[1])
            fixed = fixed and size is not None  # a list property makes rows variable
            row_bytes += size or 0
    if vertices is None:
        raise PointCloudDecodeError("empty", f"PLY {name!r} declares no vertex element")
    check_points(vertices, max_points, f"PLY {name!r}")
    if fmt.startswith("binary") and fixed:
        need = vertices * row_bytes
    elif fmt == "ascii":
        need = max(0, vertices * n_props * 2 - 1)
    else:
        need = 0
    _check_truncation(need, available, f"PLY {name!r}", f"{vertices} vertices")


def check_pcd(data: bytes, max_points: int, name: str) -> None:
    """Check a PCD header: ``POINTS`` / ``WIDTH * HEIGHT`` within ``max_points``, enough data bytes."""
    fields: dict[str, list[str]] = {}
    pos, layout = 0, None
    while pos < min(len(data), HEADER_LIMIT):
        newline = data.find(b"\n", pos)
        newline = len(data) if newline < 0 else newline
        parts = data[pos:newline].decode("ascii", "replace").split()
        pos = newline + 1
        if not parts or parts[0].startswith("#"):
            continue
        fields[parts[0].upper()] = parts[1:]
        if parts[0].upper() == "DATA":
            layout = parts[1].lower() if len(parts) > 1 else ""
            break
    if layout is None:
        raise PointCloudDecodeError("corrupt", f"{name!r} has no PCD header in its first {HEADER_LIMIT} bytes")
    what = f"PCD {name!r}"
    width = _count(_first(fields, "WIDTH", "1"), f"{what} WIDTH")
    height = _count(_first(fields, "HEIGHT", "1"), f"{what} HEIGHT")
    points = _count(_first(fields, "POINTS", str(width * height)), f"{what} POINTS")
    check_points(max(points, width * height), max_points, what)
    sizes = [_count(s, f"{what} SIZE") for s in fields.get("SIZE", [])]
    counts = [_count(c, f"{what} COUNT") for c in fields.get("COUNT", [])] or [1] * len(sizes)
    row_bytes = sum(s * c for s, c in zip(sizes, counts))
    available = max(0, len(data) - pos)
    if layout == "binary":
        _check_truncation(points * row_bytes, available, what, f"{points} points")
    elif layout == "binary_compressed":
        if available < 8:
            _check_truncation(8, available, what, "a compressed block")
        compressed, uncompressed = struct.unpack_from("<II", data, pos)
        if uncompressed > points * row_bytes:
            raise PointCloudDecodeError(
                "corrupt",
                f"{what} declares {uncompressed} uncompressed bytes for {points} points of {row_bytes} bytes",
            )
        _check_truncation(compressed, available - 8, what, "its compressed block")
    elif layout == "ascii":
        _check_truncation(max(0, points * sum(counts) * 2 - 1), available, what, f"{points} points")


def read_npy_header(fp: Any) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` from the header of the ``.npy`` stream ``fp`` (left just after the header)."""
    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = npformat.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = npformat.read_array_header_2_0(fp)
        else:  # 3.0 (utf-8 field names): numpy has no public reader for it
            from numpy.lib import _format_impl

            shape, _, dtype = _format_impl._read_array_header(fp, version)
    except Exception as e:  # numpy's messages quote the header; say only that it is unreadable
        raise PointCloudDecodeError("corrupt", f"unreadable .npy header ({type(e).__name__})") from e
    return tuple(int(s) for s in shape), dtype


def check_array(shape: tuple[int, ...], dtype: np.dtype, available: int, max_points: int, what: str) -> None:
    """Check a declared array: no Python objects, at most ``max_points`` xyz triples, not truncated."""
    if dtype.hasobject:
        raise PointCloudDecodeError(
            "unsupported",
            f"{what} holds Python objects (an object array, stored pickled); adray never unpickles: "
            "save a float array of shape [N, 3] or [H, W, 3]",
        )
    elements = math.prod(shape)
    check_points(-(-elements // 3), max_points, f"{what} of shape {shape}")
    _check_truncation(elements * dtype.itemsize, available, what, f"shape {shape} of {dtype.str}")


def _check_truncation(need: int, available: int, what: str, declared: str) -> None:
    if need > available:
        raise PointCloudDecodeError(
            "corrupt", f"{what} is truncated: its header declares {declared} ({need} bytes), {available} follow"
        )


def _count(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise PointCloudDecodeError("corrupt", f"{what} is not a non-negative integer")
    return value


def _first(fields: dict[str, list[str]], key: str, default: str) -> str:
    values = fields.get(key)
    return values[0] if values else default
