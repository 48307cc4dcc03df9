"""The S3 client behind ``s3://`` URLs: endpoint and region from the standard AWS environment (with
``ADRAY_S3_ENDPOINT`` as an override), and one cached s3fs filesystem per endpoint, region, credentials
and attempt count. :mod:`adray.storage` re-exports every name.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import fsspec

from adray.storage_errors import StorageError


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
