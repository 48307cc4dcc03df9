"""Storage URLs as text: joining, making local paths absolute, ``--allow-prefix`` matching, and the
redaction that keeps credentials (user info, signed-URL secrets, the process's AWS keys) out of anything
stored or printed. Pure string work: no filesystem is touched. :mod:`adray.storage` re-exports every name.
"""

from __future__ import annotations

import os
import re

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
