"""Labels as data: an append-only labels table under a results root (``schemas/labels``).

``adray labels import FILE --output ROOT`` validates a CSV or Parquet file (the review page's export or any
tool's) and writes it as one new file ``ROOT/labels/labels-<UTC time>-<uuid hex>.parquet``, atomically and
all or nothing. Columns of the file (names as in the review page's export):

- ``item_id`` and/or ``uri`` (at least one per row): the item, resolved against the committed results under
  ROOT (every scored item has a row there, so the results know every item of every run);
- ``label``: ``normal`` or ``anomalous`` (case and surrounding blanks ignored);
- optional ``defect_type``, ``mask_uri`` (a ground-truth mask that must exist), ``labelled_by`` and
  ``labelled_at`` (ISO 8601; a time without zone is UTC; the import time when empty).

Unknown items, ``item_id`` and ``uri`` naming different items, unknown labels, unparseable times, masks
that do not exist and duplicate rows (one item twice with the same ``labelled_at``) are reported together in
one :class:`LabelsError` naming the rows (data rows counted from 1, header not counted) and their values;
nothing is written then. Rows of one item at different times are history and are kept. The latest label
per item wins (``labelled_at``, then ``imported_at``); earlier rows stay as the audit trail.

:func:`create_views` adds the DuckDB views ``labels`` (every row) and ``latest_labels`` (one row per item)
that ``adray query`` shows; :func:`latest_labels` returns the latter for evaluation.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import duckdb
import pyarrow as pa

from adray import schemas, storage
from adray.catalog import canonical_uri
from adray.errors import UserError

LABEL_VALUES = ("normal", "anomalous")
#: The columns of an import file, in the order the review page exports them.
FILE_COLUMNS = ("item_id", "uri", "label", "defect_type", "mask_uri", "labelled_by", "labelled_at")
LABELS_DIR = "labels"
FILE_PREFIX = "labels-"
MAX_LISTED = 20  # offending rows named per kind of problem; the rest are counted
BAD_TIME = "bad labelled_at (use ISO 8601, e.g. 2024-05-01T12:00:00Z)"
LATEST_ORDER = "labelled_at DESC, imported_at DESC, import_id DESC, source_row DESC"


class LabelsError(UserError):
    """A labels file that cannot be imported as it is; nothing was written.

    ``problems`` maps a kind of problem to the offending rows' descriptions (``row N (column='value')``),
    ``rows`` holds every offending row number (data rows from 1).
    """

    def __init__(self, source: str, problems: dict[str, list[str]], rows: set[int] | None = None) -> None:
        self.problems = problems
        self.rows = rows or set()
        parts = []
        for kind, items in problems.items():
            more = f", and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
            parts.append(f"{kind}: {', '.join(items[:MAX_LISTED])}{more}")
        n = f"{len(self.rows)} row(s)" if self.rows else "the file"
        super().__init__(
            f"labels file {storage.redact_url(source)}: nothing imported, {n} to fix: " + "; ".join(parts)
        )


@dataclass
class ImportResult:
    """What one import wrote: the stored file, its import id and the counts."""

    url: str
    import_id: str
    n_rows: int
    n_items: int
    n_anomalous: int
    ignored_columns: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ import


def import_labels(file_uri: str, root: str, *, now: datetime | None = None) -> ImportResult:
    """Validate ``file_uri`` (CSV or Parquet) against the items under ``root`` and append it as one new file
    of the labels table. Raises :class:`LabelsError` (nothing written) for any bad row, missing columns or
    an empty file; ``FileNotFoundError`` when the file does not exist."""
    now = now or datetime.now(timezone.utc)
    table = read_labels_file(file_uri)
    ignored = [c for c in table.column_names if c not in FILE_COLUMNS]
    _check_columns(file_uri, table)
    rows = [_clean(r) for r in table.select([c for c in FILE_COLUMNS if c in table.column_names]).to_pylist()]
    problems: dict[str, list[str]] = defaultdict(list)
    bad: set[int] = set()

    def flag(kind: str, n: int, text: str) -> None:
        problems[kind].append(f"row {n} ({text})")
        bad.add(n)

    _check_values(rows, now, flag)
    _resolve_items(rows, root, flag)
    _check_duplicates(rows, flag)
    _check_masks(rows, flag)
    if problems:
        raise LabelsError(file_uri, dict(problems), bad)
    stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
    import_id = f"{FILE_PREFIX}{stamp}-{uuid.uuid4().hex}"
    out = _stored_table(rows, now=now, import_id=import_id, source=file_uri)
    url = storage.join_url(root, LABELS_DIR, f"{import_id}.parquet")
    _write_parquet(out, url)
    items = {r["item_id"] for r in rows}
    n_anom = sum(r["label"] == "anomalous" for r in rows)
    return ImportResult(url, import_id, len(rows), len(items), n_anom, ignored)


def read_labels_file(uri: str) -> pa.Table:
    """The file as a table: CSV (every column read as text, empty cells null) or Parquet (.parquet, .pq)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    lower = uri.lower()
    if not lower.endswith((".csv", ".parquet", ".pq")):
        raise LabelsError(uri, {"unknown format": ["name the file *.csv or *.parquet"]})
    data = storage.read_bytes(uri)
    try:
        if not lower.endswith(".csv"):
            return pq.read_table(io.BytesIO(data))
        header = next(csv.reader([data.split(b"\n", 1)[0].decode("utf-8-sig")]), [])
        opts = pacsv.ConvertOptions(column_types={c: pa.string() for c in header}, strings_can_be_null=True)
        table = pacsv.read_csv(io.BytesIO(data), convert_options=opts)
    except (pa.ArrowException, UnicodeDecodeError) as exc:
        raise LabelsError(uri, {"unreadable": [" ".join(str(exc).split())[:200]]}) from exc
    return table.rename_columns([c.strip() for c in table.column_names])


def _check_columns(uri: str, table: pa.Table) -> None:
    names = set(table.column_names)
    missing = []
    if not names & {"item_id", "uri"}:
        missing.append("item_id or uri")
    if "label" not in names:
        missing.append("label")
    if missing:
        cols = ", ".join(table.column_names) or "none"
        raise LabelsError(uri, {"missing columns": missing + [f"the file has: {cols}"]})
    if table.num_rows == 0:
        raise LabelsError(uri, {"empty": ["the file has no rows"]})


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    out = {c: row.get(c) for c in FILE_COLUMNS}
    for k, v in out.items():
        if isinstance(v, str):
            out[k] = v.strip() or None
        elif v is not None and k != "labelled_at":
            out[k] = str(v)
    return out


def _check_values(rows: list[dict[str, Any]], now: datetime, flag) -> None:
    for n, r in enumerate(rows, start=1):
        r["row"] = n
        label = (r["label"] or "").lower()
        if label not in LABEL_VALUES:
            flag("unknown labels (use normal or anomalous)", n, f"label={r['label']!r}")
        r["label"] = label
        at = _parse_time(r["labelled_at"]) if r["labelled_at"] is not None else now
        if at is None:
            flag(BAD_TIME, n, f"labelled_at={r['labelled_at']!r}")
        r["labelled_at"] = at
        if r["item_id"] is None and r["uri"] is None:
            flag("rows without item_id or uri", n, "both empty")


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        t = value
    else:
        try:
            t = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _resolve_items(rows: list[dict[str, Any]], root: str, flag) -> None:
    """Set each row's ``item_id`` and ``uri`` from what the committed results under ``root`` know."""
    for r in rows:
        r["canonical"] = canonical_uri(r["uri"]) if r["uri"] else None
    by_id, by_uri = _known_items(root, rows)
    where = f"not in the committed results under {storage.redact_url(root)}"
    for r in rows:
        n, item, uri = r["row"], r["item_id"], r["canonical"]
        if item is None and uri is None:
            continue
        if item is not None and item not in by_id:
            flag(f"unknown items ({where})", n, f"item_id={item!r}")
        elif item is None and uri not in by_uri:
            flag(f"unknown items ({where})", n, f"uri={r['uri']!r}")
        elif item is not None and uri is not None and by_id[item] != uri:
            flag("item_id and uri name different items", n, f"item_id={item!r}, uri={r['uri']!r}")
        else:
            r["item_id"] = item if item is not None else by_uri[uri]
            r["uri"] = by_id[r["item_id"]]
            r["resolved"] = True


def _known_items(root: str, rows: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    # late: importing adray.pipeline runs its package, whose query module imports this one for its views
    from adray.pipeline.results_store import ResultsStore

    wanted = pa.table(
        {
            "item_id": pa.array([r["item_id"] for r in rows], pa.string()),
            "uri": pa.array([r["canonical"] for r in rows], pa.string()),
        }
    )
    store = ResultsStore(root)
    con = store.duckdb()
    store.add_results_view(con, store.committed_files())
    con.register("_wanted", wanted)
    found = con.execute(
        "SELECT DISTINCT item_id, uri FROM results WHERE item_id IN (SELECT item_id FROM _wanted) "
        "OR uri IN (SELECT uri FROM _wanted)"
    ).fetchall()
    by_id = {i: u for i, u in found}
    by_uri = {u: i for i, u in found}
    return by_id, by_uri


def _check_duplicates(rows: list[dict[str, Any]], flag) -> None:
    seen: dict[tuple[str, datetime], int] = {}
    for r in rows:
        if not r.get("resolved") or r["labelled_at"] is None:
            continue
        key = (r["item_id"], r["labelled_at"])
        if key in seen:
            flag(
                "duplicate rows (one item twice at the same labelled_at)",
                r["row"],
                f"item_id={r['item_id']!r} as row {seen[key]}",
            )
        else:
            seen[key] = r["row"]


def _check_masks(rows: list[dict[str, Any]], flag) -> None:
    given = [r for r in rows if r["mask_uri"] is not None]
    for r in given:
        r["mask_uri"] = canonical_uri(r["mask_uri"])

    def state(url: str) -> str | None:
        try:
            return None if storage.exists(url) else "does not exist"
        except (OSError, storage.StorageError) as exc:
            return f"cannot be checked: {type(exc).__name__}"

    with ThreadPoolExecutor(max_workers=8) as pool:
        states = list(pool.map(state, [r["mask_uri"] for r in given]))
    for r, why in zip(given, states):
        if why is not None:
            flag("masks that do not exist", r["row"], f"mask_uri={r['mask_uri']!r} {why}")


def _stored_table(rows: list[dict[str, Any]], *, now: datetime, import_id: str, source: str) -> pa.Table:
    n = len(rows)
    cols: dict[str, list[Any]] = {c: [r[c] for r in rows] for c in FILE_COLUMNS}
    cols.update(
        imported_at=[now] * n,
        import_id=[import_id] * n,
        source=[storage.redact_url(source)] * n,
        source_row=[r["row"] for r in rows],
    )
    schema = schemas.load_schema("labels")
    return pa.Table.from_pydict({f.name: pa.array(cols[f.name], f.type) for f in schema}, schema=schema)


def _write_parquet(table: pa.Table, url: str) -> None:
    import pyarrow.parquet as pq

    schemas.validate_table(table, "labels")
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(url, buf.getvalue())  # atomic: temp file + rename locally, one PUT on object stores


# ------------------------------------------------------------------------------------------------- views


def label_files(root: str) -> list[str]:
    """URLs of the labels table's files under ``root/labels`` (``labels-*.parquet``), oldest name first."""
    base = storage.join_url(root, LABELS_DIR)
    storage.resolve(base).fs.invalidate_cache()
    if not storage.exists(base):
        return []
    names = [url for url, _ in storage.walk_files(base, detail=False)]
    return sorted(u for u in names if u.rsplit("/", 1)[-1].startswith(FILE_PREFIX) and u.endswith(".parquet"))


def create_views(con: duckdb.DuckDBPyConnection, root: str) -> None:
    """Add the views ``labels`` (every imported row) and ``latest_labels`` (the latest row per item) of
    ``root`` to ``con`` (whose filesystem for ``root`` is registered already)."""
    schema = schemas.load_schema("labels")
    cols = ", ".join(f'"{c}"' for c in schema.names)
    con.register("_empty_labels", schema.empty_table())
    files = label_files(root)
    if files:
        file_list = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
        source = f"SELECT * FROM _empty_labels UNION ALL BY NAME SELECT * FROM read_parquet({file_list})"
    else:
        source = "SELECT * FROM _empty_labels"
    con.execute(f"CREATE VIEW labels AS SELECT {cols} FROM ({source})")
    con.execute(
        "CREATE VIEW latest_labels AS SELECT * FROM labels "
        f"QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY {LATEST_ORDER}) = 1"
    )


def latest_labels(root: str) -> pa.Table:
    """The latest label per item under ``root`` (columns of ``schemas/labels``); empty when none."""
    from adray.pipeline.results_store import ResultsStore  # late, as in _known_items

    con = ResultsStore(root).duckdb()
    create_views(con, root)
    return con.sql("SELECT * FROM latest_labels ORDER BY item_id").to_arrow_table()
