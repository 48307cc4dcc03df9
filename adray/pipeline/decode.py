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

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from adray import storage
from adray.io.masks import MAP_FRAME_KEY
from adray.io.pointclouds import DEFAULT_MAX_POINTS
from adray.io.samples import (
    BIT_DEPTH_COLUMN,
    MAX_ERROR_CHARS,
    ItemBytes,
    Problem,
    Sample,
    decode_item,
    decode_read,
    item_bit_depth,
    read_item_bytes,
)
from adray.pipeline.catalog_skips import catalog_skips as _catalog_skips
from adray.pipeline.detector_set import DetectorSet, cached_detector_set
from adray.pipeline.packing import pack_arrays, unpack_arrays  # noqa: F401  (public here first)
from adray.pipeline.spec import DetectorSpec, load_plugins

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
#: Manifest columns copied to the result stage when the manifest has them (``pixel_size_mm``: the item's
#: pixel size, for the areas of its defect regions, :func:`adray.pipeline.rows.finalize_batch`).
OPTIONAL_PASS_THROUGH = ("pixel_size_mm", "strategy")  # strategy: the run's --detector auto choice
IMAGE_BYTES = "image_bytes"
PC_BYTES = "pc_bytes"
#: Work-list columns of a run with several detectors (:func:`adray.pipeline.graph.merge_passes`): per
#: item, the indices of the passes (detectors) that score it and each one's detector version.
PASSES = "passes"
DETECTOR_VERSIONS = "detector_versions"
_MAX_ERROR_CHARS = MAX_ERROR_CHARS
#: Concurrent object reads per decode task (I/O bound: threads wait on the network, not the CPU).
READ_THREADS = 16


@dataclass(frozen=True)
class _Decode:
    """What one decode task needs besides its batch."""

    sets: list[DetectorSet]
    xyz_of: tuple[bool, ...]  # per pass: whether its detector needs the point cloud
    max_pixels: int
    max_points: int
    bit_depth: int | None

    def decode(self, read: ItemBytes, uri: str, pc_uri: Any, want_xyz: bool, bit_depth_cell: Any) -> Sample:
        """One item's read, decoded with this task's limits and bit depth (:func:`decode_read`)."""
        return decode_read(
            read,
            uri=uri,
            pc_uri=pc_uri,
            want_xyz=want_xyz,
            declared_bit_depth=bit_depth_cell,
            bit_depth=self.bit_depth,
            max_pixels=self.max_pixels,
            max_points=self.max_points,
        )


def decode_batch(
    batch: pa.Table,
    *,
    spec: DetectorSpec | None = None,
    max_pixels: int,
    needs_xyz: bool | Sequence[bool],
    max_points: int = DEFAULT_MAX_POINTS,
    bit_depth: int | None = None,
    allow_prefixes: tuple[str, ...] = (),
    read_attempts: int = storage.READ_ATTEMPTS,
    specs: Sequence[DetectorSpec] = (),
    names: Sequence[str] = (),
) -> pa.Table:
    """``map_batches`` UDF (pyarrow format): read, decode and preprocess every row, never raising per item.

    One detector (``spec``, ``needs_xyz`` a bool): one output row per input row. Several (``specs``,
    ``needs_xyz`` and ``names`` one per spec, input rows with the :data:`PASSES` and
    :data:`DETECTOR_VERSIONS` list columns): each item is read and decoded once, then preprocessed for
    every pass that scores it; one output row per (item, pass), grouped by pass, with ``pass_index`` and
    ``detector`` (the pass's name) columns. A point cloud is read only when a pass of the item needs it,
    and its problems fail only those passes' rows. Raises ``ValueError`` when neither form is given.

    The bytes come from ``image_bytes`` / ``pc_bytes`` columns when the batch has them (null = missing),
    else they are read here (:func:`fetch_batch`, with ``allow_prefixes`` and ``read_attempts``). The
    ``uri`` and ``pc_uri`` columns leave without user info (credentials). Pass-through columns keep their
    Arrow types (a numpy round trip would turn all-null strings into NaN).
    """
    many = PASSES in batch.column_names
    chosen = tuple(specs) if many else (spec,)
    if not chosen or any(s is None for s in chosen):
        raise ValueError("decode_batch needs spec (one detector), or specs and a passes column")
    for s in chosen:  # before anything is read: a plugin may register a storage scheme, not only detectors
        load_plugins(s.plugins)  # type: ignore[union-attr]
    xyz_of = tuple(bool(x) for x in needs_xyz) if many else (bool(needs_xyz),)  # type: ignore[union-attr]
    job = _Decode([cached_detector_set(s) for s in chosen if s], xyz_of, max_pixels, max_points, bit_depth)
    n = batch.num_rows
    passes: list[list[int]] = batch.column(PASSES).to_pylist() if many else [[0]] * n
    raw = batch.column("uri").to_pylist(), batch.column("pc_uri").to_pylist()
    out = _Rows(batch, *([storage.redact_url(u) for u in col] for col in raw))
    skips = _catalog_skips(batch, out.uris)
    want_pc = [any(xyz_of[k] for k in ks) for ks in passes]
    depths = (
        batch.column(BIT_DEPTH_COLUMN).to_pylist() if BIT_DEPTH_COLUMN in batch.column_names else [None] * n
    )
    pool = ThreadPoolExecutor(max_workers=max(1, min(READ_THREADS, n)))
    try:
        reads = _start_reads(batch, pool, raw, want_pc, skips, allow_prefixes, read_attempts)
        for i in range(n):  # decoded, preprocessed for each of its passes, then dropped: one image at a time
            skip = skips[i]
            read = reads[i].result() if skip is None else None
            sample = (
                Sample(uri=out.uris[i]).fail("rgb", skip)
                if skip is not None
                else job.decode(read, out.uris[i], out.pc_uris[i], want_pc[i], depths[i])
            )
            for k in passes[i]:
                out.add(i, k, sample, job)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out.table(many, names)


def merge_passes(works: Sequence[pa.Table]) -> pa.Table:
    """The work lists of a run's passes (manifest rows + ``detector_version``, one table per detector) as
    one row per item, so each item is read and decoded once: the first pass's row of the item, plus
    :data:`PASSES` (``list<int32>``: the indices in ``works`` of the passes that score it) and
    :data:`DETECTOR_VERSIONS` (``list<string>``: each one's version), sorted by ``item_id``."""
    names = next((w.column_names for w in works if w.num_rows), works[0].column_names if works else [])
    first: dict[str, tuple[int, int]] = {}
    passes: dict[str, list[int]] = {}
    versions: dict[str, list[str]] = {}
    for k, work in enumerate(works):
        for j, (item, version) in enumerate(
            zip(work.column("item_id").to_pylist(), work.column("detector_version").to_pylist())
        ):
            first.setdefault(item, (k, j))
            passes.setdefault(item, []).append(k)
            versions.setdefault(item, []).append(version)
    if not works or not first:
        empty = works[0] if works else pa.table({"item_id": pa.array([], pa.string())})
        empty = empty.append_column(PASSES, pa.array([], pa.list_(pa.int32())))
        return empty.append_column(DETECTOR_VERSIONS, pa.array([], pa.list_(pa.string())))
    takes: dict[int, list[int]] = {}
    for k, j in first.values():
        takes.setdefault(k, []).append(j)
    schema = works[min(takes)].select(names).schema
    parts = [works[k].select(names).take(pa.array(js, pa.int64())).cast(schema) for k, js in takes.items()]
    merged = pa.concat_tables(parts).sort_by("item_id")
    order = merged.column("item_id").to_pylist()
    merged = merged.append_column(PASSES, pa.array([passes[i] for i in order], pa.list_(pa.int32())))
    return merged.append_column(
        DETECTOR_VERSIONS, pa.array([versions[i] for i in order], pa.list_(pa.string()))
    )


def _start_reads(
    batch: pa.Table,
    pool: ThreadPoolExecutor,
    raw: tuple[list[Any], list[Any]],
    want_pc: list[bool],
    skips: list[Problem | None],
    allow_prefixes: tuple[str, ...],
    attempts: int,
) -> list[Any]:
    """Per row, a future of its :class:`ItemBytes` (None for a catalog skip: never read)."""
    n = batch.num_rows
    if IMAGE_BYTES in batch.column_names:  # bytes a caller already read
        images = batch.column(IMAGE_BYTES).to_pylist()
        clouds = batch.column(PC_BYTES).to_pylist() if PC_BYTES in batch.column_names else [None] * n
        return [_Given(ItemBytes(images[i], clouds[i])) for i in range(n)]
    wanted = [i for i in range(n) if skips[i] is None]
    futures = iter(
        pool.submit(
            read_item_bytes,
            raw[0][i],
            raw[1][i] if want_pc[i] else None,
            allow_prefixes=allow_prefixes,
            attempts=attempts,
        )
        for i in wanted
    )
    started = {i: next(futures) for i in wanted}
    return [started.get(i) for i in range(n)]


@dataclass
class _Rows:
    """The decode stage's output rows: one per (item, pass), in pass order."""

    batch: pa.Table
    uris: list[str]
    pc_uris: list[Any]
    entries: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)

    def add(self, i: int, k: int, sample: Sample, job: _Decode) -> None:
        row: dict[str, Any] = {"status": "ok", "error": None, "note": None, "pre": None, "map_frame": None}
        row["orig_h"] = row["orig_w"] = 0
        problem = sample.status_for(("rgb", "xyz") if job.xyz_of[k] else ("rgb",))
        if problem is None:  # decoded for this pass: keep the image's size (the map goes back to it)
            row["note"] = sample.note
            row["orig_h"], row["orig_w"] = sample.image.shape[:2]  # type: ignore[union-attr]
            row["pre"], row["map_frame"], problem = _preprocess(
                job.sets[k], sample, job.xyz_of[k], self.batch, i
            )
        if problem is not None:
            row["status"], row["error"] = problem
        self.entries.append((k, i, row))

    def table(self, many: bool, names: Sequence[str]) -> pa.Table:
        self.entries.sort(key=lambda e: (e[0], e[1]))  # grouped by pass: scoring batches stay whole
        index = [i for _, i, _ in self.entries]
        out = self.batch.take(pa.array(index, pa.int64())) if many else self.batch
        out = out.select(
            [c for c in PASS_THROUGH if c not in ("uri", "pc_uri", "detector_version")]
            + [c for c in OPTIONAL_PASS_THROUGH if c in out.column_names]
        )
        if many:
            versions = self.batch.column(DETECTOR_VERSIONS).to_pylist()
            passes = self.batch.column(PASSES).to_pylist()
            version = [versions[i][passes[i].index(k)] for k, i, _ in self.entries]
        else:
            version = self.batch.column("detector_version").to_pylist()
        out = out.append_column("detector_version", pa.array(version, pa.string()))
        rows = [r for _, _, r in self.entries]
        columns: list[tuple[str, list[Any], pa.DataType]] = [
            ("uri", [self.uris[i] for i in index], self.batch.schema.field("uri").type),
            ("pc_uri", [self.pc_uris[i] for i in index], self.batch.schema.field("pc_uri").type),
        ]
        for name, typ in _DECODED:
            columns.append((name, [r[name] for r in rows], typ))
        if many:
            columns.append(("pass_index", [k for k, _, _ in self.entries], pa.int32()))
            columns.append(
                ("detector", [names[k] if names else str(k) for k, _, _ in self.entries], pa.string())
            )
        for name, values, typ in columns:
            out = out.append_column(name, pa.array(values, typ))
        return out


def _preprocess(
    detectors: DetectorSet, sample: Sample, with_xyz: bool, batch: pa.Table, i: int
) -> tuple[bytes | None, list[int] | None, Problem | None]:
    """One pass's preprocessing of a decoded sample: ``(packed arrays, map frame, None)`` or a problem."""
    category = batch.column("category")[i].as_py()
    inputs: dict[str, Any] = {"image": sample.image, **({"xyz": sample.xyz} if with_xyz else {})}
    inputs["category"], inputs["item_id"] = category, batch.column("item_id")[i].as_py()
    try:
        arrays = dict(detectors.preprocess(category, inputs))
        frame = arrays.pop(MAP_FRAME_KEY, None)  # where the image sits on the model's grid
        packed = pack_arrays(arrays)
    except Exception as e:  # a detector's preprocess must not take the whole batch down
        text = storage.redact_text(f"preprocess failed: {type(e).__name__}: {e}")
        return None, None, ("error", text[:_MAX_ERROR_CHARS])
    return packed, (None if frame is None else [int(v) for v in np.asarray(frame).ravel()]), None


_DECODED = (
    ("status", pa.string()),
    ("error", pa.string()),
    ("note", pa.string()),
    ("pre", pa.binary()),
    ("orig_h", pa.int32()),
    ("orig_w", pa.int32()),
    ("map_frame", pa.list_(pa.int32())),
)


class _Given:
    """Bytes a caller already read (``image_bytes`` / ``pc_bytes`` columns), shaped like a read's future."""

    def __init__(self, read: ItemBytes) -> None:
        self._read = read

    def result(self) -> ItemBytes:
        return self._read


# ------------------------------------------------------------------------------------------ older names

ReadOutcome = tuple[Any, Any, "tuple[str, str] | None"]  # image bytes, point-cloud bytes, (status, error)


def read_item(
    uri: str, pc_uri: Any, allow_prefixes: tuple[str, ...] = (), attempts: int = storage.READ_ATTEMPTS
) -> ReadOutcome:
    """One item's bytes as ``(image_bytes, pc_bytes, None)`` or ``(None, None, (status, error))``; never
    raises. The form before :func:`adray.io.samples.read_item_bytes`, which it calls."""
    read = read_item_bytes(uri, pc_uri, allow_prefixes=allow_prefixes, attempts=attempts)
    problem = read.problems.get("rgb") or read.problems.get("xyz")
    return (None, None, problem) if problem else (read.image, read.cloud, None)


def fetch_batch(
    pool: ThreadPoolExecutor,
    uris: list[str],
    pc_uris: list[Any],
    allow_prefixes: tuple[str, ...] = (),
    attempts: int = storage.READ_ATTEMPTS,
) -> list[Future[ReadOutcome]]:
    """Start :func:`read_item` for each item on ``pool``: one future per item, in order."""
    return [pool.submit(read_item, u, p, allow_prefixes, attempts) for u, p in zip(uris, pc_uris)]


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
) -> tuple[dict[str, Any] | None, Problem | None]:
    """``(sample dict, None)`` or ``(None, (status, error))``: :func:`adray.io.samples.decode_item` in the
    form before it (``image``, ``xyz`` when ``needs_xyz``, ``note``)."""
    s = decode_item(
        image_bytes,
        pc_bytes,
        uri=uri,
        pc_uri=pc_uri,
        want_xyz=needs_xyz,
        max_pixels=max_pixels,
        max_points=max_points,
        bit_depth=bit_depth,
    )
    if not s.ok:
        return None, (s.status, str(s.error))
    return {**s.inputs(), "note": s.note}, None


_item_bit_depth = item_bit_depth
