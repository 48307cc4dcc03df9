"""What a storage failure is: the error classes, which failures are worth retrying (:func:`is_transient`)
or are a property of the item (:func:`is_missing`), and the credential-free messages users see.
:mod:`adray.storage` re-exports every public name.
"""

from __future__ import annotations

import errno
from typing import NoReturn

from adray.storage_urls import redact_text, redact_url

#: 5xx reason phrases, lower case: s3fs gives some answers as the phrase only (``OSError: [Errno 16]
#: Service Unavailable``); :func:`is_transient` retries them and :func:`read_failure` names their status.
_STATUS_WORDS = {
    "500": "internal server error",
    "502": "bad gateway",
    "503": "service unavailable",
    "504": "gateway timeout",
}

#: pyarrow's S3 errors worth retrying, as its messages spell them, for a retry layer that matches message
#: text (Ray Data's ``DataContext.retried_io_errors``, whose defaults leave out 500, 502 and 504 and the
#: throttling text some stores send): the same failures :func:`is_transient` retries elsewhere.
PYARROW_TRANSIENT_MESSAGES = (
    "AWS Error INTERNAL_FAILURE",
    "AWS Error NETWORK_CONNECTION",
    "AWS Error SLOW_DOWN",
    "AWS Error SERVICE_UNAVAILABLE",
    "AWS Error UNKNOWN (HTTP status 500)",
    "AWS Error UNKNOWN (HTTP status 502)",
    "AWS Error UNKNOWN (HTTP status 503)",
    "AWS Error UNKNOWN (HTTP status 504)",
    "Reduce your request rate",
)

#: Throttling answers, lower case (S3's ``SlowDown``, pyarrow's ``SLOW_DOWN``, the stores' prose).
_THROTTLE_MARKERS = ("slowdown", "slow_down", "throttl", "reduce your request rate")

#: Errors worth retrying (matched case-insensitively): network hiccups, throttling and 5xx answers from
#: object stores, in botocore's, s3fs's and pyarrow's spellings.
_TRANSIENT_MARKERS = (
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "503",
    "500",
    "502",
    "504",
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
    *_THROTTLE_MARKERS,
    *_STATUS_WORDS.values(),
    *PYARROW_TRANSIENT_MESSAGES,
)


#: errno values s3fs gives 5xx and throttling answers (503/SlowDown: EBUSY, 500: EREMOTEIO).
_TRANSIENT_ERRNOS = (errno.EBUSY, errno.EREMOTEIO, errno.ETIMEDOUT, errno.ECONNRESET, errno.EAGAIN)


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


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TransientStorageError):
        return True
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    text = f"{type(exc).__name__} {exc}".lower()
    return any(m.lower() in text for m in _TRANSIENT_MARKERS)


def is_missing(exc: BaseException) -> bool:
    """The object does not exist (404, ``NoSuchKey``, ``NoSuchBucket``, no such file or folder): a
    property of the item, not of the moment, so never worth retrying."""
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return True
    text = f"{type(exc).__name__} {exc}"
    return any(m in text for m in ("NoSuchKey", "NoSuchBucket", "Not Found (404)"))


def read_failure(exc: BaseException) -> str:
    """A short, credential-free description of why a read failed (its kind, not the server's prose)."""
    text = f"{type(exc).__name__} {exc}"
    if isinstance(exc, PermissionError) or any(m in text for m in ("AccessDenied", "403", "Forbidden")):
        return f"access refused ({type(exc).__name__})"
    if any(m in text.lower() for m in _THROTTLE_MARKERS):
        return f"throttled ({type(exc).__name__})"
    if isinstance(exc, TimeoutError) or any(m in text for m in ("timed out", "Timeout")):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, ConnectionError) or any(m in text for m in ("Connection", "reset", "Disconnected")):
        return f"connection failed ({type(exc).__name__})"
    for code in ("500", "502", "503", "504", "InternalError", "ServiceUnavailable"):
        if code in text:
            return f"server error {code} ({type(exc).__name__})"
    for code, words in _STATUS_WORDS.items():  # s3fs gives some 5xx as their reason phrase only
        if words in text.lower():
            return f"server error {code} ({type(exc).__name__})"
    return f"{type(exc).__name__}: {redact_text(str(exc))[:200]}"


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
