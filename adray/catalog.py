"""Dataset prefix (or a given manifest) -> manifest table (``schemas/manifest``), streamed in batches.

Layouts (``LAYOUTS``; ``"auto"`` picks the first that fits, checking a few folders only):

- ``visa``: ``split_csv/1cls.csv`` (object, split, label, image, mask) with images under
  ``<object>/Data/Images/{Normal,Anomaly}/`` and masks under ``<object>/Data/Masks/Anomaly/``; defect types
  come from ``<object>/image_anno.csv`` when present, else ``"anomaly"``.
- ``mvtec3d``: ``<cat>/{train,validation,test}/<good|defect>/{rgb/NNN.png, xyz/NNN.tiff, gt/NNN.png}``.
- ``mvtec``: ``<cat>/{train,test}/<good|defect>/*.png`` + ``<cat>/ground_truth/<defect>/<name>_mask.png``.
- ``folder``: ``<category>/<split>/<label>/...`` (any depth below the label), label ``good``/``normal``/``ok``
  is normal, anything else names a defect; an optional ``<category>/ground_truth/`` as in MVTec AD.

Listing streams through :func:`adray.storage.walk_files` one category (and one label folder) at a time and
rows leave in :data:`BATCH_ROWS`-row Arrow batches, so peak memory does not grow with the archive. Hidden
and system files are skipped; stray files (outside the layout), zero-byte files and missing partners (a
mask, a point cloud, an image listed in a CSV) go into a :class:`CatalogReport` (counts + a bounded list of
examples) instead of stopping the run. Zero-byte files are left out of the manifest.

``item_id`` is ``sha256(uri)[:16]`` (hex): stable for a URI, so re-cataloguing the same archive gives the same
ids; ``content_token`` (etag / version id / size+mtime, ``rgb|xyz`` for 3D items) tells changed content.
The layouts themselves live in :mod:`adray.catalog_layouts`; this module holds the public API, the report,
and manifest reading (Parquet / CSV / JSONL, validated and normalised) and streaming writing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from adray import storage
from adray.schemas import load_schema

LAYOUTS = ("mvtec", "mvtec3d", "visa", "folder")
BATCH_ROWS = 10_000
MAX_EXAMPLES = 20
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
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
    unreadable: int = 0  # zero-byte or unlistable files (left out of the manifest)
    missing: int = 0  # expected partners that are absent (mask, point cloud, image listed in a CSV)
    ignored: int = 0  # dataset documentation files (license.txt, class_ids.json, ...)
    groups: Counter = field(default_factory=Counter)  # (category, split, label name) -> items
    examples: list[str] = field(default_factory=list)

    def note(self, kind: str, url: str, reason: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{kind}: {url} ({reason})")

    def count(self, row: dict[str, Any]) -> None:
        self.items += 1
        label = {0: "normal", 1: "anomalous"}.get(row.get("label"), "unknown")
        self.groups[(row["category"], row["split"], label)] += 1

    def to_dict(self) -> dict[str, Any]:
        groups = [
            {"category": c, "split": s, "label": lb, "items": n}
            for (c, s, lb), n in sorted(self.groups.items())
        ]
        keys = ("source", "layout", "items", "stray", "unreadable", "missing", "ignored", "examples")
        return {**{k: getattr(self, k) for k in keys}, "groups": groups}

    def summary(self) -> str:
        lines = [f"catalog of {self.source} (layout {self.layout}): {self.items} items"]
        lines += [f"  {c:<20} {s:<11} {lb:<10} {n:>9}" for (c, s, lb), n in sorted(self.groups.items())]
        lines.append(
            f"  stray files: {self.stray}, unreadable: {self.unreadable}, missing partners: {self.missing}, "
            f"ignored docs: {self.ignored}"
        )
        lines += [f"  - {e}" for e in self.examples]
        hidden = self.stray + self.unreadable + self.missing - len(self.examples)
        if hidden > 0:
            lines.append(f"  ... and {hidden} more")
        return "\n".join(lines)


def item_id_for(uri: str) -> str:
    """The stable item id of ``uri``: the first 16 hex digits of its sha256."""
    return hashlib.sha256(uri.encode("utf-8")).hexdigest()[:16]


def build_manifest(
    prefix: str, layout: str = "auto", *, categories: list[str] | None = None
) -> tuple[pa.Table, CatalogReport]:
    """Catalog ``prefix`` in ``layout`` (or detect it) into a manifest table and a report."""
    report = CatalogReport(source=prefix, layout=layout)
    batches = list(iter_manifest_batches(prefix, layout, categories=categories, report=report))
    return pa.Table.from_batches(batches, schema=load_schema("manifest")), report


def iter_manifest_batches(
    prefix: str,
    layout: str = "auto",
    *,
    categories: list[str] | None = None,
    report: CatalogReport | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[pa.RecordBatch]:
    """Stream the manifest of ``prefix`` as record batches of at most ``batch_rows`` rows.

    The layout is checked (or detected) eagerly, when this is called; listing happens while iterating.
    """
    from adray import catalog_layouts

    loc = storage.resolve(prefix)
    loc.fs.invalidate_cache(loc.path)  # a long-lived process must not see a stale listing
    if not storage.exists(prefix):
        raise CatalogError(f"{prefix} does not exist or holds no files")
    if layout == "auto":
        layout = catalog_layouts.detect_layout(prefix)
    if layout not in LAYOUTS:
        raise CatalogError(f"unknown layout {layout!r}; choose auto or one of {', '.join(LAYOUTS)}")
    report = report if report is not None else CatalogReport(source=prefix, layout=layout)
    report.layout = layout
    rows = catalog_layouts.ROW_SOURCES[layout](loc.url(), categories, report)
    return _batches(rows, report, batch_rows)


def _batches(rows: Iterable[dict[str, Any]], report: CatalogReport, size: int) -> Iterator[pa.RecordBatch]:
    schema = load_schema("manifest")
    pending: list[dict[str, Any]] = []
    for row in rows:
        row["item_id"] = item_id_for(row["uri"])
        report.count(row)
        pending.append(row)
        if len(pending) >= size:
            yield pa.RecordBatch.from_pylist(pending, schema=schema)
            pending = []
    if pending:
        yield pa.RecordBatch.from_pylist(pending, schema=schema)


# ------------------------------------------------------------------------------------------- manifests

REQUIRED_INPUT_COLUMNS = ("uri", "category")
_STRING_COLUMNS = (
    "item_id",
    "uri",
    "pc_uri",
    "category",
    "split",
    "defect_type",
    "gt_mask_uri",
    "content_token",
)
_NORMAL_WORDS = {"0", "good", "normal", "ok", "false", "negative"}
_ANOMALOUS_WORDS = {"1", "anomaly", "anomalous", "defect", "bad", "ng", "true", "positive"}


def read_manifest(uri: str) -> pa.Table:
    """Read a manifest (Parquet, CSV or JSONL), validate it and normalise it to ``schemas/manifest``.

    Only ``uri`` and ``category`` are required. Missing ``item_id`` values are derived from the URI, a
    missing ``split`` is ``test``, labels may be 0/1, booleans or words (good/normal/ok vs
    anomaly/defect/bad/ng), ``defect_type`` defaults to ``good`` for normal items. Extra columns are kept.
    """
    return normalise_manifest(_read_table(uri), uri)


def normalise_manifest(table: pa.Table, source: str = "manifest") -> pa.Table:
    from adray.schemas import conform_table

    missing = [c for c in REQUIRED_INPUT_COLUMNS if c not in table.column_names]
    if missing:
        optional = [n for n in load_schema("manifest").names if n not in REQUIRED_INPUT_COLUMNS]
        raise CatalogError(
            f"manifest {source} lacks required column(s) {', '.join(missing)}; required: "
            f"{', '.join(REQUIRED_INPUT_COLUMNS)}; optional: {', '.join(optional)} (has: {', '.join(table.column_names)})"
        )
    cols = {
        n: table.column(n).to_pylist() for n in table.column_names if n in _STRING_COLUMNS or n == "label"
    }
    n = table.num_rows
    for name in ("uri", "category"):
        bad = [i for i, v in enumerate(cols[name]) if v in (None, "")]
        if bad:
            raise CatalogError(
                f"manifest {source}: column {name!r} is empty in {len(bad)} row(s), e.g. row {bad[0]}"
            )
    # Relative local paths are read from the driver's working directory; Ray workers run elsewhere.
    uris = [storage.absolute_url(str(u)) for u in cols["uri"]]
    ids = cols.get("item_id") or [None] * n
    ids = [str(i) if i not in (None, "") else item_id_for(u) for i, u in zip(ids, uris)]
    splits = [_split_name(s, source) for s in (cols.get("split") or [None] * n)]
    labels = [_label_value(v, source) for v in (cols.get("label") or [None] * n)]
    defects = cols.get("defect_type") or [None] * n
    defects = [d if d not in (None, "") else ("good" if lb == 0 else None) for d, lb in zip(defects, labels)]
    fixed = {
        "item_id": pa.array(ids, pa.string()),
        "uri": pa.array(uris, pa.string()),
        "split": pa.array(splits, pa.string()),
        "label": pa.array(labels, pa.int8()),
        "defect_type": pa.array(defects, pa.string()),
    }
    for name, values in fixed.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, values)
        else:
            table = table.append_column(name, values)
    for name in _STRING_COLUMNS:  # CSV readers infer numbers for all-digit strings
        if name in table.column_names and not pa.types.is_string(table.column(name).type):
            table = table.set_column(
                table.column_names.index(name), name, table.column(name).cast(pa.string())
            )
    for name in ("pc_uri", "gt_mask_uri"):
        if name in table.column_names:
            paths = [storage.absolute_url(v) if v else v for v in table.column(name).to_pylist()]
            table = table.set_column(table.column_names.index(name), name, pa.array(paths, pa.string()))
    dupes = [k for k, c in Counter(ids).items() if c > 1]
    if dupes:
        raise CatalogError(f"manifest {source}: {len(dupes)} duplicate item_id value(s), e.g. {dupes[0]!r}")
    return conform_table(table, "manifest")


def _split_name(value: Any, source: str) -> str:
    if value in (None, ""):
        return "test"
    name = SPLITS.get(str(value).strip().lower())
    if name is None:
        raise CatalogError(f"manifest {source}: unknown split {value!r}; use train, validation or test")
    return name


def _label_value(value: Any, source: str) -> int | None:
    if value is None or value == "" or (isinstance(value, float) and value != value):  # NaN from pandas
        return None
    word = (
        str(int(value)) if isinstance(value, (bool, int, float)) and float(value).is_integer() else str(value)
    )
    word = word.strip().lower()
    if word in _NORMAL_WORDS:
        return 0
    if word in _ANOMALOUS_WORDS:
        return 1
    raise CatalogError(f"manifest {source}: label {value!r} is not 0/1 (normal/anomalous) or empty")


def _read_table(uri: str) -> pa.Table:
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    ext = _manifest_ext(uri)
    loc = storage.resolve(uri)
    if not storage.exists(uri):
        raise FileNotFoundError(f"manifest {uri} does not exist")
    with loc.fs.open(loc.path, "rb") as f:
        if ext in (".parquet", ".pq"):
            return pq.read_table(f)
        data = f.read()
    if ext == ".csv":
        header = next(csv.reader([data.split(b"\n", 1)[0].decode("utf-8-sig")]), [])
        types = {c: pa.string() for c in header if c in _STRING_COLUMNS}
        return pacsv.read_csv(
            io.BytesIO(data),
            convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True),
        )
    return pajson.read_json(io.BytesIO(data))


def _manifest_ext(uri: str) -> str:
    lower = uri.lower()
    for ext in MANIFEST_EXTS:
        if lower.endswith(ext):
            return ".jsonl" if ext in (".json", ".ndjson") else ext
    raise CatalogError(f"manifest {uri}: unknown format; name it *.parquet, *.csv or *.jsonl")


def is_manifest_uri(uri: str) -> bool:
    """Whether ``uri`` names a manifest file (by extension) rather than a dataset prefix."""
    return uri.lower().endswith(MANIFEST_EXTS) and storage.exists(uri)


def write_manifest(table: pa.Table | Iterable[pa.RecordBatch], uri: str) -> int:
    """Write a manifest (Parquet, CSV or JSONL by extension), streaming batches; returns the row count.

    Local files appear atomically (temp file + rename); on object stores an aborted write is discarded.
    """
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    ext = _manifest_ext(uri)
    schema = load_schema("manifest")
    batches = table.to_batches(max_chunksize=BATCH_ROWS) if isinstance(table, pa.Table) else table
    if isinstance(table, pa.Table):
        schema = table.schema
    rows = 0
    with storage.open_atomic(uri) as f:
        writer: Any = None
        if ext in (".parquet", ".pq"):
            writer = pq.ParquetWriter(f, schema)
        elif ext == ".csv":
            writer = pacsv.CSVWriter(f, schema)
        try:
            for batch in batches:
                rows += batch.num_rows
                if writer is not None:
                    writer.write_batch(batch)
                else:
                    f.write("".join(_json_line(r) for r in batch.to_pylist()).encode("utf-8"))
        finally:
            if writer is not None:
                writer.close()  # also on failure, before the partial output is thrown away
    return rows


def _json_line(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, default=str) + "\n"


def catalog_to(
    source: str, output: str, layout: str = "auto", *, categories: list[str] | None = None
) -> CatalogReport:
    """Catalog ``source`` (a dataset prefix or a manifest file) and write the manifest to ``output``."""
    if layout == "manifest" or (layout == "auto" and is_manifest_uri(source)):
        table = read_manifest(source)
        if categories:
            import pyarrow.compute as pc

            table = table.filter(pc.is_in(table.column("category"), pa.array(categories)))
        report = CatalogReport(source=source, layout="manifest")
        for row in table.select(["category", "split", "label"]).to_pylist():
            report.count(row)
        write_manifest(table, output)
        return report
    report = CatalogReport(source=source, layout=layout)
    write_manifest(iter_manifest_batches(source, layout, categories=categories, report=report), output)
    return report
