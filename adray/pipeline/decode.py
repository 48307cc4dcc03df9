"""CPU stage: bytes -> decoded image (and point cloud) -> the detector's preprocessed arrays.

Runs as stateless Ray tasks (``map_batches`` with the default task pool). Every input row leaves as one
output row: a bad item (missing object, zero bytes, truncated or corrupt image, decompression bomb, a
point cloud that is too large, truncated, pickled, has no valid points or the wrong shape, a preprocess
failure, any exception at all while handling the item) gets ``status`` = its error kind and a readable
``error`` instead of raising, so one bad file never fails the task (which Ray would retry, then fail the
run). Errors describe files by size and format name, never by their content (:mod:`adray.io.sniff`).
Each row keeps the image's original ``(H, W)`` so the anomaly map can be resized back to input
resolution before it is stored, and a ``note`` when decoding changed pixels in a way worth saying (an
image scaled from fewer significant bits than stored).

Images stored with more than 8 bits are scaled from ``bit_depth`` bits: the item's ``bit_depth`` manifest
column where set, else the run's ``bit_depth``, else detected per image (:func:`adray.io.images.scale_wide`).

Preprocessed arrays travel packed into one binary column (:func:`pack_arrays`): the scoring actor stacks
only the rows that decoded, so a batch of failures never needs a placeholder of the detector's shapes.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import pyarrow as pa

from adray.io.images import ImageDecodeError, decode_image_noted
from adray.io.pointclouds import DEFAULT_MAX_POINTS, PointCloudDecodeError, decode_pointcloud, valid_mask
from adray.io.sniff import describe_bytes, describe_exception
from adray.pipeline.detector_set import cached_detector_set
from adray.pipeline.spec import DetectorSpec

#: Columns copied from the manifest (plus the detector version chosen on the driver) to the result row.
PASS_THROUGH = (
    "item_id",
    "uri",
    "pc_uri",
    "category",
    "label",
    "defect_type",
    "content_token",
    "detector_version",
)
IMAGE_BYTES = "image_bytes"
PC_BYTES = "pc_bytes"
#: Optional manifest column: significant bits of an item's >8-bit image (overrides the run's bit_depth).
BIT_DEPTH_COLUMN = "bit_depth"
_POINTCLOUD_STATUS = {
    "empty": "empty",
    "corrupt": "corrupt",
    "unsupported": "unsupported",
    "too_large": "too_large",
    "dtype": "unsupported",
}
_MAX_ERROR_CHARS = 500


def decode_batch(
    batch: pa.Table,
    *,
    spec: DetectorSpec,
    max_pixels: int,
    needs_xyz: bool,
    max_points: int = DEFAULT_MAX_POINTS,
    bit_depth: int | None = None,
) -> pa.Table:
    """``map_batches`` UDF (pyarrow format): decode and preprocess every row, never raising per item.

    Pass-through columns keep their Arrow types (a numpy round trip would turn all-null strings into NaN).
    """
    detectors = cached_detector_set(spec)
    n = batch.num_rows
    status: list[str] = ["ok"] * n
    error: list[str | None] = [None] * n
    note: list[str | None] = [None] * n
    packed: list[bytes | None] = [None] * n
    height = [0] * n
    width = [0] * n
    images = batch.column(IMAGE_BYTES).to_pylist()
    clouds = batch.column(PC_BYTES).to_pylist() if PC_BYTES in batch.column_names else [None] * n
    depths = (
        batch.column(BIT_DEPTH_COLUMN).to_pylist() if BIT_DEPTH_COLUMN in batch.column_names else [None] * n
    )
    uris = batch.column("uri").to_pylist()
    pc_uris = batch.column("pc_uri").to_pylist()
    categories = batch.column("category").to_pylist()
    item_ids = batch.column("item_id").to_pylist()
    for i in range(n):
        sample, problem = None, None
        try:
            item_bits = _item_bit_depth(depths[i], bit_depth)
        except ValueError as e:
            problem = ("unsupported", f"{uris[i]}: {e}")
        else:
            sample, problem = decode_sample(
                image_bytes=images[i],
                pc_bytes=clouds[i],
                uri=uris[i],
                pc_uri=pc_uris[i],
                max_pixels=max_pixels,
                needs_xyz=needs_xyz,
                max_points=max_points,
                bit_depth=item_bits,
            )
        if sample is not None:
            note[i] = sample.pop("note", None)
            height[i], width[i] = sample["image"].shape[:2]
            sample["category"], sample["item_id"] = categories[i], item_ids[i]
            try:
                packed[i] = pack_arrays(detectors.preprocess(categories[i], sample))
            except Exception as e:  # a detector's preprocess must not take the whole batch down
                problem = ("error", f"preprocess failed: {type(e).__name__}: {e}"[:_MAX_ERROR_CHARS])
        if problem:
            status[i], error[i] = problem
    out = batch.select(list(PASS_THROUGH))
    for name, values, typ in (
        ("status", status, pa.string()),
        ("error", error, pa.string()),
        ("note", note, pa.string()),
        ("pre", packed, pa.binary()),
        ("orig_h", height, pa.int32()),
        ("orig_w", width, pa.int32()),
    ):
        out = out.append_column(name, pa.array(values, typ))
    return out


def decode_sample(
    *,
    image_bytes: Any,
    pc_bytes: Any,
    uri: str,
    pc_uri: Any,
    max_pixels: int,
    needs_xyz: bool,
    max_points: int = DEFAULT_MAX_POINTS,
    bit_depth: int | None = None,
) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    """Decode one item: ``(sample, None)`` or ``(None, (status, error))``; never raises for bad bytes.

    ``sample`` holds ``image`` (uint8 ``[H, W, 3]``), ``xyz`` (float32 ``[H, W, 3]``) when ``needs_xyz``,
    and ``note`` (str or None, see :func:`adray.io.images.decode_image_noted`). An unexpected exception of
    a decoder becomes ``corrupt`` (the same bytes would fail again), a ``MemoryError`` ``error`` (retryable).
    """
    if image_bytes is None:
        return None, ("not_found", f"could not read {uri} (missing object or read error)")
    data = bytes(image_bytes)
    try:
        decoded = decode_image_noted(data, max_pixels=max_pixels, bit_depth=bit_depth)
    except ImageDecodeError as e:
        return None, (e.kind, f"{uri}: {e}")
    except Exception as e:
        return None, _unexpected(e, f"{uri}: image", data)
    sample: dict[str, Any] = {"image": decoded.rgb, "note": decoded.note}
    image = decoded.rgb
    if not needs_xyz:
        return sample, None
    if pc_bytes is None:
        return None, ("not_found", f"could not read point cloud {pc_uri} (missing object or read error)")
    pc_data = bytes(pc_bytes)
    try:
        xyz = decode_pointcloud(pc_data, str(pc_uri), max_points=max_points)
    except PointCloudDecodeError as e:
        return None, (_POINTCLOUD_STATUS.get(e.kind, "corrupt"), f"{pc_uri}: point cloud {e}")
    except Exception as e:
        return None, _unexpected(e, f"{pc_uri}: point cloud", pc_data)
    if xyz.ndim != 3:
        return None, ("corrupt", f"{pc_uri}: point cloud is unorganised {xyz.shape}; want [H, W, 3]")
    if xyz.shape[:2] != image.shape[:2]:
        return None, (
            "corrupt",
            f"{pc_uri}: point cloud grid {xyz.shape[:2]} does not match the image {image.shape[:2]}",
        )
    if not valid_mask(xyz).any():
        return None, ("empty", f"{pc_uri}: point cloud has no valid points (all zero, NaN or inf)")
    sample["xyz"] = xyz
    return sample, None


def _unexpected(exc: Exception, what: str, data: bytes) -> tuple[str, str]:
    if isinstance(exc, MemoryError):
        return "error", f"{what} ran out of memory while decoding ({describe_bytes(data)})"
    return "corrupt", f"{what} could not be decoded ({describe_exception(exc)}; {describe_bytes(data)})"


def _item_bit_depth(declared: Any, default: int | None) -> int | None:
    """The manifest's ``bit_depth`` cell (int, float or text; null/NaN/empty = not set) over ``default``."""
    if declared is None or declared == "" or (isinstance(declared, float) and math.isnan(declared)):
        return default
    try:
        value = float(declared)
    except (TypeError, ValueError):
        value = -1.0
    if not value.is_integer() or not 1 <= value <= 16:
        raise ValueError("the manifest's bit_depth must be an integer from 1 to 16")
    return int(value)


# ------------------------------------------------------------------------------------------ packing


def pack_arrays(arrays: dict[str, Any]) -> bytes:
    """Pack named arrays as ``<u32 header length><JSON header><raw bytes>`` (no pickle)."""
    header: dict[str, list[Any]] = {}
    chunks: list[bytes] = []
    offset = 0
    for key in sorted(arrays):
        a = np.ascontiguousarray(_to_numpy(arrays[key]))
        raw = a.tobytes()
        header[key] = [a.dtype.str, list(a.shape), offset, len(raw)]
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    return struct.pack("<I", len(head)) + head + b"".join(chunks)


def unpack_arrays(blob: bytes) -> dict[str, np.ndarray]:
    (n,) = struct.unpack_from("<I", blob, 0)
    header = json.loads(bytes(blob[4 : 4 + n]))
    body = memoryview(blob)[4 + n :]
    return {
        key: np.frombuffer(body[off : off + size], dtype=np.dtype(dt)).reshape(shape)
        for key, (dt, shape, off, size) in header.items()
    }


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)
