"""Dataset prefix (or a given manifest) -> manifest table (``schemas/manifest``), streamed in batches.

Layouts (``LAYOUTS``; ``"auto"`` picks the first that fits, checking a few folders only):

- ``visa``: ``split_csv/1cls.csv`` (object, split, label, image, mask) with images under
  ``<object>/Data/Images/{Normal,Anomaly}/`` and masks under ``<object>/Data/Masks/Anomaly/``; defect types
  come from ``<object>/image_anno.csv`` when present, else ``"anomaly"``.
- ``mvtec3d``: ``<cat>/{train,validation,test}/<good|defect>/{rgb/NNN.png, xyz/NNN.tiff, gt/NNN.png}``.
- ``mvtec``: ``<cat>/{train,test}/<good|defect>/*.png`` + ``<cat>/ground_truth/<defect>/<name>_mask.png``.
- ``folder``: ``<category>/<split>/<label>/...`` (any depth below the label), label ``good``/``normal``/``ok``
  is normal, anything else names a defect; an optional ``<category>/ground_truth/`` as in MVTec AD.

Listing streams one category (and one label folder) at a time and rows leave in :data:`BATCH_ROWS`-row
Arrow batches, so peak memory does not grow with the archive.

Every file under an item folder (an MVTec/folder label folder, an MVTec 3D-AD ``rgb/`` folder) becomes
exactly one manifest row, so that scoring gives it exactly one result row: images (any of
:data:`IMAGE_EXTS`, dot-named ones such as ``..png`` included) are read and scored; a zero-byte file, a file
whose name is not an image's, and a URI adray will not read faithfully (:func:`uri_refusal`) get
``skip_status`` (``empty`` / ``unsupported`` / ``refused``) and ``skip_reason``, which every detector's row
repeats without reading the file. Only operating-system metadata (``.DS_Store``, ``Thumbs.db``,
``desktop.ini``, ``._*`` AppleDouble files, hidden folders, ``__MACOSX``) is left out, counted as
``ignored``. Files outside item folders (stray), partner files without their item (a mask, a point cloud)
and partners that are absent go into a :class:`CatalogReport` (counts + a bounded list of examples).

URIs are written once, in canonical form (:func:`canonical_uri`): local paths absolute and normalised
(``file:///data/x.png`` and ``/data/./x.png`` are ``/data/x.png``), ``s3a://`` as ``s3://``, no user info.
``item_id`` is ``sha256(canonical uri)[:16]`` (hex): stable for a file, so re-cataloguing the same archive
gives the same ids, and two spellings of one file are one item. ``content_token`` follows the bytes:
``h:<sha256>`` of each local file (read once per catalog), the version id or ETag on object stores
(``rgb|xyz`` for 3D items).
The layouts themselves live in :mod:`adray.catalog_layouts`; the names, the report, item ids, canonical
URIs and refusals that both use live in :mod:`adray.catalog_common` (importable from here too); this
module holds the public API and manifest reading (Parquet / CSV / JSONL, validated and normalised) and
streaming writing.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from adray import storage
from adray.catalog_common import (  # noqa: F401  (every name stays importable from adray.catalog)
    DOC_FILES,
    IMAGE_EXTS,
    LAYOUTS,
    MANIFEST_EXTS,
    MAX_EXAMPLES,
    NORMAL_LABELS,
    SKIP_STATUSES,
    SPLITS,
    CatalogError,
    CatalogReport,
    canonical_uri,
    item_id_for,
    uri_refusal,
)
from adray.schemas import load_schema

BATCH_ROWS = 10_000


def readable_items(table: pa.Table) -> pa.Table:
    """The manifest rows to read (``skip_status`` null): what fitting and reference picking may use."""
    if "skip_status" not in table.column_names:
        return table
    import pyarrow.compute as pc

    return table.filter(pc.is_null(table.column("skip_status")))


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
        row["uri"] = canonical_uri(row["uri"])
        refusal = uri_refusal(row["uri"])
        if refusal and row.get("skip_status") != "refused":
            row["skip_status"], row["skip_reason"] = "refused", refusal
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
    "skip_status",
    "skip_reason",
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
    """``table`` checked and conformed to ``schemas/manifest`` (what :func:`read_manifest` does after
    reading; ``source`` names it in errors). Raises :class:`CatalogError` for a missing required column, an
    empty ``uri``/``category``, an unknown ``skip_status``, split or label, or a repeated file or item id."""
    from adray.schemas import conform_table

    _require_columns(table, source)
    cols = {
        n: table.column(n).to_pylist() for n in table.column_names if n in _STRING_COLUMNS or n == "label"
    }
    n = table.num_rows
    # One spelling per file; relative local paths are read from the driver's working directory (Ray workers
    # run elsewhere). User info stays in this in-process copy (it may be the only credential); item ids,
    # the duplicate check and written manifests use the form without it.
    uris = [canonical_uri(str(u), keep_userinfo=True) for u in cols["uri"]]
    bare = [canonical_uri(u) for u in uris]
    _refuse_duplicate_files(cols["uri"], bare, source)
    ids = cols.get("item_id") or [None] * n
    ids = [str(i) if i not in (None, "") else item_id_for(u) for i, u in zip(ids, bare)]
    skips, reasons = _skip_columns(cols, bare, source)
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
        "skip_status": pa.array([s or None for s in skips], pa.string()),
        "skip_reason": pa.array([r or None for r in reasons], pa.string()),
    }
    for name, values in fixed.items():
        table = _put_column(table, name, values)
    for name in _STRING_COLUMNS:  # CSV readers infer numbers for all-digit strings
        if name in table.column_names and not pa.types.is_string(table.column(name).type):
            table = _put_column(table, name, table.column(name).cast(pa.string()))
    for name in ("pc_uri", "gt_mask_uri"):
        if name in table.column_names:
            paths = [canonical_uri(v, keep_userinfo=True) if v else v for v in table.column(name).to_pylist()]
            table = _put_column(table, name, pa.array(paths, pa.string()))
    dupes = [k for k, c in Counter(ids).items() if c > 1]
    if dupes:
        raise CatalogError(f"manifest {source}: {len(dupes)} duplicate item_id value(s), e.g. {dupes[0]!r}")
    return conform_table(table, "manifest")


def _require_columns(table: pa.Table, source: str) -> None:
    """Refuse a manifest without ``uri``/``category`` columns, or with empty values in them."""
    missing = [c for c in REQUIRED_INPUT_COLUMNS if c not in table.column_names]
    if missing:
        optional = [n for n in load_schema("manifest").names if n not in REQUIRED_INPUT_COLUMNS]
        raise CatalogError(
            f"manifest {source} lacks required column(s) {', '.join(missing)}; required: "
            f"{', '.join(REQUIRED_INPUT_COLUMNS)}; optional: {', '.join(optional)} (has: {', '.join(table.column_names)})"
        )
    for name in ("uri", "category"):
        bad = [i for i, v in enumerate(table.column(name).to_pylist()) if v in (None, "")]
        if bad:
            raise CatalogError(
                f"manifest {source}: column {name!r} is empty in {len(bad)} row(s), e.g. row {bad[0]}"
            )


def _skip_columns(cols: dict[str, list[Any]], bare: list[str], source: str) -> tuple[list[Any], list[Any]]:
    """``(skip_status, skip_reason)`` per row: the given ones checked, rows whose URI is refused marked."""
    skips = list(cols.get("skip_status") or [None] * len(bare))
    reasons = list(cols.get("skip_reason") or [None] * len(bare))
    for i, u in enumerate(bare):
        if skips[i] not in (None, "") and skips[i] not in SKIP_STATUSES:
            raise CatalogError(
                f"manifest {source}: skip_status {skips[i]!r} in row {i}; use one of {', '.join(SKIP_STATUSES)}"
            )
        refusal = uri_refusal(u)
        if refusal and skips[i] != "refused":
            skips[i], reasons[i] = "refused", refusal
    return skips, reasons


def _put_column(table: pa.Table, name: str, values: Any) -> pa.Table:
    """``table`` with column ``name`` replaced in place, or appended where it has none."""
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


def _refuse_duplicate_files(given: list[Any], canonical: list[str], source: str) -> None:
    """One file, one row: two rows naming the same file (``/data/x.png`` and ``file:///data/x.png``) would
    be scored as two items."""
    first: dict[str, int] = {}
    for i, u in enumerate(canonical):
        j = first.setdefault(u, i)
        if j != i:
            raise CatalogError(
                f"manifest {source}: rows {j} and {i} name the same file {u} (as {storage.redact_url(str(given[j]))!r} "
                f"and {storage.redact_url(str(given[i]))!r}); list each file once"
            )


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


def open_manifest(
    source: str, layout: str = "auto", *, categories: list[str] | None = None
) -> tuple[pa.Table, CatalogReport | None]:
    """The one answer to "prefix or manifest URI": ``(table, None)`` for a manifest file (Parquet, CSV,
    JSONL: read and normalised, :func:`read_manifest`), ``(table, report)`` for a dataset prefix
    catalogued in ``layout`` (:func:`build_manifest`). ``layout="manifest"`` insists on a file; with
    ``categories`` only those categories' rows come back either way. Raises what the reader raises
    (``FileNotFoundError``, ``ValueError`` for an invalid manifest, ``pyarrow.ArrowException``)."""
    if layout == "manifest" or (layout == "auto" and is_manifest_uri(source)):
        table = read_manifest(source)
        if categories:
            import pyarrow.compute as pc

            table = table.filter(pc.is_in(table.column("category"), pa.array(categories, pa.string())))
        return table, None
    return build_manifest(source, layout, categories=categories)


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
        table, _ = open_manifest(source, "manifest", categories=categories)
        report = CatalogReport(source=source, layout="manifest")
        for row in table.select(["category", "split", "label", "skip_status"]).to_pylist():
            report.count(row)
        write_manifest(_without_userinfo(table), output)
        return report
    report = CatalogReport(source=source, layout=layout)
    write_manifest(iter_manifest_batches(source, layout, categories=categories, report=report), output)
    return report


def _without_userinfo(table: pa.Table) -> pa.Table:
    """``table`` with user info (credentials) dropped from its URI columns, for writing."""
    for name in ("uri", "pc_uri", "gt_mask_uri"):
        if name in table.column_names:
            values = [canonical_uri(v) if v else v for v in table.column(name).to_pylist()]
            table = table.set_column(table.column_names.index(name), name, pa.array(values, pa.string()))
    return table
