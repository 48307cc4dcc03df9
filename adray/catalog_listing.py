"""Listing a layout's folders for :mod:`adray.catalog_layouts`: the files of an item folder (hidden and
system files told apart), one folder level at a time, the categories asked for, content tokens, the
skip rules for files that are not items, and the manifest row every layout builds.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

from adray import storage
from adray.catalog_common import DOC_FILES, IMAGE_EXTS, CatalogError, CatalogReport, uri_refusal

Row = dict[str, Any]


def _row(
    uri: str,
    pc_uri: str | None,
    cat: str,
    split: str,
    normal: bool,
    defect: str,
    gt: str | None,
    token: str,
    skip: tuple[str, str] | None = None,
) -> Row:
    return {
        "skip_status": skip[0] if skip else None,
        "skip_reason": skip[1] if skip else None,
        "uri": uri,
        "pc_uri": pc_uri,
        "category": cat,
        "split": split,
        "label": 0 if normal else 1,
        "defect_type": "good" if normal else defect,
        "gt_mask_uri": gt,
        "content_token": token,
    }


#: Operating-system metadata files: not items, counted as ignored.
SYSTEM_FILES = (".ds_store", "thumbs.db", "desktop.ini")


def _item_files(url: str, report: CatalogReport) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(url, info)`` of every file under an item folder, sorted, hidden names included (``..png``,
    ``.x.png`` are files like any other). Operating-system metadata (:data:`SYSTEM_FILES`, ``._*``
    AppleDouble files, anything in a hidden folder or ``__MACOSX``) is counted as ignored instead.

    Object stores are listed flat (no delimiter), so keys that a ``/``-delimited walk loses (``a/../x.png``,
    ``a//x.png``) are seen and become rows (refused, :func:`adray.catalog_common.uri_refusal`).
    """
    loc = storage.resolve(url, single_attempt=True)
    if loc.protocol == "file":
        entries = []
        for root, dirs, files in os.walk(loc.path):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                try:
                    st = os.stat(path)
                except OSError:
                    report.note("stray", path, "cannot be read (vanished or no permission to stat)")
                    continue
                entries.append(
                    (path, {"name": path, "size": st.st_size, "mtime": st.st_mtime, "type": "file"})
                )
    else:
        try:
            found = storage.with_retries(lambda: loc.fs.find(loc.path, detail=True), what=f"list {url}")
        except FileNotFoundError:
            found = {}
        entries = [(loc.url(p), i) for p, i in sorted(found.items()) if i.get("type", "file") != "directory"]
    base = loc.url().rstrip("/") + "/"
    for file_url, info in entries:
        parts = file_url[len(base) :].split("/") if file_url.startswith(base) else [file_url]
        name = parts[-1]
        hidden_dir = any(p.startswith(".") and p not in (".", "..") or p == "__MACOSX" for p in parts[:-1])
        if hidden_dir or name.lower() in SYSTEM_FILES or name.startswith("._"):
            report.ignored += 1
            continue
        yield file_url, info


def _skip(url: str, info: dict[str, Any]) -> tuple[str, str] | None:
    """``(skip_status, reason)`` for a file under an item folder that is not to be read, else None."""

    refusal = uri_refusal(url)
    if refusal:
        return "refused", refusal
    name = url.rsplit("/", 1)[-1]
    if not name.lower().endswith(IMAGE_EXTS):
        ext = name.rsplit(".", 1)[-1].lower() if "." in name.strip(".") else ""
        kind = f".{ext} file" if ext else "file without an extension"
        return "unsupported", f"not an image file name ({kind}; images: {', '.join(IMAGE_EXTS)})"
    if _size(info) == 0:
        return "empty", "zero bytes when catalogued"
    return None


def _token(url: str, info: dict[str, Any], skip: tuple[str, str] | None = None) -> str:
    """The content token of a file: ``h:<sha256>`` (first 32 hex digits) of a local file's bytes, so that a
    rewrite keeping size and mtime (``cp -p``, ``rsync -t``) still changes it; the version id / ETag of an
    object (:func:`adray.storage.content_token`). Files not to be read keep the metadata token."""
    loc = storage.resolve(url)
    if loc.protocol != "file" or skip is not None:
        return storage.content_token(info)
    digest = hashlib.sha256()
    try:
        with open(loc.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return storage.content_token(info)  # unreadable now: the scorer says why
    return f"h:{digest.hexdigest()[:32]}"


def _listdir(url: str) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    """Sorted sub-folder names and ``(url, info)`` of files directly under ``url`` (hidden ones skipped)."""
    loc = storage.resolve(url, single_attempt=True)
    try:
        entries = storage.with_retries(lambda: loc.fs.ls(loc.path, detail=True), what=f"list {url}")
    except FileNotFoundError:
        return [], []
    dirs, files = [], []
    for e in entries:
        path = e["name"].rstrip("/")
        name = path.rsplit("/", 1)[-1]
        if path == loc.path.rstrip("/") or _hidden(name):
            continue
        if e.get("type") == "directory":
            dirs.append(name)
        else:
            files.append((loc.url(path), e))
    return sorted(dirs), sorted(files, key=lambda f: f[0])


def _categories(root: str, wanted: list[str] | None, report: CatalogReport) -> list[str]:
    dirs, files = _listdir(root)
    _docs_or_stray(files, report, "file at the top of the dataset")
    if wanted:
        unknown = sorted(set(wanted) - set(dirs))
        if unknown:
            raise CatalogError(f"categories {unknown} not found under {root}; it has {dirs[:50]}")
        return [d for d in dirs if d in wanted]
    return dirs


def _docs_or_stray(files: list[tuple[str, dict[str, Any]]], report: CatalogReport, reason: str) -> None:
    for url, _ in files:
        if url.rsplit("/", 1)[-1].lower() in DOC_FILES:
            report.ignored += 1
        else:
            report.note("stray", url, reason)


def _note_tree(url: str, report: CatalogReport, kind: str, reason: str) -> None:
    for file_url, _ in storage.walk_files(url):
        if kind == "ignored":
            report.ignored += 1
        else:
            report.note(kind, file_url, reason)


def _relative(url: str, base: str) -> str:
    base = base.rstrip("/") + "/"
    return url[len(base) :] if url.startswith(base) else url.rsplit("/", 1)[-1]


def _stem(rel: str) -> str:
    head, _, name = rel.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{head}/{stem}" if head else stem


def _size(info: dict[str, Any]) -> int | None:
    size = info.get("size", info.get("Size"))
    return None if size is None else int(size)


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__MACOSX") or name in ("Thumbs.db", "desktop.ini")
