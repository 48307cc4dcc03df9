"""The results store: the one module that knows the layout of an output root.

::

    <root>/results/detector=<name>/date=<YYYY-MM-DD>/<run_id>.<write uuid>_<task>....parquet
    <root>/masks/detector_version=<version>/<item_id>.png     (:func:`adray.io.masks.mask_key`)
    <root>/runs/<run_id>.json        the run record, written last: its presence commits the run's rows
    <root>/leases/<run_id>.json      one writer per run id (:mod:`adray.pipeline.lease`)
    <root>/manifests/<run_id>.parquet  a manifest built from a dataset prefix

Result files carry their run id before the first ``.`` of their name, so listing ``results/`` says which
run wrote what; readers keep to runs whose record says ``committed``. :class:`ResultsStore` gives the
paths, names and listings; :class:`RunRows` reads a run's own files, each file once per invocation
(the resume set at the start and the row check before the commit come from the same reads).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

from adray import __version__ as adray_version
from adray import schemas, storage
from adray.io.masks import mask_key

log = logging.getLogger(__name__)

#: Separates the run id from the rest of a result file's name.
RUN_FILE_SEPARATOR = "."
#: Hive partition columns of results/ (stored in the folder names, not in the files).
PARTITION_COLS = ("detector", "date")
#: Columns :class:`RunRows` reads: enough for the resume set and the row check.
RUN_ROW_COLUMNS = ("item_id", "detector_version", "status", "is_anomalous")


@dataclass(frozen=True)
class ResultFile:
    """One Parquet file under ``results/``: its URL, the run that wrote it, its ``detector=`` folder."""

    url: str
    run_id: str
    detector: str  # "" when the file is not under a detector=<name> folder


def parse_result_file(url: str) -> ResultFile | None:
    """The :class:`ResultFile` a URL names, or ``None`` when it is not a result file (no run id, not .parquet)."""
    name = url.rsplit("/", 1)[-1]
    if not name.endswith(".parquet") or RUN_FILE_SEPARATOR not in name[: -len(".parquet")]:
        return None
    detector = next((p.split("=", 1)[1] for p in url.split("/") if p.startswith("detector=")), "")
    return ResultFile(url=url, run_id=name.split(RUN_FILE_SEPARATOR, 1)[0], detector=detector)


def result_file_stem(run_id: str, write_uuid: str, task_index: int) -> str:
    """The name (without suffix) a write task gives its file: ``<run_id>.<write_uuid>_<task_index:06>``."""
    return f"{run_id}{RUN_FILE_SEPARATOR}{write_uuid}_{task_index:06}"


@dataclass(frozen=True)
class ResultsStore:
    """The layout of one output root (local path or ``s3://``); every URL the pipeline writes or reads
    under it comes from here."""

    root: str

    # ------------------------------------------------------------------------------------- paths

    @property
    def results_url(self) -> str:
        return storage.join_url(self.root, "results")

    @property
    def masks_url(self) -> str:
        return storage.join_url(self.root, "masks")

    @property
    def runs_url(self) -> str:
        return storage.join_url(self.root, "runs")

    def run_record_url(self, run_id: str) -> str:
        """``<root>/runs/<run_id>.json``."""
        return storage.join_url(self.root, "runs", f"{run_id}.json")

    def lease_url(self, run_id: str) -> str:
        """``<root>/leases/<run_id>.json``."""
        return storage.join_url(self.root, "leases", f"{run_id}.json")

    def manifest_url(self, run_id: str) -> str:
        """``<root>/manifests/<run_id>.parquet``: where a run saves the manifest it built from a prefix."""
        return storage.join_url(self.root, "manifests", f"{run_id}.parquet")

    def mask_url(self, detector_version: str, item_id: str) -> str:
        """The anomaly-map PNG of an item; raises ``ValueError`` for ids that would escape ``masks/``."""
        return storage.join_url(self.root, mask_key(detector_version, item_id))

    def results_filesystem(self, *, attempts: int = 1) -> tuple[Any, str]:
        """``(pyarrow filesystem, path)`` of ``results/`` for a Parquet writer (``attempts`` per request)."""
        return storage.pyarrow_filesystem(self.results_url, attempts=attempts)

    # ----------------------------------------------------------------------------------- listing

    def result_files(self, run_id: str | None = None) -> list[ResultFile]:
        """Every result file under ``results/`` (of ``run_id`` only when given), in listing order."""
        base = self.results_url
        _fresh(base)
        if not storage.exists(base):
            return []
        files = (parse_result_file(url) for url, _ in storage.walk_files(base))
        return [f for f in files if f is not None and (run_id is None or f.run_id == run_id)]

    def run_records(self) -> list[dict[str, Any]]:
        """Every readable run record under ``runs/`` (a half-written or foreign file is skipped)."""
        base = self.runs_url
        _fresh(base)
        if not storage.exists(base):
            return []
        records = []
        for url, _ in storage.walk_files(base):
            if url.endswith(".json"):
                try:
                    records.append(json.loads(storage.read_text(url)))
                except (ValueError, FileNotFoundError):
                    continue
        return records

    def committed_files(
        self, records: Iterable[dict[str, Any]] | None = None, *, exclude_run: str | None = None
    ) -> list[str]:
        """URLs of the result files of committed runs (``records``: the run records, read when ``None``),
        leaving out ``exclude_run``'s."""
        recs = self.run_records() if records is None else records
        committed = {r.get("run_id") for r in recs if r.get("status") == "committed"} - {exclude_run}
        return [f.url for f in self.result_files() if f.run_id in committed]

    # -------------------------------------------------------------------------------- run record

    def read_run_record(self, run_id: str) -> dict[str, Any] | None:
        """The run record of ``run_id``, or ``None`` when the run never committed."""
        try:
            return json.loads(storage.read_text(self.run_record_url(run_id)))
        except FileNotFoundError:
            return None

    def write_run_record(self, record: dict[str, Any]) -> str:
        """Write (commit) a record made by :func:`build_run_record`; returns its URL."""
        url = self.run_record_url(record["run_id"])
        storage.write_text(url, json.dumps(record, indent=2, sort_keys=True, default=str))
        return url

    # ---------------------------------------------------------------------------------- reading

    def read_result_file(self, url: str, columns: Iterable[str] | None = None) -> pa.Table:
        """One result file's rows (``columns`` only when given); raises what pyarrow raises for a cut-off
        file and ``FileNotFoundError`` for a missing one."""
        import pyarrow.parquet as pq

        loc = storage.resolve(url)
        with loc.fs.open(loc.path, "rb") as f:
            return pq.read_table(f, columns=list(columns) if columns is not None else None)

    def duckdb(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection that can read this root (its s3fs filesystem registered, so no
        ``httpfs`` extension download is needed)."""
        con = duckdb.connect()
        loc = storage.resolve(self.root)
        if loc.protocol != "file":
            con.register_filesystem(loc.fs)
        return con

    def add_results_view(
        self, con: duckdb.DuckDBPyConnection, files: list[str], name: str = "results"
    ) -> None:
        """Create view ``name`` over ``files`` with exactly the ``results`` schema's columns (an empty typed
        table supplies nullable columns added to the schema after older files were written)."""
        cols = ", ".join(f'"{c}"' for c in schemas.load_schema("results").names)
        con.register("_empty_results", schemas.empty_table("results"))
        if not files:
            con.execute(f"CREATE VIEW {name} AS SELECT {cols} FROM _empty_results")
            return
        file_list = "[" + ", ".join(_sql_str(f) for f in files) + "]"
        con.execute(
            f"CREATE VIEW {name} AS SELECT {cols} FROM (SELECT * FROM _empty_results UNION ALL BY NAME "
            f"SELECT * FROM read_parquet({file_list}, hive_partitioning = true, "
            "hive_types = {'detector': VARCHAR, 'date': VARCHAR}, union_by_name = true))"
        )


@dataclass
class RunRows:
    """The rows one run has in storage (:data:`RUN_ROW_COLUMNS` plus ``detector``), read file by file.

    :meth:`refresh` lists the run's files and reads only those it has not read yet, so the resume set at
    the start of a run and the row check before its commit read each file once.
    """

    store: ResultsStore
    run_id: str
    tables: dict[str, pa.Table] = field(default_factory=dict)  # url -> rows
    removed: list[str] = field(default_factory=list)

    def refresh(self, *, remove_unreadable: bool = False) -> None:
        """Read the run's files not read yet. An unreadable file (a write cut off mid-file, never
        committed) is deleted when ``remove_unreadable``; otherwise its read error is raised."""
        for f in self.store.result_files(self.run_id):
            if f.url in self.tables:
                continue
            try:
                t = self.store.read_result_file(f.url, RUN_ROW_COLUMNS)
            except Exception as e:
                if not remove_unreadable:
                    raise
                log.warning("removing unreadable result file %s of run %s: %s", f.url, self.run_id, e)
                storage.remove(f.url)
                self.removed.append(f.url)
                continue
            self.tables[f.url] = t.append_column("detector", pa.array([f.detector] * t.num_rows, pa.string()))

    def table(self) -> pa.Table:
        """All rows read so far (empty with the right columns when none)."""
        if self.tables:
            return pa.concat_tables(list(self.tables.values()))
        schema = schemas.load_schema("results")
        return pa.schema([schema.field(c) for c in (*RUN_ROW_COLUMNS, "detector")]).empty_table()

    def keys(self) -> pa.Table:
        """``(item_id, detector_version)`` of every row read so far (the resume set)."""
        schema = pa.schema([("item_id", pa.string()), ("detector_version", pa.string())])
        return self.table().select(list(schema.names)).cast(schema)


def build_run_record(
    *,
    run_id: str,
    started_at: datetime,
    finished_at: datetime,
    input_uri: str,
    output: str,
    detectors: list[dict[str, str]],
    counts: dict[str, int],
    timings: dict[str, float],
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A committed run record (``schemas/run_record``; URLs redacted); raises if it does not validate."""
    record = {
        "schema": "adray/run_record",
        "schema_version": "1",
        "run_id": run_id,
        "started_at": started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
        "status": "committed",
        "input": storage.redact_url(input_uri),
        "output": storage.redact_url(output),
        "detectors": detectors,
        "counts": {
            k: int(counts.get(k, 0)) for k in ("in", "out", "ok", "error", "anomalous", "not_applicable")
        },
        "timings": {k: float(v) for k, v in timings.items()},
        "config": config,
        "adray_version": adray_version,
    }
    record.update({k: storage.redact_url(v) for k, v in (extra or {}).items()})
    schemas.validate_record(record, "run_record")
    return record


def _fresh(url: str) -> None:
    """Drop cached listings: a long-lived process must see files written since its last look."""
    storage.resolve(url).fs.invalidate_cache()  # all of it: s3fs drops only a path and its parents


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"
