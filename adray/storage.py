"""One storage layer for every job: URL -> filesystem + path, atomic writes, bounded retries.

Local paths and ``file://`` are the embedded default. ``s3://`` goes through s3fs (fsspec) and, where a
pyarrow filesystem is wanted (Ray Data readers/writers, Ray Train storage), through pyarrow's
``S3FileSystem``. Endpoint, region and credentials come from the standard AWS environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``), with ``ADRAY_S3_ENDPOINT`` as an
explicit override (for MinIO, moto or any S3-compatible store). Any other installed fsspec protocol works
through fsspec. Credentials never appear in logs or error messages.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import fsspec

from adray import job_env

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Errors worth retrying: network hiccups, throttling and 5xx answers from object stores.
_TRANSIENT_MARKERS = (
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "Throttl",
    "503",
    "500",
    "Connection reset",
    "Connection aborted",
    "timed out",
    "Temporary failure",
    "ConnectionClosed",
    "EndpointConnectionError",
    "ReadTimeout",
    "ConnectTimeout",
    "IncompleteRead",
    "ServerDisconnected",
    "ClientPayloadError",
    "reduce your request rate",
)
#: errno values s3fs gives 5xx and throttling answers (503/SlowDown: EBUSY, 500: EREMOTEIO).
_TRANSIENT_ERRNOS = (errno.EBUSY, errno.EREMOTEIO, errno.ETIMEDOUT, errno.ECONNRESET, errno.EAGAIN)
#: ``scheme://USER[:PASSWORD]@`` at the start of a URL. The password may hold '/' (AWS secret keys do) but
#: not '@'; the user part holds neither, so an S3 key with '@' further down is not taken for user info.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^@/:]*(?::[^@]*)?)@")
#: The same anywhere in free text (error messages, exception text).
_USERINFO_IN_TEXT = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^@/:\s'\"]*(?::[^@\s'\"]*)?@")
#: Query parameters of signed URLs whose values are secrets.
_SECRET_QUERY = re.compile(
    r"([?&](?:X-Amz-(?:Signature|Credential|Security-Token)|Signature|AWSAccessKeyId|sig|token)=)[^&\s'\"]*",
    re.IGNORECASE,
)


class StorageError(RuntimeError):
    """A storage operation failed in a way the user must fix (bad URL, missing credentials, ...)."""


class AccessDeniedError(StorageError, PermissionError):
    """Access to a URL was refused (403, bad or missing rights): a :class:`StorageError` whose message says
    what to check, and still a ``PermissionError`` for callers that catch that."""


class TransientStorageError(StorageError):
    """A storage operation failed in a way that may succeed when retried."""


class UnreadableError(StorageError):
    """An object that may well exist could not be read now (access refused, throttled, 5xx, timeout,
    reset), even after the retries of :func:`read_object`. The message names the URL without credentials
    and the kind of failure, never the object's content."""


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


def redact_url(url: str) -> str:
    """``url`` without user info (``s3://KEY:SECRET@bucket/k`` -> ``s3://bucket/k``) and without the values of
    signed-URL query parameters (``X-Amz-Signature=...``): the form of a URL that may be stored or printed.
    Local paths and URLs without user info come back unchanged; non-strings as they are.

    >>> redact_url("s3://AKIDEXAMPLE:wJalr/K7MDENG@bucket/a@b.png")
    's3://bucket/a@b.png'
    """
    if not isinstance(url, str) or "://" not in url:
        return url
    out = _USERINFO.sub(r"\1", url, count=1)
    return _SECRET_QUERY.sub(r"\1***", out) if "?" in out else out


def redact_text(text: str) -> str:
    """Free text (an error message, an exception's text) with user info stripped from every URL in it,
    signed-URL secrets and the process's AWS secrets (environment) replaced by ``***``."""
    if not isinstance(text, str):
        return text
    out = _USERINFO_IN_TEXT.sub(r"\1", text) if "://" in text else text
    if "?" in out:
        out = _SECRET_QUERY.sub(r"\1***", out)
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        secret = os.environ.get(var)
        if secret and len(secret) >= 4:
            out = out.replace(secret, "***")
    return out


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """``(url without user info, user, password)``; user and password are None where the URL has none.
    User and password are percent-decoded (a secret may be written with ``%2F`` for '/')."""
    from urllib.parse import unquote

    m = _USERINFO.match(url) if isinstance(url, str) else None
    if not m:
        return url, None, None
    user, _, password = m.group(2).partition(":")
    return url[: m.start(2)] + url[m.end() :], unquote(user) or None, unquote(password) or None


def is_under_prefix(url: str, prefix: str) -> bool:
    """Whether ``url`` lies under ``prefix`` (``--allow-prefix``), compared as what would be read: user info
    dropped, scheme lower-case (``s3a`` = ``s3``), local paths (plain or ``file://``) with symlinks and
    ``..`` resolved; on other schemes both the written path and its ``..``-normalised form must be under
    ``prefix``. The match ends at a ``/``: ``s3://bucket`` admits ``s3://bucket/x``, not ``s3://bucket2/x``.
    """
    written, normal = _match_forms(url)
    base = _match_forms(prefix)[1].rstrip("/")
    return all(f == base or f.startswith(base + "/") for f in {written, normal})


def _match_forms(url: str) -> tuple[str, str]:
    import posixpath

    url = split_userinfo(url)[0]
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() == "file":
        path = os.path.realpath(os.path.expanduser(rest if sep else url))
        return path, path
    scheme = canonical_scheme(scheme)
    return f"{scheme}://{rest}", f"{scheme}://{posixpath.normpath(rest) if rest else rest}"


def canonical_scheme(scheme: str) -> str:
    """One spelling per URL scheme: lower case, ``s3a`` read as ``s3`` (the same object store)."""
    scheme = scheme.lower()
    return "s3" if scheme == "s3a" else scheme


def join_path(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for p in parts:
        p = p.strip("/")
        if p:
            out = f"{out}/{p}" if out else p
    return out


def join_url(base: str, *parts: str) -> str:
    """Join URL parts with '/', keeping the scheme of ``base``."""
    scheme, sep, rest = base.partition("://")
    if not sep:
        return join_path(base, *parts)
    return f"{scheme}://{join_path(rest, *parts)}"


def absolute_url(url: str, keep: tuple[str, ...] = ()) -> str:
    """``url`` with a local path (relative, ``~``, or ``file://``) made absolute, as :func:`resolve` reads
    it on this machine; other schemes, the empty string and the words in ``keep`` (``pretrained``) as
    they are. Drivers call this before sending a path to Ray workers, whose working directory is the
    cluster's, not the driver's.

    >>> absolute_url("s3://bucket/x"), absolute_url("/data/out/")
    ('s3://bucket/x', '/data/out')
    """
    if not url or url in keep:
        return url
    scheme, sep, rest = url.partition("://")
    if sep and scheme != "file":
        return url
    return os.path.abspath(os.path.expanduser(rest if sep else url))


def s3_endpoint() -> str | None:
    """The S3 endpoint override from ``ADRAY_S3_ENDPOINT`` or the standard AWS variables, if any."""
    for var in ("ADRAY_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(var):
            return os.environ[var]
    return None


def s3_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def _botocore_attempts() -> int:
    """botocore's attempts per S3 request (first try included) on clients whose calls adray does not
    wrap in :func:`with_retries`: ``AWS_MAX_ATTEMPTS`` (the standard AWS variable), default 3."""
    try:
        return max(1, int(os.environ.get("AWS_MAX_ATTEMPTS", "3")))
    except ValueError:
        return 3


def _s3fs(
    endpoint: str | None,
    region: str,
    key: str | None = None,
    secret: str | None = None,
    single_attempt: bool = False,
) -> fsspec.AbstractFileSystem:
    attempts = 1 if single_attempt else _botocore_attempts()
    return _s3fs_cached(endpoint, region, key, secret, attempts)


@functools.lru_cache(maxsize=16)
def _s3fs_cached(
    endpoint: str | None, region: str, key: str | None, secret: str | None, attempts: int
) -> fsspec.AbstractFileSystem:
    try:
        import s3fs
    except ImportError as e:  # pragma: no cover - s3fs is a hard dependency
        raise StorageError("s3:// URLs need the s3fs package: pip install s3fs") from e
    client_kwargs: dict[str, Any] = {"region_name": region}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    # Many S3-compatible stores reject botocore's default flexible checksums; only send them when required.
    config_kwargs = {
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
        "retries": {"total_max_attempts": attempts, "mode": "standard"},
    }
    creds: dict[str, Any] = {"key": key, "secret": secret} if key else {}
    fs = s3fs.S3FileSystem(
        client_kwargs=client_kwargs, config_kwargs=config_kwargs, skip_instance_cache=True, **creds
    )
    fs.retries = 1  # s3fs's own loop off: it re-tried throttling and timeouts on top of botocore's
    return fs


_s3fs.cache_clear = _s3fs_cached.cache_clear  # type: ignore[attr-defined]


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


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TransientStorageError):
        return True
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    text = f"{type(exc).__name__} {exc}"
    return any(m in text for m in _TRANSIENT_MARKERS)


def is_missing(exc: BaseException) -> bool:
    """The object does not exist (404, ``NoSuchKey``, ``NoSuchBucket``, no such file or folder): a
    property of the item, not of the moment, so never worth retrying."""
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return True
    text = f"{type(exc).__name__} {exc}"
    return any(m in text for m in ("NoSuchKey", "NoSuchBucket", "Not Found (404)"))


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


def _redact(exc: BaseException) -> str:
    return redact_text(str(exc))


def _friendly(exc: BaseException, url: str) -> BaseException:
    """Map credential problems to an error that says what to do (never echoing secrets)."""
    url = redact_url(url)
    name = type(exc).__name__
    text = str(exc)
    if name in ("NoCredentialsError", "PartialCredentialsError") or "Unable to locate credentials" in text:
        return StorageError(
            f"no credentials for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or an "
            "instance/IRSA role); for a non-AWS store also set ADRAY_S3_ENDPOINT"
        )
    denied = isinstance(exc, PermissionError)  # s3fs's 403 (AccessDenied, "Forbidden"), or local rights
    if denied or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text or "AccessDenied" in text:
        return AccessDeniedError(
            f"access to {url} was refused ({name}); check the credentials and bucket policy"
        )
    if _redact(exc) != text:
        return StorageError(f"{name} on {url}: {_redact(exc)}")
    return exc


def _raise_friendly(exc: BaseException, url: str) -> NoReturn:
    """Raise :func:`_friendly`'s error; the original is chained only when its text holds no secret."""
    new = _friendly(exc, url)
    if new is exc:
        raise exc
    raise new from (exc if _redact(exc) == str(exc) else None)


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


def read_failure(exc: BaseException) -> str:
    """A short, credential-free description of why a read failed (its kind, not the server's prose)."""
    text = f"{type(exc).__name__} {exc}"
    if isinstance(exc, PermissionError) or any(m in text for m in ("AccessDenied", "403", "Forbidden")):
        return f"access refused ({type(exc).__name__})"
    if any(m in text for m in ("SlowDown", "Throttl", "reduce your request rate")):
        return f"throttled ({type(exc).__name__})"
    if isinstance(exc, TimeoutError) or any(m in text for m in ("timed out", "Timeout")):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, ConnectionError) or any(m in text for m in ("Connection", "reset", "Disconnected")):
        return f"connection failed ({type(exc).__name__})"
    for code in ("500", "502", "503", "504", "InternalError", "ServiceUnavailable"):
        if code in text:
            return f"server error {code} ({type(exc).__name__})"
    return f"{type(exc).__name__}: {redact_text(str(exc))[:200]}"


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
