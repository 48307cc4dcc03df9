"""Say what kind of file some bytes are, without repeating any of them.

Error messages about unreadable inputs go into result rows, logs and run records. A manifest can point at
any file the job may read (``/etc/shadow``, ``/proc/self/environ``, a key file), so an error must describe
the file (its size and a format name guessed from its leading bytes) and never quote it: no prefix, no
hex dump, no repr of a header, no third-party parser message (those often echo what they failed to parse).
"""

from __future__ import annotations

#: (leading bytes, format name). Checked in order; the first match names the file.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"II*\x00", "TIFF (little-endian)"),
    (b"MM\x00*", "TIFF (big-endian)"),
    (b"II+\x00", "BigTIFF (little-endian)"),
    (b"MM\x00+", "BigTIFF (big-endian)"),
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"BM", "BMP image"),
    (b"\x93NUMPY", "NumPy .npy array"),
    (b"PK\x03\x04", "ZIP archive (or .npz)"),
    (b"PK\x05\x06", "empty ZIP archive"),
    (b"ply\n", "PLY point cloud"),
    (b"ply\r\n", "PLY point cloud"),
    (b"# .PCD", "PCD point cloud"),
    (b"\x1f\x8b", "gzip data"),
    (b"BZh", "bzip2 data"),
    (b"\xfd7zXZ\x00", "xz data"),
    (b"(\xb5/\xfd", "zstd data"),
    (b"%PDF", "PDF document"),
    (b"\x7fELF", "ELF executable"),
    (b"PAR1", "Parquet file"),
    (b"SQLite format 3\x00", "SQLite database"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000 image"),
)


def file_kind(data: bytes) -> str:
    """A format name for ``data`` from its leading bytes: ``"PNG image"``, ``"text"``, ``"unknown binary"``."""
    if not data:
        return "empty"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP image"
    if data[4:8] == b"ftyp":
        return "ISO media (HEIF/AVIF/MP4)"
    head = data[:4096]
    if b"\x00" in head:
        return "unknown binary"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a multi-byte character cut at the end of the sample
            return "unknown binary"
    stripped = head.lstrip()
    if stripped.startswith((b"{", b"[")):
        return "text (JSON-like)"
    if stripped.startswith(b"<"):
        return "text (XML/HTML-like)"
    return "text"


def describe_bytes(data: bytes) -> str:
    """``"<n> bytes, <kind>"`` (see :func:`file_kind`): what an error may say about a file's content."""
    return f"{len(data)} bytes, {file_kind(data)}"


def describe_exception(exc: BaseException) -> str:
    """The exception's type name only: parser messages often quote the input they could not parse."""
    return type(exc).__name__
