"""The data contracts as code: ``schemas/<name>.v<N>.json`` loaded as pyarrow schemas, plus validation.

Tables (``manifest``, ``results``) are checked and conformed column by column; JSON documents
(``run_record``, ``artifact``) are checked field by field with :func:`validate_record`. Each schema file
lists ``{"name", "type", "nullable", "description"}`` entries, where ``type`` is an Arrow type string
(``string``, ``int8``, ``float32``, ``bool``, ``timestamp[us, tz=UTC]``, ...) or, for documents, one of
``json`` (any JSON object), ``struct`` / ``list<struct>`` (with nested ``fields``) and
``map<string, string>``.

The schema files live in the repository's ``schemas/`` folder (next to the package); set
``ADRAY_SCHEMAS_DIR`` to read them from elsewhere.
"""

from __future__ import annotations

import functools
import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

SCHEMA_NAMES = ("manifest", "results", "run_record", "artifact", "labels")
SCHEMA_VERSION = 1

_SIMPLE_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "large_string": pa.large_string(),
    "binary": pa.binary(),
    "bool": pa.bool_(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint8": pa.uint8(),
    "uint16": pa.uint16(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
    "float16": pa.float16(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "double": pa.float64(),
    "date32": pa.date32(),
    "json": pa.string(),  # a JSON object, stored as its text in tables
    "map<string, string>": pa.map_(pa.string(), pa.string()),
    "list<string>": pa.list_(pa.string()),
    "list<int64>": pa.list_(pa.int64()),
    "list<float64>": pa.list_(pa.float64()),
}
_TIMESTAMP = re.compile(r"^timestamp\[(s|ms|us|ns)(?:,\s*tz=([^\]]+))?\]$")


class SchemaError(ValueError):
    """A table or document does not match its schema; the message lists every problem found."""

    def __init__(self, name: str, problems: list[str], what: str = "table") -> None:
        self.problems = problems
        body = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{what} does not match schema {name!r} (v{SCHEMA_VERSION}):\n{body}")


def schemas_dir() -> Path:
    env = os.environ.get("ADRAY_SCHEMAS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "schemas"


@functools.cache
def schema_doc(name: str) -> dict[str, Any]:
    """The parsed JSON schema file of ``name`` (manifest | results | run_record | artifact)."""
    if name not in SCHEMA_NAMES:
        raise ValueError(f"unknown schema {name!r}; choose from {', '.join(SCHEMA_NAMES)}")
    path = schemas_dir() / f"{name}.v{SCHEMA_VERSION}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"schema file {path} not found; run from a source checkout or set ADRAY_SCHEMAS_DIR to the "
            "folder holding schemas/*.json"
        )
    return json.loads(path.read_text())


def _entries(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc.get("columns") or doc.get("fields") or []


def arrow_type(entry: dict[str, Any]) -> pa.DataType:
    """The Arrow type of one schema entry (a column or a document field)."""
    t = entry["type"].strip()
    if t in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[t]
    m = _TIMESTAMP.match(t)
    if m:
        return pa.timestamp(m.group(1), tz=m.group(2))
    if t in ("struct", "list<struct>"):
        struct = pa.struct([_arrow_field(f) for f in entry.get("fields", [])])
        return struct if t == "struct" else pa.list_(struct)
    raise ValueError(f"schema entry {entry.get('name')!r} has an unknown type {t!r}")


def _arrow_field(entry: dict[str, Any]) -> pa.Field:
    return pa.field(
        entry["name"],
        arrow_type(entry),
        nullable=bool(entry.get("nullable", True)),
        metadata={"description": entry.get("description", "")},
    )


@functools.cache
def load_schema(name: str) -> pa.Schema:
    """The pyarrow schema of ``name`` (manifest | results | run_record | artifact), with descriptions as
    field metadata and the schema name/version as schema metadata."""
    doc = schema_doc(name)
    fields = [_arrow_field(e) for e in _entries(doc)]
    meta = {"adray.schema": name, "adray.schema_version": schema_version(name)}
    return pa.schema(fields, metadata=meta)


def schema_version(name: str) -> str:
    """``"<version>.<minor_version>"`` of schema ``name`` (``"1.2"`` for results). A minor version adds
    nullable columns only: files of an older minor version read with those columns null."""
    doc = schema_doc(name)
    return f"{doc['version']}.{doc.get('minor_version', 0)}"


def required_columns(name: str) -> list[str]:
    return [f.name for f in load_schema(name) if not f.nullable]


# --------------------------------------------------------------------------------------------- tables


def _same_type(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual.equals(expected):
        return True
    strings = (pa.string(), pa.large_string())
    return actual in strings and expected in strings


def validate_table(table: pa.Table, name: str) -> None:
    """Raise :class:`SchemaError` listing missing columns, wrong types and nulls in non-nullable columns.

    Extra columns are allowed. Use :func:`conform_table` first to cast and fill what can be fixed.
    """
    schema = load_schema(name)
    problems: list[str] = []
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        problems.append(f"missing columns: {', '.join(missing)}")
    for field in schema:
        if field.name not in table.column_names:
            continue
        col = table.column(field.name)
        if not _same_type(col.type, field.type):
            problems.append(f"column {field.name!r} has type {col.type}, expected {field.type}")
        if not field.nullable and col.null_count:
            problems.append(f"column {field.name!r} has {col.null_count} null value(s) but is not nullable")
    if problems:
        raise SchemaError(name, problems)


def conform_table(table: pa.Table, name: str, *, drop_extra: bool = False) -> pa.Table:
    """Cast and reorder ``table`` to schema ``name``; add missing nullable columns as nulls.

    Extra columns follow the schema's columns (or are dropped with ``drop_extra``). Raises
    :class:`SchemaError` for missing non-nullable columns, impossible casts and nulls where none may be.
    """
    schema = load_schema(name)
    problems: list[str] = []
    arrays: list[pa.ChunkedArray] = []
    for field in schema:
        if field.name not in table.column_names:
            if field.nullable:
                arrays.append(pa.chunked_array([pa.nulls(table.num_rows, field.type)], field.type))
            else:
                problems.append(f"missing required column {field.name!r} ({field.type})")
            continue
        col = table.column(field.name)
        if col.type.equals(field.type):
            arrays.append(col)
            continue
        try:
            arrays.append(col.cast(field.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            problems.append(f"column {field.name!r} of type {col.type} cannot be cast to {field.type}: {e}")
    if problems:
        problems.append(f"required columns: {', '.join(required_columns(name))}")
        raise SchemaError(name, problems)
    fields = list(schema)
    if not drop_extra:
        for extra in table.column_names:
            if extra not in schema.names:
                arrays.append(table.column(extra))
                fields.append(table.schema.field(extra))
    out = pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema.metadata))
    validate_table(out, name)
    return out


def empty_table(name: str) -> pa.Table:
    return load_schema(name).empty_table()


# ------------------------------------------------------------------------------------------ documents


def validate_record(doc: dict[str, Any], name: str) -> None:
    """Check a JSON document (a run record, an artifact ``config.json``) against schema ``name``.

    Unknown keys are allowed (forward compatibility); missing non-nullable fields, nulls where none may be,
    wrong JSON types, values outside an ``enum`` and unparseable timestamps are reported together.
    """
    if not isinstance(doc, dict):
        raise SchemaError(name, [f"expected a JSON object, got {type(doc).__name__}"], what="document")
    problems: list[str] = []
    _check_fields(doc, _entries(schema_doc(name)), "", problems)
    if problems:
        raise SchemaError(name, problems, what="document")


def _check_fields(
    doc: dict[str, Any], entries: list[dict[str, Any]], prefix: str, problems: list[str]
) -> None:
    for entry in entries:
        key = f"{prefix}{entry['name']}"
        value = doc.get(entry["name"])
        if value is None:
            if not entry.get("nullable", True):
                problems.append(f"{key}: missing (required)" if entry["name"] not in doc else f"{key}: null")
            continue
        _check_value(value, entry, key, problems)


def _check_value(value: Any, entry: dict[str, Any], key: str, problems: list[str]) -> None:
    t = entry["type"].strip()
    ok = True
    if t in ("string", "large_string"):
        ok = isinstance(value, str)
    elif t == "bool":
        ok = isinstance(value, bool)
    elif t.startswith(("int", "uint")):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif t.startswith("float") or t == "double":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif t == "json":
        ok = isinstance(value, dict)
    elif t == "map<string, string>":
        ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    elif t == "list<string>":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif t in ("list<int64>", "list<float64>"):
        number = int if t == "list<int64>" else (int, float)
        ok = isinstance(value, list) and all(isinstance(v, number) and not isinstance(v, bool) for v in value)
    elif _TIMESTAMP.match(t):
        ok = isinstance(value, str) and _parse_time(value) is not None
        if not ok:
            problems.append(f"{key}: expected an ISO 8601 timestamp with time zone, got {value!r}")
            return
    elif t == "struct":
        if not isinstance(value, dict):
            ok = False
        else:
            _check_fields(value, entry.get("fields", []), f"{key}.", problems)
    elif t == "list<struct>":
        if not isinstance(value, list):
            ok = False
        else:
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    _check_fields(item, entry.get("fields", []), f"{key}[{i}].", problems)
                else:
                    problems.append(f"{key}[{i}]: expected an object, got {type(item).__name__}")
    if not ok:
        problems.append(f"{key}: expected {t}, got {type(value).__name__} {value!r:.60}")
    elif "enum" in entry and value not in entry["enum"]:
        problems.append(f"{key}: {value!r} is not one of {entry['enum']}")


def _parse_time(text: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else None
