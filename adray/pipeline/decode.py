"""CPU stage: bytes -> decoded image (and point cloud) -> the detector's preprocessed arrays.

Runs as stateless Ray tasks (``map_batches`` with the default task pool). Every input row leaves as one
output row: a bad item (missing object, zero bytes, truncated or corrupt image, decompression bomb, a
point cloud with no valid points or the wrong shape, a preprocess failure) gets ``status`` = its error
kind and a readable ``error`` instead of raising. Each row keeps the image's original ``(H, W)`` so the
anomaly map can be resized back to input resolution before it is stored.

Preprocessed arrays travel packed into one binary column (:func:`pack_arrays`): the scoring actor stacks
only the rows that decoded, so a batch of failures never needs a placeholder of the detector's shapes.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pyarrow as pa

from adray.io.images import ImageDecodeError, decode_image
from adray.io.pointclouds import PointCloudDecodeError, decode_pointcloud, valid_mask
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
_POINTCLOUD_STATUS = {"empty": "empty", "corrupt": "corrupt", "unsupported": "unsupported"}


def decode_batch(batch: pa.Table, *, spec: DetectorSpec, max_pixels: int, needs_xyz: bool) -> pa.Table:
    """``map_batches`` UDF (pyarrow format): decode and preprocess every row, never raising per item.

    Pass-through columns keep their Arrow types (a numpy round trip would turn all-null strings into NaN).
    """
    detectors = cached_detector_set(spec)
    n = batch.num_rows
    status: list[str] = ["ok"] * n
    error: list[str | None] = [None] * n
    packed: list[bytes | None] = [None] * n
    height = [0] * n
    width = [0] * n
    images = batch.column(IMAGE_BYTES).to_pylist()
    clouds = batch.column(PC_BYTES).to_pylist() if PC_BYTES in batch.column_names else [None] * n
    uris = batch.column("uri").to_pylist()
    pc_uris = batch.column("pc_uri").to_pylist()
    categories = batch.column("category").to_pylist()
    item_ids = batch.column("item_id").to_pylist()
    for i in range(n):
        sample, problem = decode_sample(
            image_bytes=images[i],
            pc_bytes=clouds[i],
            uri=uris[i],
            pc_uri=pc_uris[i],
            max_pixels=max_pixels,
            needs_xyz=needs_xyz,
        )
        if sample is not None:
            height[i], width[i] = sample["image"].shape[:2]
            sample["category"], sample["item_id"] = categories[i], item_ids[i]
            try:
                packed[i] = pack_arrays(detectors.preprocess(categories[i], sample))
            except Exception as e:  # a detector's preprocess must not take the whole batch down
                problem = ("error", f"preprocess failed: {type(e).__name__}: {e}")
        if problem:
            status[i], error[i] = problem
    out = batch.select(list(PASS_THROUGH))
    for name, values, typ in (
        ("status", status, pa.string()),
        ("error", error, pa.string()),
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
) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    """Decode one item: ``(sample, None)`` or ``(None, (status, error))``."""
    if image_bytes is None:
        return None, ("not_found", f"could not read {uri} (missing object or read error)")
    try:
        image = decode_image(bytes(image_bytes), max_pixels=max_pixels)
    except ImageDecodeError as e:
        return None, (e.kind, f"{uri}: {e}")
    sample: dict[str, Any] = {"image": image}
    if not needs_xyz:
        return sample, None
    if pc_bytes is None:
        return None, ("not_found", f"could not read point cloud {pc_uri} (missing object or read error)")
    try:
        xyz = decode_pointcloud(bytes(pc_bytes), str(pc_uri))
    except PointCloudDecodeError as e:
        return None, (_POINTCLOUD_STATUS.get(e.kind, "corrupt"), f"{pc_uri}: point cloud {e}")
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
