"""CPU stage: bytes -> decoded image (and point cloud) -> the detector's preprocessed arrays.

Runs as stateless Ray tasks (``map_batches`` with the default task pool). The task reads its items' bytes
itself through :func:`adray.storage.read_object` (:func:`fetch_batch`: a thread per read, so a batch's
reads overlap and decoding starts with the first object that arrives), which tells a missing object
(``not_found``) from one that could not be read now (403, throttling, 5xx, timeouts, resets: retried with
backoff, then ``read_error``, which re-inspection retries). Ray Data's ``download()`` expression could not:
it turns every read error into null bytes. An optional allow-list of prefixes refuses other URIs
(``not_allowed``) before anything is read. Every input row leaves as one
output row: a bad item (missing object, zero bytes, truncated or corrupt image, decompression bomb, a
point cloud that is too large, truncated, pickled, has no valid points or the wrong shape, a preprocess
failure, any exception at all while handling the item) gets ``status`` = its error kind and a readable
``error`` instead of raising, so one bad file never fails the task (which Ray would retry, then fail the
run). Errors describe files by size and format name, never by their content (:mod:`adray.io.sniff`).
Each row keeps the image's original ``(H, W)`` so the anomaly map can be resized back to input
resolution before it is stored (``orig_h``, ``orig_w``, and ``map_frame`` where a detector's preprocessing
placed the image on a larger canvas, as M3DM's square padding does: see
:func:`adray.io.masks.map_to_image`), and a ``note`` when decoding changed pixels in a way worth saying (an
image scaled from fewer significant bits than stored).

Images stored with more than 8 bits are scaled from ``bit_depth`` bits: the item's ``bit_depth`` manifest
column where set, else the run's ``bit_depth``, else detected per image (:func:`adray.io.images.scale_wide`).

Preprocessed arrays travel packed into one binary column (:func:`pack_arrays`, a safetensors buffer): the
scoring actor stacks only the rows that decoded, so a batch of failures never needs a placeholder of the
detector's shapes.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import safetensors.numpy

from adray import storage
from adray.io.images import ImageDecodeError, decode_image_noted
from adray.io.masks import MAP_FRAME_KEY
from adray.io.pointclouds import DEFAULT_MAX_POINTS, PointCloudDecodeError, decode_scan_pointcloud
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
#: Concurrent object reads per decode task (I/O bound: threads wait on the network, not the CPU).
READ_THREADS = 16


def decode_batch(
    batch: pa.Table,
    *,
    spec: DetectorSpec,
    max_pixels: int,
    needs_xyz: bool,
    max_points: int = DEFAULT_MAX_POINTS,
    bit_depth: int | None = None,
    allow_prefixes: tuple[str, ...] = (),
    read_attempts: int = storage.READ_ATTEMPTS,
) -> pa.Table:
    """``map_batches`` UDF (pyarrow format): read, decode and preprocess every row, never raising per item.

    The bytes come from ``image_bytes`` / ``pc_bytes`` columns when the batch has them (null = missing),
    else they are read here (:func:`fetch_batch`, with ``allow_prefixes`` and ``read_attempts``). The
    ``uri`` and ``pc_uri`` columns leave without user info (credentials). Pass-through columns keep their
    Arrow types (a numpy round trip would turn all-null strings into NaN).
    """
    detectors = cached_detector_set(spec)
    n = batch.num_rows
    status: list[str] = ["ok"] * n
    error: list[str | None] = [None] * n
    note: list[str | None] = [None] * n
    packed: list[bytes | None] = [None] * n
    height = [0] * n
    width = [0] * n
    map_frame: list[list[int] | None] = [None] * n
    depths = (
        batch.column(BIT_DEPTH_COLUMN).to_pylist() if BIT_DEPTH_COLUMN in batch.column_names else [None] * n
    )
    raw_uris = batch.column("uri").to_pylist()
    raw_pc_uris = batch.column("pc_uri").to_pylist()
    uris = [storage.redact_url(u) for u in raw_uris]
    pc_uris = [storage.redact_url(u) for u in raw_pc_uris]
    categories = batch.column("category").to_pylist()
    item_ids = batch.column("item_id").to_pylist()
    skips = _catalog_skips(batch, uris)
    if IMAGE_BYTES in batch.column_names:
        images = batch.column(IMAGE_BYTES).to_pylist()
        clouds = batch.column(PC_BYTES).to_pylist() if PC_BYTES in batch.column_names else [None] * n
        fetched = [_Given(images[i], clouds[i]) for i in range(n)]
        pool = None
    else:
        pool = ThreadPoolExecutor(max_workers=max(1, min(READ_THREADS, n)))
        wanted = [i for i in range(n) if skips[i] is None]  # the catalog's skipped files are never read
        reads = iter(
            fetch_batch(
                pool,
                [raw_uris[i] for i in wanted],
                [raw_pc_uris[i] if needs_xyz else None for i in wanted],
                allow_prefixes,
                read_attempts,
            )
        )
        fetched = [_Given(None, None) if skips[i] else next(reads) for i in range(n)]
    try:
        for i in range(n):
            sample, problem = None, None
            if skips[i]:
                status[i], error[i] = skips[i]
                continue
            image_bytes, pc_bytes, read_problem = fetched[i].result()
            if read_problem:
                status[i], error[i] = read_problem
                continue
            try:
                item_bits = _item_bit_depth(depths[i], bit_depth)
            except ValueError as e:
                problem = ("unsupported", f"{uris[i]}: {e}")
            else:
                sample, problem = decode_sample(
                    image_bytes=image_bytes,
                    pc_bytes=pc_bytes,
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
                    arrays = dict(detectors.preprocess(categories[i], sample))
                    frame = arrays.pop(MAP_FRAME_KEY, None)  # where the image sits on the model's grid
                    map_frame[i] = None if frame is None else [int(v) for v in np.asarray(frame).ravel()]
                    packed[i] = pack_arrays(arrays)
                except Exception as e:  # a detector's preprocess must not take the whole batch down
                    text = storage.redact_text(f"preprocess failed: {type(e).__name__}: {e}")
                    problem = ("error", text[:_MAX_ERROR_CHARS])
            if problem:
                status[i], error[i] = problem
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    out = batch.select([c for c in PASS_THROUGH if c not in ("uri", "pc_uri")])
    for name, values, typ in (
        ("uri", uris, batch.schema.field("uri").type),
        ("pc_uri", pc_uris, batch.schema.field("pc_uri").type),
        ("status", status, pa.string()),
        ("error", error, pa.string()),
        ("note", note, pa.string()),
        ("pre", packed, pa.binary()),
        ("orig_h", height, pa.int32()),
        ("orig_w", width, pa.int32()),
        ("map_frame", map_frame, pa.list_(pa.int32())),
    ):
        out = out.append_column(name, pa.array(values, typ))
    return out


def _catalog_skips(batch: pa.Table, uris: list[str]) -> list[tuple[str, str] | None]:
    """Per row, ``(status, error)`` from the manifest's ``skip_status`` / ``skip_reason`` (a file the catalog
    keeps so that it gets its row, but that is not to be read: refused name, not an image, zero bytes)."""
    if "skip_status" not in batch.column_names:
        return [None] * batch.num_rows
    statuses = batch.column("skip_status").to_pylist()
    reasons = batch.column("skip_reason").to_pylist() if "skip_reason" in batch.column_names else statuses
    return [(s, f"{u}: {r or s}") if s else None for s, r, u in zip(statuses, reasons, uris)]


ReadOutcome = tuple[Any, Any, "tuple[str, str] | None"]  # image bytes, point-cloud bytes, (status, error)


class _Given:
    """Bytes a caller already read (``image_bytes`` / ``pc_bytes`` columns), shaped like a read's future."""

    def __init__(self, image: Any, cloud: Any) -> None:
        self._outcome: ReadOutcome = (image, cloud, None)

    def result(self) -> ReadOutcome:
        return self._outcome


def fetch_batch(
    pool: ThreadPoolExecutor,
    uris: list[str],
    pc_uris: list[Any],
    allow_prefixes: tuple[str, ...] = (),
    attempts: int = storage.READ_ATTEMPTS,
) -> list[Future[ReadOutcome]]:
    """Start reading each item's image (and point cloud where ``pc_uris[i]`` is set) on ``pool``; one
    future per item, in order, each giving ``(image_bytes, pc_bytes, None)`` or
    ``(None, None, (status, error))``: ``not_allowed`` (not under ``allow_prefixes``), ``not_found`` (the
    object does not exist), ``read_error`` (could not be read now, after the retries of
    :func:`adray.storage.read_object`), ``unsupported`` (a URL no filesystem here can read)."""
    return [pool.submit(read_item, u, p, allow_prefixes, attempts) for u, p in zip(uris, pc_uris)]


def read_item(
    uri: str, pc_uri: Any, allow_prefixes: tuple[str, ...] = (), attempts: int = storage.READ_ATTEMPTS
) -> ReadOutcome:
    """Read one item's bytes; see :func:`fetch_batch`. Never raises."""
    targets = [("", uri)] + ([("point cloud ", pc_uri)] if pc_uri else [])
    if allow_prefixes:
        for what, url in targets:
            if not any(storage.is_under_prefix(url, p) for p in allow_prefixes):
                rule = ", ".join(storage.redact_url(p) for p in allow_prefixes)
                text = f"{what}{storage.redact_url(url)} is not under any --allow-prefix ({rule})"
                return None, None, ("not_allowed", text)
    out: list[Any] = []
    for what, url in targets:
        try:
            out.append(storage.read_object(url, attempts=attempts))
        except FileNotFoundError:
            return None, None, ("not_found", f"{what}{storage.redact_url(url)} does not exist")
        except storage.UnreadableError as e:
            return None, None, ("read_error", f"{what}{e}"[:_MAX_ERROR_CHARS])
        except storage.StorageError as e:  # no filesystem for this URL: a property of the item
            return None, None, ("unsupported", storage.redact_text(f"{what}{e}")[:_MAX_ERROR_CHARS])
        except Exception as e:  # anything else is retryable rather than a verdict on the item
            text = f"{what}could not read {storage.redact_url(url)}: {storage.read_failure(e)}"
            return None, None, ("read_error", text[:_MAX_ERROR_CHARS])
    return out[0], (out[1] if len(out) > 1 else None), None


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

    ``sample`` holds ``image`` (uint8 ``[H, W, 3]``), ``xyz`` (float32 ``[H, W, 3]``; an unorganised cloud
    rasterised onto the image's grid, :func:`adray.io.pointclouds.decode_scan_pointcloud`) when ``needs_xyz``,
    and ``note`` (str or None, see :func:`adray.io.images.decode_image_noted`). An unexpected exception of
    a decoder becomes ``corrupt`` (the same bytes would fail again), a ``MemoryError`` ``error`` (retryable).
    """
    if image_bytes is None:
        return None, ("not_found", f"{uri} does not exist")
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
        return None, ("not_found", f"point cloud {pc_uri} does not exist")
    pc_data = bytes(pc_bytes)
    try:  # the reader the M3DM build uses too: an unorganised cloud is rasterised onto the image grid
        xyz = decode_scan_pointcloud(pc_data, str(pc_uri), image.shape, max_points=max_points)
    except PointCloudDecodeError as e:
        return None, (_POINTCLOUD_STATUS.get(e.kind, "corrupt"), f"{pc_uri}: point cloud {e}")
    except Exception as e:
        return None, _unexpected(e, f"{pc_uri}: point cloud", pc_data)
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
    """Named arrays (numpy or torch, any shape) as one safetensors buffer (``safetensors.numpy.save``: a
    JSON header of dtypes and shapes, then the raw little-endian bytes; no pickle). Raises ``ValueError``
    for a dtype safetensors cannot hold (object, complex)."""
    try:
        return safetensors.numpy.save({k: np.ascontiguousarray(_to_numpy(v)) for k, v in arrays.items()})
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"cannot pack arrays {sorted(arrays)}: {e}") from e


def unpack_arrays(blob: bytes) -> dict[str, np.ndarray]:
    """The arrays of :func:`pack_arrays`, dtypes and shapes as packed (``safetensors.numpy.load``)."""
    return safetensors.numpy.load(bytes(blob))


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)
