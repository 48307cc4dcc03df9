"""The model registry: every fitted artifact of a results root, as data.

One JSON file per registration, ``ROOT/models/registry/<category>/<detector>-<version>.json``, written
atomically (temp file + rename locally, one PUT on object stores). A registration records the category,
detector, version, artifact URI, the strategy it serves (:data:`adray.strategy.rules.STRATEGIES`), the data
it was fitted on (counts, item ids and a fingerprint of the item-id set), when, and its validation
figures. The file name is the key ``(category, detector, version)``: registering the same version again is
a no-op and returns the first registration.

Readers check each artifact (its ``config.json``, which adray writes last): ``status`` is ``ok``,
``missing`` (the artifact no longer exists) or ``unreadable`` (the check failed now: a later check may
pass). Nothing here raises for a missing artifact; a registration file that cannot be read is skipped
and logged. The API the fit and score steps build on:

- :func:`register_model` after a fit;
- :func:`list_models` (every registration, newest first, with its status);
- :func:`best_model` / :func:`pick_best` (the category's model to score with: the highest rung of the ladder, M3DM and BGAD
  above WinCLIP+, the latest registration among equals; missing artifacts never win);
- :func:`fitted_on_same_data` (skip a fit whose latest usable model saw exactly these items);
- :func:`create_views` (the DuckDB view ``models`` of ``adray query``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from adray import storage
from adray.strategy.rules import RANK, STRATEGIES

log = logging.getLogger(__name__)

REGISTRY_DIR = ("models", "registry")
FORMAT = 1
#: the strategy a detector's registration serves unless the caller says otherwise
DETECTOR_STRATEGY = {"m3dm": "multimodal", "bgad": "supervised", "winclip": "k-shot"}
STATUSES = ("ok", "missing", "unreadable", "unchecked")


@dataclass(frozen=True)
class ModelRecord:
    """One registration. ``registered_at`` is ISO 8601 UTC; ``item_ids`` sorted and unique;
    ``data_fingerprint`` is :func:`data_fingerprint` of them; ``counts`` what the fit used by role
    (``{"normal": 200, "anomalous": 10}``); ``validation`` its figures (JSON values, non-finite floats
    stored as null); ``status`` one of :data:`STATUSES`; ``registration`` the file's URL."""

    category: str
    detector: str
    version: str
    uri: str
    strategy: str
    registered_at: str
    item_ids: list[str]
    data_fingerprint: str
    counts: dict[str, int] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    status: str = "unchecked"
    registration: str = ""

    def to_doc(self) -> dict[str, Any]:
        """The stored JSON document (status and file URL are not stored: they are read-time facts)."""
        doc = {k: v for k, v in self.__dict__.items() if k not in ("status", "registration")}
        return {"format": FORMAT, **doc, "n_items": len(self.item_ids)}


def data_fingerprint(item_ids: Iterable[str]) -> str:
    """``sha256`` (hex) of the sorted, de-duplicated item ids joined by newlines: equal for the same set in
    any order. Only the set counts: a relabelled item already in it does not change the fingerprint."""
    text = "\n".join(sorted({str(i) for i in item_ids}))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def registration_url(root: str, category: str, detector: str, version: str) -> str:
    """Where the registration of ``(category, detector, version)`` lives under ``root``."""
    return storage.join_url(root, *REGISTRY_DIR, _slug(category), f"{_slug(detector)}-{_slug(version)}.json")


def register_model(
    root: str,
    *,
    category: str,
    detector: str,
    version: str,
    uri: str,
    item_ids: Iterable[str],
    counts: Mapping[str, int] | None = None,
    validation: Mapping[str, Any] | None = None,
    strategy: str | None = None,
    now: datetime | None = None,
) -> tuple[ModelRecord, bool]:
    """Register the artifact ``uri`` (detector ``detector`` at ``version``) fitted for ``category`` on
    ``item_ids``. Returns ``(record, created)``: ``created`` is False when this version was registered
    already (nothing is written; the stored record comes back).

    ``strategy`` defaults from :data:`DETECTOR_STRATEGY` (pass ``"zero-shot"`` for a WinCLIP artifact
    without references). Raises ``ValueError`` for an empty name, an unknown strategy, or validation
    figures that are not JSON values."""
    for name, value in (("category", category), ("detector", detector), ("version", version), ("uri", uri)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"register_model: {name} must be a non-empty string, got {value!r}")
    strategy = strategy or DETECTOR_STRATEGY.get(detector)
    if strategy not in STRATEGIES or strategy == "none":
        raise ValueError(
            f"register_model: say which strategy {detector!r} serves: one of {list(DETECTOR_STRATEGY.values()) + ['zero-shot']}"
        )
    url = registration_url(root, category, detector, version)
    if storage.exists(url):
        return _read_record(url), False
    ids = sorted({str(i) for i in item_ids})
    record = ModelRecord(
        category=category,
        detector=detector,
        version=version,
        uri=storage.absolute_url(uri),
        strategy=strategy,
        registered_at=(now or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat(),
        item_ids=ids,
        data_fingerprint=data_fingerprint(ids),
        counts={str(k): int(v) for k, v in (counts or {}).items()},
        validation=_json_values(dict(validation or {})),
        registration=url,
    )
    storage.write_text(url, json.dumps(record.to_doc(), indent=1, allow_nan=False) + "\n")
    return record, True


def list_models(root: str, *, category: str | None = None, check: bool = True) -> list[ModelRecord]:
    """Every registration under ``root`` (of ``category`` when given), newest first, each with its
    artifact's ``status`` (``unchecked`` when ``check`` is False). Empty when nothing is registered."""
    urls = _registration_files(root)
    with ThreadPoolExecutor(max_workers=8) as pool:
        records = [r for r in pool.map(_read_or_skip, urls) if r is not None]
        if category is not None:
            records = [r for r in records if r.category == category]
        if check:
            records = list(pool.map(lambda r: replace(r, status=artifact_status(r.uri)), records))
    return sorted(records, key=lambda r: (r.registered_at, r.registration), reverse=True)


def best_model(root: str, category: str) -> ModelRecord | None:
    """The model ``category`` should be scored with (:func:`pick_best` of its registrations); None when
    no registered artifact of it exists."""
    return pick_best(list_models(root, category=category))


def pick_best(records: Iterable[ModelRecord]) -> ModelRecord | None:
    """Among ``records`` (one category's) whose artifact exists (status ``ok``), the highest rung
    (:data:`adray.strategy.rules.RANK`: M3DM = BGAD > WinCLIP+ > WinCLIP), the latest registration among
    equals; None when none is usable."""
    usable = [r for r in records if r.status == "ok"]
    if not usable:
        return None
    return max(usable, key=lambda r: (RANK.get(r.strategy, -1), r.registered_at, r.registration))


def fitted_on_same_data(root: str, category: str, detector: str, item_ids: Iterable[str]) -> bool:
    """Whether the latest registration of ``detector`` for ``category`` whose artifact exists was fitted on
    exactly the item-id set ``item_ids`` (order and repeats do not matter). False when there is none."""
    usable = [r for r in list_models(root, category=category) if r.detector == detector and r.status == "ok"]
    return bool(usable) and usable[0].data_fingerprint == data_fingerprint(item_ids)


def artifact_status(uri: str) -> str:
    """``ok`` when the artifact's ``config.json`` exists, ``missing`` when it does not, ``unreadable``
    when the check itself failed (access refused, storage down: not the same as missing)."""
    try:
        return "ok" if storage.exists(storage.join_url(uri, "config.json")) else "missing"
    except (OSError, storage.StorageError, ValueError) as exc:
        log.warning("cannot check artifact %s: %s", storage.redact_url(uri), storage.read_failure(exc))
        return "unreadable"


def models_table(records: list[ModelRecord]) -> pa.Table:
    """The registrations as the ``models`` view's table (one row each)."""
    return pa.table(
        {
            "category": pa.array([r.category for r in records], pa.string()),
            "detector": pa.array([r.detector for r in records], pa.string()),
            "strategy": pa.array([r.strategy for r in records], pa.string()),
            "version": pa.array([r.version for r in records], pa.string()),
            "uri": pa.array([r.uri for r in records], pa.string()),
            "status": pa.array([r.status for r in records], pa.string()),
            "registered_at": pa.array(
                [_time(r.registered_at) for r in records], pa.timestamp("us", tz="UTC")
            ),
            "n_items": pa.array([len(r.item_ids) for r in records], pa.int64()),
            "data_fingerprint": pa.array([r.data_fingerprint for r in records], pa.string()),
            "counts": pa.array([json.dumps(r.counts, sort_keys=True) for r in records], pa.string()),
            "validation": pa.array([json.dumps(r.validation, sort_keys=True) for r in records], pa.string()),
            "item_ids": pa.array([r.item_ids for r in records], pa.list_(pa.string())),
            "registration": pa.array([r.registration for r in records], pa.string()),
        }
    )


def create_views(con: Any, root: str) -> None:
    """Add the DuckDB view ``models`` (every registration under ``root`` with its artifact status, newest
    first) to the connection ``con``."""
    con.register("_models", models_table(list_models(root)))
    con.execute("CREATE VIEW models AS SELECT * FROM _models")


def _registration_files(root: str) -> list[str]:
    base = storage.join_url(root, *REGISTRY_DIR)
    storage.resolve(base).fs.invalidate_cache()  # a long-lived process must see new registrations
    if not storage.exists(base):
        return []
    return sorted(u for u, _ in storage.walk_files(base, detail=False) if u.endswith(".json"))


def _read_record(url: str) -> ModelRecord:
    doc = json.loads(storage.read_text(url))
    fields = set(ModelRecord.__dataclass_fields__) - {"status", "registration"}
    return ModelRecord(**{k: doc[k] for k in fields if k in doc}, registration=url)


def _read_or_skip(url: str) -> ModelRecord | None:
    try:
        return _read_record(url)
    except (OSError, storage.StorageError, ValueError, TypeError, KeyError) as exc:
        log.warning("skipping registration %s: %s", storage.redact_url(url), storage.read_failure(exc))
        return None


def _json_values(doc: dict[str, Any]) -> dict[str, Any]:
    out = {str(k): (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in doc.items()}
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"register_model: validation figures must be JSON values: {exc}") from None
    return out


def _slug(text: str) -> str:
    """A file-name-safe form of ``text``; a changed name gets a short hash so two names never collide."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip(".") or "_"
    return safe if safe == text else f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
