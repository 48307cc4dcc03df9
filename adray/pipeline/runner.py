"""A scoring run end to end: manifest -> per-detector work lists -> Ray Data passes -> checks -> run record.

``score_archive`` scores every selected manifest item with every detector that applies to it;
``reinspect`` does the same on the delta (new items, changed content tokens, new detector versions).
Both are idempotent under a pinned run id: rows the run already wrote are skipped, masks overwrite, and
the run record (``runs/<run_id>.json``) is written last, only after the rows in storage have been counted
and checked (one row per applicable item and detector, no duplicates).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adray import storage
from adray.errors import UserError
from adray.pipeline.backlog import delta, read_run_rows
from adray.pipeline.cluster import (  # noqa: F401  (public here before the cluster module existed)
    EMBEDDED_RAY_SYSTEM_CONFIG,
    embedded_num_cpus,
    ensure_ray,
    start_embedded_ray,
)
from adray.pipeline.detector_set import DetectorSet
from adray.pipeline.graph import DetectorPass, build_dataset, write_results
from adray.pipeline.lease import RunLease, hold_run_lease
from adray.pipeline.results_store import ResultsStore, RunRows, build_run_record
from adray.pipeline.spec import AUTO, DetectorSpec, ScoreConfig
from adray.pipeline.summary import DetectorCounts, RunSummary

log = logging.getLogger(__name__)


class RunCheckError(UserError, RuntimeError):
    """Rows in storage do not match the items that went in; the run is left uncommitted."""


def score_archive(config: ScoreConfig) -> RunSummary:
    """Score ``config.input`` with ``config.detectors`` into ``config.output``; see the module docstring.

    Holds the run id's lease (:mod:`adray.pipeline.lease`) from before the first write until the run
    commits or fails: raises :class:`~adray.pipeline.lease.LeaseHeldError` at once when another live
    writer has the same run id, :class:`RunCheckError` when the rows do not check out.
    """
    config.validated()
    run_id = str(config.run_id)
    with hold_run_lease(config.output, run_id) as lease:
        return _score_archive(config, run_id, lease)


def _score_archive(config: ScoreConfig, run_id: str, lease: RunLease) -> RunSummary:
    started_at = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    manifest, manifest_url = load_manifest(config, run_id)
    items = select_items(manifest, config)
    auto = resolve_auto_detectors(config, manifest, items)  # --detector auto: registry lookups, here only
    if auto is not None:
        references = auto.references
    else:
        references = pick_references(config, manifest) if config.shots > 0 else {}
    ensure_ray(config.address)
    store = ResultsStore(config.output)
    run_rows = read_run_rows(config.output, run_id)  # what an earlier attempt of this run id wrote
    already = run_rows.keys()
    specs = (
        auto.specs
        if auto
        else config.detector_specs({c: tuple(u for u, _ in v) for c, v in references.items()})
    )
    planned = [_plan_pass(spec, items, config, run_id, auto, already) for spec in specs]
    passes, counts = [job for job, _ in planned], [c for _, c in planned]
    scoring_s = _run_passes(passes, config, run_id)

    _check_and_count(config.output, run_id, passes, counts, run_rows)  # reads only files written since
    summary = RunSummary(
        run_id=run_id,
        input=config.input,
        manifest=manifest_url,
        output=config.output,
        results_url=store.results_url,
        masks_url=store.masks_url,
        run_record_url=store.run_record_url(run_id),
        items=items.num_rows,
        detectors=counts,
        elapsed_s=0.0,
        scoring_s=scoring_s,
        references={c: [i for _, i in v] for c, v in references.items()},
        removed_partial_files=run_rows.removed,
    )
    summary.elapsed_s = time.perf_counter() - t0
    record = _run_record(config, summary, auto, started_at, manifest_url, store.results_url)
    previous = store.read_run_record(run_id)
    if previous is not None and previous.get("status") == "committed" and summary.total("scored_now") == 0:
        log.info(
            "run %s was already committed and nothing was left to score; its record stays as it was", run_id
        )
        return summary
    lease.check()  # a writer that stalled past its lease's expiry must not commit over the new owner
    store.write_run_record(record)
    return summary


def _plan_pass(
    spec: DetectorSpec, items: pa.Table, config: ScoreConfig, run_id: str, auto: Any, already: pa.Table
) -> tuple[DetectorPass, DetectorCounts]:
    """One detector's pass: the items it applies to (less the delta's and an earlier attempt's rows),
    each with its ``detector_version`` (and ``strategy`` under ``--detector auto``), and its counts."""
    detectors = DetectorSet(spec.replace(device="cpu"))  # the driver only asks for versions
    applies = np.array(
        [
            detectors.applies_to(c, bool(p))
            for c, p in zip(items["category"].to_pylist(), items["pc_uri"].to_pylist())
        ],
        dtype=bool,
    )
    work = items.filter(pa.array(applies))
    # --detector auto: items of categories handed to another detector are not this one's "not applicable"
    mine = np.ones(len(applies), bool)
    if spec.only_categories:
        mine = np.isin(np.asarray(items["category"].to_pylist(), object), list(spec.only_categories))
    versions = {c: detectors.version(c) for c in sorted(set(work["category"].to_pylist()))}
    work = work.append_column(
        "detector_version", pa.array([versions[c] for c in work["category"].to_pylist()], pa.string())
    )
    if auto is not None:  # the rung each row was scored on (results column ``strategy``)
        strategy = [auto.strategy[c] for c in work["category"].to_pylist()]
        work = work.append_column("strategy", pa.array(strategy, pa.string()))
    n_delta = work.num_rows
    if config.delta:
        work = delta(work, config.output, exclude_run=run_id)
    row_count = DetectorCounts(
        name=detectors.name,
        versions=sorted(set(versions.values())),
        rows_in=work.num_rows,
        not_applicable=int((mine & ~applies).sum()),
        skipped_delta=n_delta - work.num_rows,
    )
    todo = _minus(work, already)
    row_count.resumed = work.num_rows - todo.num_rows
    return DetectorPass(spec=spec, name=detectors.name, needs_xyz=detectors.needs_xyz, work=todo), row_count


def _run_passes(passes: list[DetectorPass], config: ScoreConfig, run_id: str) -> float:
    """Score and write the passes that have work, as one Ray Data graph; returns the seconds it took."""
    t_scoring = time.perf_counter()
    todo = [job for job in passes if job.work.num_rows]
    for job in todo:
        log.info("run %s: scoring %d items with %s", run_id, job.work.num_rows, job.name)
    if todo:  # one graph for all detectors: each item is read and decoded once for all that score it
        write_results(build_dataset(todo, config, run_id), config.output, run_id)
    return time.perf_counter() - t_scoring


def _run_record(
    config: ScoreConfig, summary: RunSummary, auto: Any, started_at: datetime, input_uri: str, output: str
) -> dict[str, Any]:
    """The run record (``runs/<run_id>.json``) of a checked run, finished now; ``input_uri``, ``output``:
    the manifest and results URLs as the run used them (the summary's are redacted)."""
    counts = summary.detectors
    return build_run_record(
        run_id=summary.run_id,
        started_at=started_at,
        finished_at=datetime.now(timezone.utc),
        input_uri=input_uri,
        output=output,
        detectors=[{"name": d.name, "version": v} for d in counts for v in d.versions],
        counts=summary.counts(),
        timings={
            "total_s": summary.elapsed_s,
            "scoring_s": summary.scoring_s,
            "items_per_s": summary.throughput,
        },
        config=config.to_json(),
        extra={
            "references": summary.references,
            "per_detector": [d.__dict__ for d in counts],
            "source_input": config.input,
            **({"auto": auto.to_json(), "auto_status": auto.status_lines} if auto else {}),
        },
    )


def resolve_auto_detectors(config: ScoreConfig, manifest: pa.Table, items: pa.Table) -> Any:
    """``--detector auto`` (alone) resolved per category (:func:`adray.pipeline.auto.resolve_auto`), else
    None. Raises :class:`UserError` when ``auto`` is mixed with other detectors."""
    if AUTO not in config.detectors:
        return None
    if len(config.detectors) > 1:
        raise UserError("--detector auto chooses every category's detector; give it alone")
    from adray.pipeline.auto import resolve_auto

    return resolve_auto(config, manifest, sorted(set(items["category"].to_pylist())))


def reinspect(config: ScoreConfig) -> RunSummary:
    """Score only what committed runs have not scored with the same detector version and content token."""
    return score_archive(config.replace(delta=True))


# ------------------------------------------------------------------------------------------ steps


def load_manifest(config: ScoreConfig, run_id: str) -> tuple[pa.Table, str]:
    """Read a manifest URI, or build one from a dataset prefix (saved under ``manifests/<run_id>.parquet``)."""
    from adray import catalog

    table, report = catalog.open_manifest(config.input, config.layout)
    if report is None:  # a manifest file: used as it is
        return table, config.input
    url = ResultsStore(config.output).manifest_url(run_id)
    catalog.write_manifest(table, url)
    log.info("built manifest of %d items from %s -> %s", table.num_rows, config.input, url)
    return table, url


def select_items(manifest: pa.Table, config: ScoreConfig) -> pa.Table:
    items = manifest
    if config.split != "all":
        items = items.filter(pc.equal(items["split"], config.split))
    if config.categories:
        items = items.filter(pc.is_in(items["category"], pa.array(config.categories)))
    items = items.sort_by("item_id")
    if config.limit is not None:
        items = items.slice(0, config.limit)
    return items


def pick_references(config: ScoreConfig, manifest: pa.Table) -> dict[str, list[tuple[str, str]]]:
    """K normal training items per category (seeded): ``{category: [(uri, item_id), ...]}``."""
    from adray import catalog

    source = manifest
    if config.reference:
        source = catalog.open_manifest(config.reference, config.layout)[0]
    source = catalog.readable_items(source)  # never a zero-byte, non-image or refused file as a reference
    train = source.filter(pc.equal(source["split"], "train")).sort_by("item_id")
    normal = pc.or_kleene(pc.equal(train["label"], 0), pc.equal(train["defect_type"], "good"))
    train = train.filter(pc.fill_null(normal, False))
    rng = np.random.default_rng(config.seed)
    out: dict[str, list[tuple[str, str]]] = {}
    for category in sorted(set(train["category"].to_pylist())):
        rows = train.filter(pc.equal(train["category"], category))
        take = sorted(
            rng.choice(rows.num_rows, size=min(config.shots, rows.num_rows), replace=False).tolist()
        )
        out[category] = [(rows["uri"][i].as_py(), rows["item_id"][i].as_py()) for i in take]
    return out


def _minus(work: pa.Table, done: pa.Table) -> pa.Table:
    if done.num_rows == 0 or work.num_rows == 0:
        return work
    keys = set(zip(done["item_id"].to_pylist(), done["detector_version"].to_pylist()))
    keep = [
        (i, v) not in keys for i, v in zip(work["item_id"].to_pylist(), work["detector_version"].to_pylist())
    ]
    return work.filter(pa.array(keep, pa.bool_()))


def _check_and_count(
    output: str,
    run_id: str,
    passes: list[DetectorPass],
    counts: list[DetectorCounts],
    run_rows: RunRows | None = None,
) -> None:
    """Count this run's rows in storage per detector; raise unless rows out == rows in, without duplicates.

    ``run_rows``: what the run read at its start (:func:`~adray.pipeline.backlog.read_run_rows`); only
    the files written since are read here, so a run reads each of its files once."""
    run_rows = run_rows if run_rows is not None else RunRows(ResultsStore(output), run_id)
    run_rows.refresh()
    rows = run_rows.table() if run_rows.tables else None
    problems = []
    for job, c in zip(passes, counts):
        c.scored_now = job.work.num_rows
        mine = (
            rows.filter(pc.is_in(rows["detector_version"], pa.array(c.versions, pa.string())))
            if rows
            else None
        )
        if mine is not None:
            mine = mine.filter(pc.equal(mine["detector"], c.name))
        n = 0 if mine is None else mine.num_rows
        c.rows_out = n
        if mine is not None and n:
            statuses = mine["status"].to_pylist()
            c.status_counts = {s: statuses.count(s) for s in sorted(set(statuses))}
            c.ok = c.status_counts.get("ok", 0)
            c.errors = n - c.ok
            c.anomalous = int(pc.sum(pc.fill_null(mine["is_anomalous"], False).cast(pa.int64())).as_py() or 0)
            c.undecided = c.ok - c.anomalous - int(pc.sum(pc.invert(mine["is_anomalous"])).as_py() or 0)
            distinct = len(set(zip(mine["item_id"].to_pylist(), mine["detector_version"].to_pylist())))
            if distinct != n:
                problems.append(f"{c.name}: {n - distinct} duplicate rows")
        if c.rows_out != c.rows_in:
            problems.append(f"{c.name}: {c.rows_in} items in but {c.rows_out} rows out")
    for c in counts:
        log.info(
            "run %s %s: in=%d out=%d ok=%d errors=%d", run_id, c.name, c.rows_in, c.rows_out, c.ok, c.errors
        )
    if problems:
        if any("duplicate" in p for p in problems):
            advice = (
                f"Repair it with `adray runs repair --output {storage.redact_url(output)} {run_id}` (keeps "
                "one row per item and detector version), then re-run with the same --run-id to commit."
            )
        else:
            advice = "Re-run with the same --run-id to resume; only the missing items are scored."
        raise RunCheckError(
            f"run {run_id} is not committed because its rows do not check out: {'; '.join(problems)}. "
            + advice
        )


def repair_run(output: str, run_id: str, *, dry_run: bool = False) -> dict[str, Any]:
    """Make run ``run_id``'s result files hold one row per (detector, item_id, detector_version).

    For a run whose files conflict (two writers of one run id before leases existed, or a lease lost by a
    stalled writer): rows are read file by file (sorted by name); of rows with the same key the first with
    status ``ok`` is kept, else the first; a file that loses rows is rewritten atomically with the rest,
    one that loses all is removed; an unreadable (cut-off) file is removed as a resume would. Holds the run
    id's lease meanwhile (raises :class:`~adray.pipeline.lease.LeaseHeldError` while a writer is active).
    The run is not committed here: re-running it with the same run id scores what is missing and commits.

    Returns ``{"files", "rows", "duplicates_dropped", "rewritten", "removed"}`` (URLs); with
    ``dry_run`` nothing is changed and the counts say what would be.
    """
    import pyarrow.parquet as pq

    store = ResultsStore(output)
    with hold_run_lease(output, run_id):
        found = sorted(store.result_files(run_id), key=lambda f: f.url)
        files, detectors = [f.url for f in found], {f.url: f.detector for f in found}
        tables: dict[str, pa.Table] = {}
        removed: list[str] = []
        for url in files:
            try:
                tables[url] = store.read_result_file(url)
            except Exception as e:  # cut off mid-write: never part of a committed run
                log.warning("run %s: removing unreadable result file %s: %s", run_id, url, e)
                removed.append(url)
        kept = _rows_to_keep(tables, detectors)
        keep_rows: dict[str, list[int]] = {url: [] for url in tables}
        for url, i, _ in kept.values():
            keep_rows[url].append(i)
        rewritten = []
        rows = sum(t.num_rows for t in tables.values())
        for url, t in tables.items():
            mine = sorted(keep_rows[url])
            if len(mine) == t.num_rows:
                continue
            if not mine:
                removed.append(url)
                continue
            rewritten.append(url)
            if not dry_run:
                with storage.open_atomic(url) as f:
                    pq.write_table(t.take(pa.array(mine, pa.int64())), f)
        if not dry_run:
            for url in removed:
                storage.remove(url)
    report = {
        "files": len(files),
        "rows": rows,
        "duplicates_dropped": rows - len(kept),
        "rewritten": rewritten,
        "removed": removed,
    }
    log.info("run %s repair%s: %s", run_id, " (dry run)" if dry_run else "", report)
    return report


def _rows_to_keep(
    tables: dict[str, pa.Table], detectors: dict[str, str]
) -> dict[tuple[str, str, str], tuple[str, int, bool]]:
    """Per ``(detector, item_id, detector_version)`` the row kept by :func:`repair_run`: ``(file URL, row
    index, status is ok)`` of the first row with status ``ok``, else of the first, over the files in order."""
    kept: dict[tuple[str, str, str], tuple[str, int, bool]] = {}
    for url, t in tables.items():
        detector = detectors[url]
        statuses = t["status"].to_pylist()
        for i, key in enumerate(zip(t["item_id"].to_pylist(), t["detector_version"].to_pylist())):
            ok = statuses[i] == "ok"
            prev = kept.get((detector, *key))
            if prev is None or (ok and not prev[2]):
                kept[(detector, *key)] = (url, i, ok)
    return kept
