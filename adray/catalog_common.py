"""What the catalog and its layouts share: names, the report, item ids, canonical URIs and refusals.

:mod:`adray.catalog` (the public API, manifests) and :mod:`adray.catalog_layouts` (the dataset layouts)
both import from here, so neither imports the other's internals; every name stays importable from
:mod:`adray.catalog`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from adray import storage

LAYOUTS = ("mvtec", "mvtec3d", "visa", "folder")
MAX_EXAMPLES = 20
#: Names read as images (the decoder takes the first frame of GIF / WebP / multi-page TIFF, and says so).
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
#: ``skip_status`` values: the row status of a file that is catalogued but not read.
SKIP_STATUSES = ("refused", "unsupported", "empty")
NORMAL_LABELS = ("good", "normal", "ok")
SPLITS = {"train": "train", "training": "train", "val": "validation", "validation": "validation"}
SPLITS |= {"valid": "validation", "test": "test", "testing": "test"}
#: Files that ship with the datasets and are not items (counted as ignored, not stray).
DOC_FILES = ("license.txt", "readme.txt", "license-dataset", "license", "readme.md", "class_ids.json")
MANIFEST_EXTS = (".parquet", ".pq", ".csv", ".jsonl", ".json", ".ndjson")


class CatalogError(ValueError):
    """The input cannot be catalogued; the message says why and what to pass instead."""


@dataclass
class CatalogReport:
    """What a catalog run found: items per group, files it left out and why (with a few examples)."""

    source: str
    layout: str
    items: int = 0
    stray: int = 0  # files that fit no part of the layout
    unreadable: int = 0  # zero-byte partner files (masks, point clouds): left out of their item
    missing: int = 0  # expected partners that are absent (mask, point cloud, image listed in a CSV)
    ignored: int = 0  # dataset documentation and operating-system files (license.txt, .DS_Store, ...)
    clashes: int = 0  # images with more than one candidate mask (the row names one; the example says which)
    skipped: Counter = field(default_factory=Counter)  # skip_status -> items catalogued but not to be read
    groups: Counter = field(default_factory=Counter)  # (category, split, label name) -> items
    examples: list[str] = field(default_factory=list)

    def note(self, kind: str, url: str, reason: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{kind}: {url} ({reason})")

    def count(self, row: dict[str, Any]) -> None:
        self.items += 1
        if row.get("skip_status"):
            self.skipped[row["skip_status"]] += 1
        label = {0: "normal", 1: "anomalous"}.get(row.get("label"), "unknown")
        self.groups[(row["category"], row["split"], label)] += 1

    def to_dict(self) -> dict[str, Any]:
        groups = [
            {"category": c, "split": s, "label": lb, "items": n}
            for (c, s, lb), n in sorted(self.groups.items())
        ]
        keys = (
            "source",
            "layout",
            "items",
            "stray",
            "unreadable",
            "missing",
            "ignored",
            "clashes",
            "examples",
        )
        out = {**{k: getattr(self, k) for k in keys}, "groups": groups}
        return {**out, "skipped": dict(sorted(self.skipped.items()))}

    def summary(self) -> str:
        lines = [f"catalog of {self.source} (layout {self.layout}): {self.items} items"]
        lines += [f"  {c:<20} {s:<11} {lb:<10} {n:>9}" for (c, s, lb), n in sorted(self.groups.items())]
        lines.append(
            f"  stray files: {self.stray}, unreadable: {self.unreadable}, missing partners: {self.missing}, "
            f"ignored docs/system files: {self.ignored}, mask clashes: {self.clashes}"
        )
        if self.skipped:
            skipped = ", ".join(f"{k}: {n}" for k, n in sorted(self.skipped.items()))
            lines.append(f"  items catalogued with a row status instead of being read: {skipped}")
        lines += [f"  - {e}" for e in self.examples]
        hidden = self.stray + self.unreadable + self.missing + self.clashes - len(self.examples)
        if hidden > 0:
            lines.append(f"  ... and {hidden} more")
        return "\n".join(lines)


def item_id_for(uri: str) -> str:
    """The stable item id of ``uri``: the first 16 hex digits of the sha256 of its canonical form
    (:func:`canonical_uri`; a canonical local absolute path or ``s3://`` URL hashes as it is written)."""
    return hashlib.sha256(canonical_uri(uri).encode("utf-8")).hexdigest()[:16]


def canonical_uri(uri: str, *, keep_userinfo: bool = False) -> str:
    """The one spelling of a file's URI that adray stores and hashes into ``item_id``.

    Local paths (relative, ``~``, ``file://``) become absolute and normalised (:func:`adray.storage.absolute_url`:
    ``file:///data/x.png``, ``/data/./x.png`` and ``/data/y/../x.png`` are all ``/data/x.png``, as the OS
    reads them); the scheme is lower-cased, ``s3a://`` is ``s3://``; user info (credentials) is dropped unless
    ``keep_userinfo`` (for the in-process copy that must still read the file). Object-store keys are kept
    byte for byte: ``a/../x.png`` is a different S3 object from ``x.png`` (see :func:`uri_refusal`).

    >>> canonical_uri("file:///data/./x.png"), canonical_uri("S3A://bucket/k.png")
    ('/data/x.png', 's3://bucket/k.png')
    """
    bare = storage.redact_url(uri)
    scheme, sep, rest = bare.partition("://")
    if not sep or scheme.lower() == "file":
        return storage.absolute_url(bare)
    scheme = storage.canonical_scheme(scheme)
    info = ""
    if keep_userinfo and bare != uri:
        start = uri.index("://") + 3
        info = uri[start : start + len(uri) - len(bare)]
    return f"{scheme}://{info}{rest}"


#: C0 control characters and DEL: Ray's and urllib's URL parsing drop tab/newline/CR, so such a name reads
#: a different file (or none); shells and logs mangle the rest.
_CONTROL = {chr(c) for c in range(32)} | {chr(127)}


def uri_refusal(uri: str) -> str | None:
    """Why adray refuses to read ``uri`` (None: it reads it). A refused file still gets its row
    (``skip_status`` ``refused``) instead of a wrong read:

    - a control character (newline, tab, ...) anywhere in the URI;
    - an object-store key with a ``.`` / ``..`` or empty segment: S3 keeps ``a/../x.png`` as its own object,
      but path-normalising readers (pyarrow, Ray Data) read ``x.png`` instead, and s3fs listings skip it.
    """
    bad = sorted({c for c in uri if c in _CONTROL})
    if bad:
        names = ", ".join(repr(c) for c in bad)
        return f"name has a control character ({names}) that URL readers drop or change; rename the file"
    scheme, sep, rest = storage.redact_url(uri).partition("://")
    if sep and scheme.lower() != "file":
        segments = rest.split("/")[1:]  # after the bucket
        for seg, what in (("..", "a '..'"), (".", "a '.'"), ("", "an empty")):
            if seg in segments[:-1] or (seg != "" and segments[-1:] == [seg]):
                return (
                    f"object key has {what} segment: path-normalising readers would read a different object; "
                    "rename the key"
                )
    return None
