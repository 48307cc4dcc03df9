"""One storage layer for every job: URL -> filesystem + path, atomic writes, bounded retries.

Local paths and ``file://`` are the embedded default. ``s3://`` goes through s3fs (fsspec) and, where a
pyarrow filesystem is wanted (Ray Data readers/writers, Ray Train storage), through pyarrow's
``S3FileSystem``. Endpoint, region and credentials come from the standard AWS environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``), with ``ADRAY_S3_ENDPOINT`` as an
explicit override (for MinIO, moto or any S3-compatible store). Any other installed fsspec protocol works
through fsspec. Credentials never appear in logs or error messages.

URL text and redaction live in :mod:`adray.storage_urls`, error kinds in :mod:`adray.storage_errors`, the
S3 client in :mod:`adray.storage_s3`; every name is importable from here as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec

from adray import job_env
from adray.storage_errors import (  # noqa: F401 - re-exported: adray.storage is the public module
    PYARROW_TRANSIENT_MESSAGES,
    AccessDeniedError,
    StorageError,
    TransientStorageError,
    UnreadableError,
    _friendly,
    _raise_friendly,
    _redact,
    is_missing,
    is_transient,
    read_failure,
)
from adray.storage_s3 import _botocore_attempts, _s3fs, _s3fs_cached, s3_endpoint, s3_region  # noqa: F401
from adray.storage_urls import (  # noqa: F401
    absolute_url,
    canonical_scheme,
    is_under_prefix,
    join_path,
    join_url,
    redact_text,
    redact_url,
    split_userinfo,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Location:
    """A resolved URL: the fsspec filesystem, the path inside it and the protocol."""

    fs: fsspec.AbstractFileSystem
    path: str
    protocol: str  # "file", "s3", or another fsspec protocol

    def url(self, path: str | None = None) -> str:
        """The URL of ``path`` (default: this location) in this filesystem."""
        p = self.path if path is None else path
        return p if self.protocol == "file" else redact_url(f"{self.protocol}://{p}")

    def join(self, *parts: str) -> Location:
        return Location(self.fs, join_path(self.path, *parts), self.protocol)


def resolve(url: str, *, single_attempt: bool = False) -> Location:
    """Turn a URL (or local path) into a :class:`Location`.

    User info in an S3 URL (``s3://KEY:SECRET@bucket/key``) goes into the filesystem's credentials and
    nowhere else: the location's ``path`` and :meth:`Location.url` are without it.

    Retries (one layer per call): an S3 location's client retries each request itself (botocore's
    standard mode, ``AWS_MAX_ATTEMPTS`` attempts, default 3). ``single_attempt=True`` gives a client that
    sends each request once, for calls wrapped in :func:`with_retries`, which is then their only layer.

    >>> resolve("/tmp/data").protocol
    'file'
    """
    if not isinstance(url, str) or not url:
        raise StorageError(f"expected a storage URL or path, got {url!r}")
    job_env.apply_job_secrets()  # an attached job's worker: its credentials before any client is built
    url, user, password = split_userinfo(url)
    scheme, sep, rest = url.partition("://")
    if not sep or scheme == "file":
        path = rest if sep else url
        return Location(fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(path)), "file")
    scheme = scheme.lower()
    if scheme in ("s3", "s3a"):
        if not rest or rest.startswith("/"):
            raise StorageError(f"S3 URL {url!r} has no bucket; write it as s3://BUCKET/PREFIX")
        fs = _s3fs(s3_endpoint(), s3_region(), user, password, single_attempt)
        return Location(fs, rest.rstrip("/"), "s3")
    if user:
        raise StorageError(
            f"credentials in the URL {url!r} are supported for s3:// only; give them through the "
            "environment or the store's own configuration"
        )
    try:
        fs = fsspec.filesystem(scheme)
    except (ValueError, ImportError) as e:
        known = ", ".join(sorted({"file", "s3", *fsspec.available_protocols()})[:20])
        raise StorageError(
            f"unknown or unavailable storage scheme {scheme!r} in {url!r}. Use a local path, file://, "
            f"s3://BUCKET/PREFIX, or install the fsspec package for {scheme!r} (known here: {known}, ...)"
        ) from e
    return Location(fs, rest.rstrip("/"), scheme)


#: pyarrow's attempts per S3 request where pyarrow is the only retry layer (Ray Train's storage).
PYARROW_S3_ATTEMPTS = 5


def pyarrow_filesystem(url: str, *, attempts: int = PYARROW_S3_ATTEMPTS) -> tuple[Any, str]:
    """A ``pyarrow.fs.FileSystem`` and path for ``url`` (for Ray Data and Ray Train storage).

    S3 uses pyarrow's native ``S3FileSystem`` with the same endpoint/region resolution as :func:`resolve`
    (pyarrow ignores ``AWS_ENDPOINT_URL``, so the endpoint is passed explicitly) and pyarrow's standard
    retry strategy with ``attempts`` attempts per request (first try included). Pass ``attempts=1`` where
    the caller retries already (Ray Data's writers retry throttling, 5xx and network errors themselves).
    """
    import pyarrow.fs as pafs

    loc = resolve(url)
    if loc.protocol == "file":
        return pafs.LocalFileSystem(), loc.path
    if loc.protocol == "s3":
        kwargs: dict[str, Any] = {"region": s3_region()}
        _, user, password = split_userinfo(url)
        if user:
            kwargs.update(access_key=user, secret_key=password or "")
        elif os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
            # The environment's keys, which pyarrow's default chain would take first anyway, made explicit:
            # this filesystem is pickled into Ray Data's tasks, and a worker of an attached job that unpickles
            # it before adray sets the job's secrets (job_env.apply_job_secrets) would use its own environment.
            kwargs.update(
                access_key=os.environ["AWS_ACCESS_KEY_ID"],
                secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
            )
        endpoint = s3_endpoint()
        if endpoint:
            scheme, _, hostport = endpoint.partition("://")
            kwargs["endpoint_override"] = hostport or scheme
            kwargs["scheme"] = scheme if hostport else "https"
        kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=attempts)
        return pafs.S3FileSystem(**kwargs), loc.path
    return pafs.PyFileSystem(pafs.FSSpecHandler(loc.fs)), loc.path


# ---------------------------------------------------------------------------------------------- retries


def with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    attempts: int = 4,
    base_delay: float = 0.2,
    max_delay: float = 5.0,
    retry_on: Callable[[BaseException], bool] = is_transient,
) -> T:
    """Call ``fn`` with bounded retries and jittered exponential backoff on errors ``retry_on`` accepts
    (default :func:`is_transient`); the last error is raised as it is. ``fn``'s filesystem should come
    from ``resolve(url, single_attempt=True)``, so that this is the call's only retry layer."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:
            if attempt == attempts or not retry_on(e):
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * (0.5 + random.random())
            log.warning(
                "transient error on %s (attempt %d/%d): %s", redact_text(what), attempt, attempts, _redact(e)
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------ operations


def read_bytes(url: str) -> bytes:
    """Read a whole object. Raises FileNotFoundError for a missing object."""
    loc = resolve(url, single_attempt=True)
    try:
        return with_retries(lambda: loc.fs.cat_file(loc.path), what=f"read {url}")
    except FileNotFoundError:
        raise
    except Exception as e:
        _raise_friendly(e, url)


#: Attempts and first backoff of :func:`read_object` (delays double: 0.5, 1, 2, 4 s, jittered x0.5-1.5).
READ_ATTEMPTS = 5
READ_BASE_DELAY = 0.5


def read_object(url: str, *, attempts: int = READ_ATTEMPTS, base_delay: float = READ_BASE_DELAY) -> bytes:
    """Read a whole object for scoring, telling "does not exist" from "could not read now".

    Raises ``FileNotFoundError`` when the object does not exist (404, ``NoSuchKey``, ``NoSuchBucket``, no
    such local file; not retried); :class:`UnreadableError` when every one of ``attempts`` reads failed
    otherwise: access refused (403 / ``PermissionError``), throttling (``SlowDown``), 5xx, timeouts,
    connection resets. Those are retried here with jittered exponential backoff, the read's only retry
    layer: the S3 client underneath sends each request once, so a failing read is ``attempts`` requests.
    :class:`StorageError` for a URL that names no usable filesystem. Messages carry the URL without user
    info, never file contents.
    """
    loc = resolve(url, single_attempt=True)
    shown = redact_url(url)
    try:
        return with_retries(
            lambda: loc.fs.cat_file(loc.path),
            what=f"read {shown}",
            attempts=attempts,
            base_delay=base_delay,
            retry_on=lambda e: not is_missing(e),
        )
    except Exception as e:
        if is_missing(e):
            raise FileNotFoundError(f"no such object: {shown}") from None
        raise UnreadableError(f"could not read {shown} ({attempts} attempts): {read_failure(e)}") from None


@contextlib.contextmanager
def open_atomic(url: str) -> Iterator[Any]:
    """A binary file for streaming writes that appears complete or not at all: temp file + rename locally;
    on object stores one upload that is aborted (s3fs: ``discard``) when the body raises."""
    loc = resolve(url)
    if loc.protocol == "file":
        parent = os.path.dirname(loc.path)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(loc.path)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                yield f
            os.replace(tmp, loc.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    f = loc.fs.open(loc.path, "wb")
    try:
        yield f
    except BaseException:
        if hasattr(f, "discard"):
            f.discard()  # s3fs: abort the multipart upload and drop the buffer, write nothing
            f.closed = True  # so that garbage collection does not "close" (upload) it
        raise
    f.close()


def write_bytes(url: str, data: bytes) -> None:
    """Write an object atomically: temp file + rename locally, a single PUT on object stores."""
    loc = resolve(url, single_attempt=True)

    def _write() -> None:
        if loc.protocol == "file":
            with open_atomic(url) as f:
                f.write(data)
        else:
            # pipe_file is one PUT for objects below the multipart threshold (S3 PUTs are atomic).
            loc.fs.pipe_file(loc.path, data)

    try:
        with_retries(_write, what=f"write {url}")
    except Exception as e:
        _raise_friendly(e, url)


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def exists(url: str) -> bool:
    loc = resolve(url, single_attempt=True)
    try:
        return bool(with_retries(lambda: loc.fs.exists(loc.path), what=f"exists {url}"))
    except Exception as e:
        _raise_friendly(e, url)


def info(url: str) -> dict[str, Any]:
    loc = resolve(url, single_attempt=True)
    return with_retries(lambda: loc.fs.info(loc.path), what=f"info {url}")


def makedirs(url: str) -> None:
    loc = resolve(url)
    if loc.protocol == "file":
        os.makedirs(loc.path, exist_ok=True)


def remove(url: str, recursive: bool = False) -> None:
    loc = resolve(url)
    if loc.fs.exists(loc.path):
        loc.fs.rm(loc.path, recursive=recursive)


def walk_files(url: str, *, detail: bool = True) -> Iterator[tuple[str, dict[str, Any]]]:
    """Stream ``(url, info)`` for every file under ``url``, one directory at a time.

    Uses ``fs.walk`` so that only one directory listing is held in memory at a time (S3 prefixes are
    listed with delimiter '/', page by page). Hidden files and folders (``.DS_Store``, ``.git``) and
    ``__MACOSX`` are skipped.
    """
    loc = resolve(url)
    try:
        walker = loc.fs.walk(loc.path, detail=True)
        for root, dirs, files in walker:
            if isinstance(dirs, dict):
                for d in [d for d in dirs if _hidden(d)]:
                    del dirs[d]
            for name in sorted(files):
                if _hidden(name):
                    continue
                meta = files[name] if isinstance(files, dict) else {}
                yield loc.url(join_path(root, name)), meta
    except Exception as e:
        _raise_friendly(e, url)


def _hidden(name: str) -> bool:
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return base.startswith(".") or base.startswith("__MACOSX") or base in ("Thumbs.db", "desktop.ini")


def content_token(meta: dict[str, Any]) -> str:
    """A token that changes when an object's content changes: version id, else ETag, else size + mtime."""
    for key in ("VersionId", "version_id"):
        if meta.get(key):
            return f"v:{meta[key]}"
    for key in ("ETag", "etag"):
        if meta.get(key):
            return f"e:{str(meta[key]).strip(chr(34))}"
    size = meta.get("size", meta.get("Size"))
    mtime = meta.get("mtime", meta.get("LastModified", meta.get("created")))
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return f"s:{size}:{mtime}"
