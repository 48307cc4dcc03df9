"""Join committed results with ground truth from the manifest, leaving out what a detector was fitted on.

- Results come from :func:`adray.pipeline.query.connect` (committed runs only): the latest row per
  ``(item_id, detector)``, optionally restricted to some runs or detectors.
- Ground truth (``label``, ``defect_type``, ``gt_mask_uri``, ``split``) comes from the manifest given with
  ``--input`` (a manifest file, or a dataset prefix that is catalogued on the fly). An item the manifest
  has no label for takes the latest imported label of the results root (:mod:`adray.labels`):
  ``anomalous`` -> 1, ``normal`` -> 0, its ``mask_uri`` as pixel ground truth where the manifest has no
  mask, its ``defect_type`` (``good`` for normal). A manifest label always wins over an imported one.
- Fit exclusions: every item id under an artifact metadata key ending in ``_item_ids`` (BGAD
  ``anomaly_item_ids``, WinCLIP+ ``reference_item_ids``, M3DM ``bank_item_ids`` / ``dlf_item_ids``), from
  ``--artifact`` URIs and from the artifacts a run record names (its ``config.detectors`` URIs, or an
  ``artifact`` in a ``detectors`` entry); any ``*_item_ids`` key inside a run record; the WinCLIP+ k-shot
  ``references`` ({category: [item ids]}) of runs with ``config.shots > 0``; for ``--detector auto`` runs
  (run record ``auto``: per category its strategy, detector and why) the artifacts the categories resolved
  to, the item ids the model registry records for them (BGAD's training normals, labelled ones included),
  and the run's WinCLIP+ references; and every ``split == "train"`` item. The union is left out for every detector, so detectors are compared on the same items. An
  ``--artifact`` that cannot be read is an error (its fit items would silently count); an artifact a run
  record names is skipped with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from adray import catalog, storage
from adray.detectors.base import read_artifact_config
from adray.pipeline.query import connect
from adray.pipeline.results_store import ResultsStore

log = logging.getLogger(__name__)

RESULT_COLUMNS = (
    "run_id", "item_id", "uri", "category", "detector", "detector_version", "image_score", "threshold",
    "mask_uri", "map_min", "map_max", "status", "error", "label", "scored_at",
)  # fmt: skip
ID_KEY_SUFFIX = "_item_ids"


class EvaluationError(ValueError):
    """An evaluation that cannot run as asked (bad setting, unreadable input, nothing to evaluate)."""


@dataclass
class FitExclusions:
    """Item ids a detector saw while fitting, by where they were found."""

    item_ids: set[str] = field(default_factory=set)
    by_source: dict[str, int] = field(default_factory=dict)  # "<artifact uri>:<key>" -> count
    shots: dict[str, int] = field(default_factory=dict)  # detector -> WinCLIP+ references per category

    def add(self, source: str, ids: Iterable[str]) -> None:
        ids = {str(i) for i in ids}
        if ids:
            self.item_ids |= ids
            self.by_source[source] = self.by_source.get(source, 0) + len(ids)


@dataclass
class JoinReport:
    """What was evaluated and what was left out, per detector."""

    n_results: int = 0
    excluded_fit: dict[str, int] = field(default_factory=dict)
    excluded_train: dict[str, int] = field(default_factory=dict)
    not_in_manifest: dict[str, int] = field(default_factory=dict)
    unlabelled: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    unscored: dict[str, int] = field(default_factory=dict)
    from_labels: dict[str, int] = field(default_factory=dict)  # evaluated rows whose label was imported
    fit_sources: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def latest_rows(
    results_root: str,
    columns: Sequence[str],
    keys: Sequence[str],
    *,
    run_ids: list[str] | None = None,
    detectors: list[str] | None = None,
    where: Sequence[str] = (),
) -> pd.DataFrame:
    """``columns`` of the latest committed row (newest ``scored_at``, then ``run_id``) per ``keys`` among
    the results of ``run_ids`` and ``detectors`` (None or empty: all) that meet the SQL conditions
    ``where``."""
    conditions, params = list(where), []
    for column, values in (("run_id", run_ids), ("detector", detectors)):
        if values:
            conditions.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params += values
    sql = (
        f"SELECT {', '.join(columns)} FROM results {'WHERE ' + ' AND '.join(conditions) if conditions else ''} "
        f"QUALIFY row_number() OVER (PARTITION BY {', '.join(keys)} ORDER BY scored_at DESC, run_id DESC) = 1"
    )
    return connect(results_root).execute(sql, params).fetch_df()


def load_results(
    results_root: str, run_ids: list[str] | None = None, detectors: list[str] | None = None
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Latest committed row per ``(item_id, detector)`` and the run records those rows come from."""
    keys = ("item_id", "detector")
    df = latest_rows(results_root, RESULT_COLUMNS, keys, run_ids=run_ids, detectors=detectors)
    used = set(df["run_id"].unique()) if len(df) else set()
    records = [r for r in ResultsStore(results_root).run_records() if r.get("run_id") in used]
    return df, records


def load_manifest(input_uri: str) -> pd.DataFrame:
    """The manifest as a DataFrame: a manifest file is read, a dataset prefix is catalogued."""
    try:
        table, _ = catalog.open_manifest(input_uri)
    except pa.ArrowException as exc:  # not Parquet / CSV / JSONL after all
        raise EvaluationError(f"cannot read the manifest {input_uri}: {exc}") from exc
    cols = ["item_id", "uri", "category", "split", "label", "defect_type", "gt_mask_uri"]
    return table.select(cols).to_pandas()


def _winclip_artifact_shots(doc: Mapping[str, Any]) -> int | None:
    """The k-shot of a WinCLIP artifact's config document (its config, else its metadata, else counted
    from its reference items); None for other detectors or when it says none."""
    if doc.get("detector") != "winclip":
        return None
    meta = doc.get("metadata") or {}
    config = doc.get("config") or {}
    shots = config.get("k_shot", meta.get("k_shot"))
    if shots is None and isinstance(meta.get("reference_item_ids"), Mapping):
        shots = _shots_per_category(meta["reference_item_ids"])
    return None if shots is None else int(shots)


def _run_artifact_refs(record: Mapping[str, Any]) -> list[str]:
    """The artifact URIs a run record names: its detectors entries' artifacts, then those of its
    ``--detector`` values (names or artifact URIs) that are URIs."""
    refs: list[str] = []
    for det in record.get("detectors") or []:
        if isinstance(det, Mapping):
            refs += [det[k] for k in ("artifact", "artifact_uri") if isinstance(det.get(k), str) and det[k]]
    config = record.get("config") or {}
    refs += [r for r in config.get("detectors") or [] if isinstance(r, str) and _looks_like_uri(r)]
    return refs


def collect_fit_exclusions(
    artifact_uris: Iterable[str] = (),
    run_records: Iterable[Mapping[str, Any]] = (),
    registry_root: str | None = None,
) -> FitExclusions:
    """Item ids used to fit detectors, from artifacts and run records (see the module docstring);
    ``registry_root``: the results root whose model registry gives the item ids of the artifacts that
    ``--detector auto`` runs resolved to (training normals included)."""
    out = FitExclusions()
    auto_uris: set[str] = set()
    seen: set[str] = set()

    def from_artifact(uri: str, *, given: bool = False) -> None:
        if uri in seen:
            return
        seen.add(uri)
        try:
            doc = read_artifact_config(uri)
        except (FileNotFoundError, ValueError) as exc:
            if given:  # the items it was fitted on would silently count in the metrics
                raise EvaluationError(
                    f"cannot read --artifact {uri} to leave out the items it was fitted on: {exc}"
                ) from exc
            log.warning("cannot read artifact %s for fit exclusions: %s", uri, exc)
            return
        meta = doc.get("metadata") or {}
        _collect(out, meta, uri)
        shots = _winclip_artifact_shots(doc)
        if shots is not None:
            out.shots["winclip"] = shots

    for uri in artifact_uris:
        from_artifact(uri, given=True)
    for record in run_records:
        run = f"run {record.get('run_id')}"
        _collect(out, record, run)  # any *_item_ids key, e.g. in the detectors entries
        config = record.get("config") or {}
        refs = record.get("references")
        if isinstance(refs, Mapping) and int(config.get("shots") or 0) > 0:
            out.add(f"{run}:references", _strings(refs))  # WinCLIP+ k-shot reference items
            out.shots["winclip"] = int(config["shots"])
        for ref in _run_artifact_refs(record):
            from_artifact(ref)
        auto = record.get("auto")
        if isinstance(auto, Mapping):  # --detector auto: what each category resolved to
            if isinstance(refs, Mapping):
                out.add(f"{run}:references", _strings(refs))  # its k-shot categories' WinCLIP+ references
            for entry in auto.values():
                ref = entry.get("detector") if isinstance(entry, Mapping) else None
                if isinstance(ref, str) and _looks_like_uri(ref):
                    auto_uris.add(ref)
                    from_artifact(ref)
    if registry_root and auto_uris:
        _from_registry(out, registry_root, auto_uris)
    return out


def apply_labels(manifest: pd.DataFrame, labels: pd.DataFrame | None) -> pd.DataFrame:
    """The manifest with ground truth filled from imported labels (``schemas/labels`` rows, the latest per
    item) where its ``label`` is null; column ``gt_source`` says ``manifest``, ``labels`` or null."""
    out = manifest.copy()
    out["gt_source"] = out["label"].notna().map({True: "manifest", False: None})
    if labels is None or labels.empty:
        return out
    lab = labels.drop_duplicates("item_id", keep="first").set_index("item_id")
    fill = out["label"].isna() & out["item_id"].isin(lab.index)
    ids = out.loc[fill, "item_id"]
    value = ids.map(lab["label"].map({"normal": 0, "anomalous": 1}))
    out.loc[fill, "label"] = value.to_numpy(dtype=float)
    no_mask = fill & out["gt_mask_uri"].isna()
    out.loc[no_mask, "gt_mask_uri"] = out.loc[no_mask, "item_id"].map(lab["mask_uri"])
    defect = ids.map(lab["defect_type"]).where(lambda d: d.notna(), value.map({0: "good"}))
    out.loc[fill, "defect_type"] = defect.to_numpy(dtype=object)
    out.loc[fill, "gt_source"] = "labels"
    return out


def join_ground_truth(
    results: pd.DataFrame,
    manifest: pd.DataFrame,
    exclusions: FitExclusions,
    labels: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, JoinReport]:
    """Rows to evaluate: scored ``ok``, in the manifest, labelled (by the manifest, else by ``labels``: the
    latest imported label per item, see :func:`apply_labels`), not train, not used for fitting."""
    report = JoinReport(n_results=len(results), fit_sources=dict(exclusions.by_source))
    manifest = apply_labels(manifest, labels)
    gt = manifest.rename(columns={"uri": "manifest_uri", "label": "gt_label", "category": "gt_category"})
    df = results.merge(gt, on="item_id", how="left", indicator=True)
    df["label"] = df["gt_label"]
    df["category"] = df["gt_category"].where(df["gt_category"].notna(), df["category"])
    for det, part in df.groupby("detector"):
        report.not_in_manifest[det] = int((part["_merge"] == "left_only").sum())
        report.excluded_train[det] = int((part["split"] == "train").sum())
        report.excluded_fit[det] = int(part["item_id"].isin(exclusions.item_ids).sum())
        report.failed[det] = int((part["status"] != "ok").sum())
        report.unlabelled[det] = int(part["label"].isna().sum())
    test_items = manifest[(manifest["split"] != "train") & manifest["label"].notna()]
    test_items = test_items[~test_items["item_id"].isin(exclusions.item_ids)]
    for det, part in df.groupby("detector"):
        report.unscored[det] = int((~test_items["item_id"].isin(part["item_id"])).sum())
    keep = (
        (df["_merge"] == "both")
        & (df["split"] != "train")
        & ~df["item_id"].isin(exclusions.item_ids)
        & (df["status"] == "ok")
        & df["label"].notna()
        & df["image_score"].notna()
    )
    out = df[keep].drop(columns=["_merge", "gt_label", "gt_category", "manifest_uri"]).copy()
    out["label"] = out["label"].astype(int)
    for det, part in out.groupby("detector"):
        report.from_labels[det] = int((part["gt_source"] == "labels").sum())
    return out.reset_index(drop=True), report


# ---------------------------------------------------------------------------------------------- helpers


def _collect(out: FitExclusions, node: Any, source: str, path: str = "") -> None:
    """Add every id under a key ending in ``_item_ids`` anywhere inside ``node``."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if str(key).endswith(ID_KEY_SUFFIX):
                out.add(f"{source}:{where}", _strings(value))
            else:
                _collect(out, value, source, where)
    elif isinstance(node, list):
        for value in node:
            _collect(out, value, source, path)


def _from_registry(out: FitExclusions, root: str, uris: set[str]) -> None:
    """The item ids each registered model at one of ``uris`` was fitted on (BGAD's training normals are
    recorded there, not in its artifact)."""
    from adray.strategy.registry import list_models

    for model in list_models(root, check=False):
        if model.uri in uris or storage.redact_url(model.uri) in uris:
            out.add(f"registry {storage.redact_url(model.uri)}:item_ids", model.item_ids)


def _looks_like_uri(ref: str) -> bool:
    return "://" in ref or ref.startswith(("/", ".", "~"))


def _strings(value: Any) -> list[str]:
    """All strings in a (nested) list / dict of ids, e.g. ``{category: [ids]}`` or ``[ids]``."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple, set)):
        return [s for v in value for s in _strings(v)]
    return []


def _shots_per_category(refs: Mapping[str, Any]) -> int:
    return max((len(_strings(v)) for v in refs.values()), default=0)
