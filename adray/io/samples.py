"""The one reader from a manifest row to a decoded sample.

Every place that turns a manifest row into pixels goes through here: the scoring pipeline's decode stage
(:mod:`adray.pipeline.decode`, which reads a batch's bytes on threads with :func:`read_item_bytes` and
decodes them with :func:`decode_read`), the fit jobs (BGAD's training images and masks, M3DM's bank and
decision-fusion items), WinCLIP+'s reference images and the benchmarks (:func:`read_sample`, both halves
in one call). So an item that scores also fits, and a bad item gets the same verdict everywhere.

A :class:`Sample` never comes with an exception: it carries ``status`` (``ok`` or the kind of problem)
and a readable ``error``. The statuses are the decode stage's row statuses:

- from reading: ``not_allowed`` (not under an allowed prefix), ``not_found`` (the object does not exist),
  ``read_error`` (could not be read now, after :func:`adray.storage.read_object`'s retries: 403,
  throttling, 5xx, timeouts), ``unsupported`` (a URL no filesystem here can read);
- from decoding: the image kinds of :class:`adray.io.images.ImageDecodeError` (``empty``, ``corrupt``,
  ``too_large``, ``unsupported``), the point-cloud kinds of
  :class:`adray.io.pointclouds.PointCloudDecodeError` (``dtype`` becomes ``unsupported``, ``shape``
  ``corrupt``), ``error`` for a decoder that ran out of memory (retryable);
- from the catalog: a row's ``skip_status`` (a file kept for its row but not to be read).

The point cloud's verdict is kept apart from the image's (:meth:`Sample.status_for`), so one read serves a
run whose RGB detector scores an item whose point cloud is broken while its 3D detector reports it.
Errors describe files by size and format name, never by content, and name URLs without credentials.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adray import storage
from adray.io.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image_noted
from adray.io.masks import read_ground_truth_mask
from adray.io.pointclouds import DEFAULT_MAX_POINTS, PointCloudDecodeError, decode_scan_pointcloud
from adray.io.sniff import describe_bytes, describe_exception

#: Modalities a sample can hold: ``rgb`` (the image) and ``xyz`` (the point cloud on the image's grid).
MODALITIES = ("rgb", "xyz")
#: Optional manifest column: significant bits of an item's >8-bit image (overrides the caller's default).
BIT_DEPTH_COLUMN = "bit_depth"
MAX_ERROR_CHARS = 500
_POINTCLOUD_STATUS = {
    "empty": "empty",
    "corrupt": "corrupt",
    "unsupported": "unsupported",
    "too_large": "too_large",
    "dtype": "unsupported",
}

Problem = tuple[str, str]  # (status, error)


class SampleError(ValueError):
    """A sample that is not ``ok``, raised by :meth:`Sample.raise_for_status`; ``status`` is its kind."""

    def __init__(self, status: str, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass
class Sample:
    """One decoded item. ``image``: uint8 ``[H, W, 3]``; ``xyz``: float32 ``[H, W, 3]`` on the image's
    grid (zeros = no point); ``mask``: bool ``[H, W]`` ground truth, binarised at half range; ``note``: what
    decoding changed that a person might not expect (:func:`adray.io.images.decode_image_noted`)."""

    uri: str = ""
    status: str = "ok"
    error: str | None = None
    image: np.ndarray | None = None
    xyz: np.ndarray | None = None
    mask: np.ndarray | None = None
    note: str | None = None
    #: Verdicts per modality (``rgb``, ``xyz``, ``mask``) that are not ok.
    problems: dict[str, Problem] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def status_for(self, modalities: Sequence[str]) -> Problem | None:
        """``(status, error)`` of the first of ``modalities`` (``rgb`` first) that failed, or None."""
        for m in ("rgb", *(m for m in modalities if m != "rgb")):
            if m in self.problems:
                return self.problems[m]
        return None

    def inputs(self) -> dict[str, Any]:
        """What a detector's ``preprocess`` takes: ``{"image": ..., "xyz": ...}`` (present ones only)."""
        out: dict[str, Any] = {"image": self.image}
        if self.xyz is not None:
            out["xyz"] = self.xyz
        return out

    def raise_for_status(self) -> Sample:
        """Return self when ``ok``; raise :class:`SampleError` otherwise (for fit jobs that stop on a bad item)."""
        if not self.ok:
            raise SampleError(self.status, str(self.error or self.status))
        return self

    def fail(self, modality: str, problem: Problem) -> Sample:
        self.problems[modality] = problem
        first = self.status_for(tuple(self.problems))
        self.status, self.error = first if first else problem
        return self


@dataclass
class ItemBytes:
    """An item's bytes as read (None where not read), and the read's verdict per modality."""

    image: bytes | None = None
    cloud: bytes | None = None
    problems: dict[str, Problem] = field(default_factory=dict)


def read_item_bytes(
    uri: str,
    pc_uri: Any = None,
    *,
    allow_prefixes: tuple[str, ...] = (),
    attempts: int = storage.READ_ATTEMPTS,
) -> ItemBytes:
    """Read one item's image (and its point cloud when ``pc_uri`` is set); never raises.

    The point cloud is not read when the image could not be. Each object is read once through
    :func:`adray.storage.read_object` (its retries are the only layer)."""
    out = ItemBytes()
    problem = _read_once(uri, "", allow_prefixes, attempts)
    if isinstance(problem, tuple):
        out.problems["rgb"] = problem
        return out
    out.image = problem
    if pc_uri:
        cloud = _read_once(pc_uri, "point cloud ", allow_prefixes, attempts)
        if isinstance(cloud, tuple):
            out.problems["xyz"] = cloud
        else:
            out.cloud = cloud
    return out


def _read_once(url: str, what: str, allow_prefixes: tuple[str, ...], attempts: int) -> bytes | Problem:
    shown = storage.redact_url(url)
    if allow_prefixes and not any(storage.is_under_prefix(url, p) for p in allow_prefixes):
        rule = ", ".join(storage.redact_url(p) for p in allow_prefixes)
        return "not_allowed", f"{what}{shown} is not under any --allow-prefix ({rule})"
    try:
        return storage.read_object(url, attempts=attempts)
    except FileNotFoundError:
        return "not_found", f"{what}{shown} does not exist"
    except storage.UnreadableError as e:
        return "read_error", f"{what}{e}"[:MAX_ERROR_CHARS]
    except storage.StorageError as e:  # no filesystem for this URL: a property of the item
        return "unsupported", storage.redact_text(f"{what}{e}")[:MAX_ERROR_CHARS]
    except Exception as e:  # anything else is retryable rather than a verdict on the item
        return "read_error", f"{what}could not read {shown}: {storage.read_failure(e)}"[:MAX_ERROR_CHARS]


def decode_item(
    image_bytes: Any,
    pc_bytes: Any = None,
    *,
    uri: str,
    pc_uri: Any = None,
    want_xyz: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_points: int = DEFAULT_MAX_POINTS,
    bit_depth: int | None = None,
) -> Sample:
    """Decode bytes already read into a :class:`Sample`; never raises for bad bytes.

    ``uri`` / ``pc_uri`` name the files in messages (pass them without credentials). ``image_bytes`` None
    is ``not_found``; with ``want_xyz`` so is ``pc_bytes`` None (a point-cloud problem only fails ``xyz``:
    see :meth:`Sample.status_for`). An unexpected exception of a decoder is ``corrupt`` (the same bytes
    would fail again), a ``MemoryError`` ``error`` (retryable)."""
    sample = Sample(uri=uri)
    if image_bytes is None:
        return sample.fail("rgb", ("not_found", f"{uri} does not exist"))
    data = bytes(image_bytes)
    try:
        decoded = decode_image_noted(data, max_pixels=max_pixels, bit_depth=bit_depth)
    except ImageDecodeError as e:
        return sample.fail("rgb", (e.kind, f"{uri}: {e}"))
    except Exception as e:
        return sample.fail("rgb", _unexpected(e, f"{uri}: image", data))
    sample.image, sample.note = decoded.rgb, decoded.note
    if not want_xyz:
        return sample
    if pc_bytes is None:
        return sample.fail("xyz", ("not_found", f"point cloud {pc_uri} does not exist"))
    pc_data = bytes(pc_bytes)
    try:  # organised clouds must sit on the image's grid; unorganised ones are rasterised onto it
        sample.xyz = decode_scan_pointcloud(pc_data, str(pc_uri), decoded.rgb.shape, max_points=max_points)
    except PointCloudDecodeError as e:
        return sample.fail("xyz", (_POINTCLOUD_STATUS.get(e.kind, "corrupt"), f"{pc_uri}: point cloud {e}"))
    except Exception as e:
        return sample.fail("xyz", _unexpected(e, f"{pc_uri}: point cloud", pc_data))
    return sample


def decode_read(
    read: ItemBytes,
    *,
    uri: str,
    pc_uri: Any = None,
    want_xyz: bool = False,
    declared_bit_depth: Any = None,
    bit_depth: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_points: int = DEFAULT_MAX_POINTS,
) -> Sample:
    """Decode an item's bytes as :func:`read_item_bytes` read them into a :class:`Sample`; never raises for
    a bad item. The second half of :func:`read_sample`, and what the decode stage does with each read.

    The image's read problem fails the sample undecoded. ``declared_bit_depth`` (the row's ``bit_depth``
    cell, :func:`item_bit_depth`) wins over ``bit_depth``; one that is not an integer from 1 to 16 is
    ``unsupported``. With ``want_xyz`` the point cloud is decoded too, unless its read failed: that problem
    fails only ``xyz``. ``uri`` / ``pc_uri`` and the limits as for :func:`decode_item`."""
    if "rgb" in read.problems:
        return Sample(uri=uri).fail("rgb", read.problems["rgb"])
    try:
        bits = item_bit_depth(declared_bit_depth, bit_depth)
    except ValueError as e:
        return Sample(uri=uri).fail("rgb", ("unsupported", f"{uri}: {e}"))
    sample = decode_item(
        read.image,
        read.cloud,
        uri=uri,
        pc_uri=pc_uri,
        want_xyz=want_xyz and "xyz" not in read.problems,
        max_pixels=max_pixels,
        max_points=max_points,
        bit_depth=bits,
    )
    if "xyz" in read.problems:
        sample.fail("xyz", read.problems["xyz"])
    return sample


def read_sample(
    row: Mapping[str, Any],
    *,
    modalities: Sequence[str] = ("rgb",),
    mask: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_points: int = DEFAULT_MAX_POINTS,
    bit_depth: int | None = None,
    allow_prefixes: tuple[str, ...] = (),
    attempts: int = storage.READ_ATTEMPTS,
) -> Sample:
    """Read and decode the manifest ``row`` (``uri``; ``pc_uri`` for ``xyz``; ``gt_mask_uri`` for
    ``mask``); never raises for a bad item (see the module docstring for the statuses).

    The row's ``skip_status`` (the catalog's verdict) wins without a read; its ``bit_depth`` cell wins over
    ``bit_depth``. With ``mask``, a row with a ``gt_mask_uri`` gets ``mask`` (bool ``[H, W]``), one without
    gets None; a mask that cannot be read or decoded fails the sample. Raises ``ValueError`` only for a
    modality it does not know."""
    unknown = set(modalities) - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; known: {list(MODALITIES)}")
    shown = storage.redact_url(str(row.get("uri") or ""))
    skip = row.get("skip_status")
    if skip:
        return Sample(uri=shown).fail("rgb", (str(skip), f"{shown}: {row.get('skip_reason') or skip}"))
    want_xyz = "xyz" in modalities
    pc_uri = row.get("pc_uri") if want_xyz else None
    read = read_item_bytes(str(row.get("uri")), pc_uri, allow_prefixes=allow_prefixes, attempts=attempts)
    sample = decode_read(
        read,
        uri=shown,
        pc_uri=storage.redact_url(pc_uri) if pc_uri else pc_uri,
        want_xyz=want_xyz,
        declared_bit_depth=row.get(BIT_DEPTH_COLUMN),
        bit_depth=bit_depth,
        max_pixels=max_pixels,
        max_points=max_points,
    )
    if mask and sample.ok and row.get("gt_mask_uri"):
        _read_mask(sample, str(row["gt_mask_uri"]), max_pixels, allow_prefixes, attempts)
    return sample


def _read_mask(
    sample: Sample, url: str, max_pixels: int, allow_prefixes: tuple[str, ...], attempts: int
) -> None:
    data = _read_once(url, "mask ", allow_prefixes, attempts)
    if isinstance(data, tuple):
        sample.fail("mask", data)
        return
    try:
        sample.mask = read_ground_truth_mask(data, max_pixels=max_pixels)
    except ImageDecodeError as e:
        sample.fail("mask", (e.kind, f"{storage.redact_url(url)}: mask {e}"))
    except Exception as e:
        sample.fail("mask", _unexpected(e, f"{storage.redact_url(url)}: mask", data))


def item_bit_depth(declared: Any, default: int | None) -> int | None:
    """The manifest's ``bit_depth`` cell (int, float or text; null/NaN/empty = not set) over ``default``.
    Raises ``ValueError`` for a value that is not an integer from 1 to 16."""
    if declared is None or declared == "" or (isinstance(declared, float) and math.isnan(declared)):
        return default
    try:
        value = float(declared)
    except (TypeError, ValueError):
        value = -1.0
    if not value.is_integer() or not 1 <= value <= 16:
        raise ValueError("the manifest's bit_depth must be an integer from 1 to 16")
    return int(value)


def _unexpected(exc: Exception, what: str, data: bytes) -> Problem:
    if isinstance(exc, MemoryError):
        return "error", f"{what} ran out of memory while decoding ({describe_bytes(data)})"
    return "corrupt", f"{what} could not be decoded ({describe_exception(exc)}; {describe_bytes(data)})"
