"""``adray fit --detector auto``: fit what the plan calls for, category by category, and register it.

For each planned category (:mod:`adray.strategy.plan`):

- ``supervised`` → a BGAD fit (:func:`adray.train.bgad.fit_bgad`, what ``adray fit-bgad`` runs);
- ``multimodal`` → an M3DM build (:func:`adray.train.m3dm.build_m3dm`, what ``adray build-m3dm`` runs);
- ``k-shot`` / ``zero-shot`` → nothing to fit (WinCLIP+ takes its references at scoring time);
- ``none`` → nothing to fit (an empty category).

The fit reads a *fit manifest*: the category's readable manifest rows with the latest imported labels
applied (:func:`fit_table`): an item labelled ``normal`` becomes a training normal (split ``train``,
label 0), one labelled ``anomalous`` with a mask becomes a test anomaly with that mask, which is how the
existing fit code finds its anomalies. The item ids the fit could use (:func:`fit_item_ids`) are the data
the model is registered with; a category whose latest registered model of that detector was fitted on the
same ids is skipped (:func:`adray.strategy.registry.fitted_on_same_data`). Artifacts go to
``ROOT/models/<category>/<detector>-<data fingerprint[:12]>``.

One category failing is a status line and does not stop the others. Ray and the fit code are imported
only when a fit runs.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import traceback
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from adray import storage
from adray.strategy.plan import CategoryPlan, Plan
from adray.strategy.registry import (
    _slug,
    data_fingerprint,
    fitted_on_same_data,
    register_model,
)

log = logging.getLogger(__name__)

#: plan strategy -> the detector fitted for it
FITTED = {"supervised": "bgad", "multimodal": "m3dm"}
_NULLABLE = {
    "label": pa.int8(),
    "defect_type": pa.string(),
    "gt_mask_uri": pa.string(),
    "pc_uri": pa.string(),
    "skip_status": pa.string(),
}

_FIT_SQL = """
SELECT m.* REPLACE (
  CASE WHEN m.label IS NULL AND l.label = 'normal' THEN 'train' ELSE m.split END AS split,
  coalesce(m.label, CASE l.label WHEN 'normal' THEN 0 WHEN 'anomalous' THEN 1 END) AS label,
  CASE WHEN m.label IS NULL AND l.label = 'normal' THEN 'good'
       WHEN m.label IS NULL AND l.label = 'anomalous' THEN coalesce(m.defect_type, 'labelled')
       ELSE m.defect_type END AS defect_type,
  coalesce(m.gt_mask_uri, CASE WHEN l.label = 'anomalous' THEN l.mask_uri END) AS gt_mask_uri)
FROM _manifest m LEFT JOIN _labels l USING (item_id)
WHERE m.category = $category AND m.skip_status IS NULL
ORDER BY m.item_id
"""


@dataclass
class FitStatus:
    """What ``fit --detector auto`` did for one category: ``status`` is ``fitted``, ``skipped`` (same
    data as the registered model), ``no-fit`` (k-shot / zero-shot / empty) or ``failed``."""

    category: str
    strategy: str
    status: str
    detector: str = ""
    message: str = ""
    uri: str | None = None
    version: str | None = None
    validation: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        head = f"{self.category}: {self.strategy} → {self.status}"
        return f"{head} ({self.message})" if self.message else head


def fit_table(manifest: pa.Table, labels: pa.Table | None, category: str) -> pa.Table:
    """The readable rows of ``category`` in ``manifest`` with the latest labels applied (module docstring).

    ``labels``: the latest label per item (``item_id``, ``label``, ``mask_uri``) or None. The manifest's
    own label always wins over an imported one (the rule ``adray evaluate`` follows)."""
    for name, kind in _NULLABLE.items():
        if name not in manifest.column_names:
            manifest = manifest.append_column(name, pa.nulls(manifest.num_rows, kind))
    if labels is None or labels.num_rows == 0:
        labels = pa.table({k: pa.array([], pa.string()) for k in ("item_id", "label", "mask_uri")})
    labels = labels.select(["item_id", "label", "mask_uri"])
    con = duckdb.connect()
    con.register("_manifest", manifest)
    con.register("_labels", labels)
    out = con.sql(_FIT_SQL, params={"category": category}).to_arrow_table()
    return out.cast(manifest.schema)


def fit_item_ids(table: pa.Table, detector: str) -> list[str]:
    """The items of a fit table the ``detector``'s fit can use (sorted): BGAD its training normals and its
    anomalies with masks, M3DM its normal items with a point cloud."""
    rows = table.select([c for c in ("item_id", "split", "label", "gt_mask_uri", "pc_uri")]).to_pylist()
    if detector == "bgad":
        keep = [r for r in rows if (r["split"] == "train" and r["label"] in (0, None))
                or (r["label"] == 1 and r["gt_mask_uri"])]  # fmt: skip
    elif detector == "m3dm":
        keep = [r for r in rows if r["label"] in (0, None) and r["pc_uri"]
                and r["split"] in ("train", "validation", "val")]  # fmt: skip
    else:
        raise ValueError(f"no fit for detector {detector!r}")
    return sorted(r["item_id"] for r in keep)


def artifact_url(root: str, category: str, detector: str, fingerprint: str) -> str:
    """``ROOT/models/<category>/<detector>-<fingerprint[:12]>``: one folder per category, detector, data."""
    return storage.join_url(root, "models", _slug(category), f"{detector}-{fingerprint[:12]}")


def fit_plan(
    plan: Plan,
    manifest: pa.Table,
    labels: pa.Table | None,
    root: str,
    *,
    bgad_args: str = "",
    m3dm_args: str = "",
    force: bool = False,
) -> list[FitStatus]:
    """Fit and register what ``plan`` calls for (module docstring); one :class:`FitStatus` per category,
    in plan order. Never raises for one category's failure: its status is ``failed`` with the error."""
    out = []
    for cat in plan.categories:
        detector = FITTED.get(cat.strategy)
        if detector is None:
            why = "empty category" if cat.strategy == "none" else f"{cat.method} needs no fit"
            out.append(FitStatus(cat.category, cat.strategy, "no-fit", message=why))
            continue
        extra = bgad_args if detector == "bgad" else m3dm_args
        try:
            out.append(_fit_category(cat, detector, manifest, labels, root, extra, force))
        except Exception as exc:  # one category's failure is its status line, never the whole job's
            log.error("fit of %s failed:\n%s", cat.category, traceback.format_exc())
            msg = storage.redact_text(f"{type(exc).__name__}: {exc}".splitlines()[0])[:300]
            out.append(FitStatus(cat.category, cat.strategy, "failed", detector, msg))
    return out


def _fit_category(
    cat: CategoryPlan,
    detector: str,
    manifest: pa.Table,
    labels: pa.Table | None,
    root: str,
    extra: str,
    force: bool,
) -> FitStatus:
    from adray import catalog

    table = fit_table(manifest, labels, cat.category)
    ids = fit_item_ids(table, detector)
    if not force and fitted_on_same_data(root, cat.category, detector, ids):
        msg = f"the registered {detector} model was fitted on the same {len(ids)} items"
        return FitStatus(cat.category, cat.strategy, "skipped", detector, msg)
    fingerprint = data_fingerprint(ids)
    out_uri = artifact_url(root, cat.category, detector, fingerprint)
    train_uri = storage.join_url(root, "models", _slug(cat.category), f"fit-data-{fingerprint[:12]}.parquet")
    catalog.write_manifest(table, train_uri)
    n_anomalies = int(cat.inventory.get("n_anomalies_with_masks", 0))
    if detector == "bgad":
        validation, counts = _fit_bgad(cat.category, train_uri, out_uri, n_anomalies, extra)
    else:
        validation, counts = _build_m3dm(cat.category, train_uri, out_uri, extra)
    from adray.detectors.registry import read_header

    header = read_header(out_uri)
    validation = {"threshold": header.threshold, "threshold_source": header.threshold_source, **validation}
    record, _ = register_model(
        root,
        category=cat.category,
        detector=detector,
        version=header.version,
        uri=out_uri,
        item_ids=ids,
        counts=counts,
        validation=validation,
        strategy=cat.strategy,
    )
    msg = f"{detector} {record.version} on {len(ids)} items"
    return FitStatus(cat.category, cat.strategy, "fitted", detector, msg, out_uri, record.version, validation)


def _sub_args(command: str, category: str, train: str, out: str, extra: list[str]) -> argparse.Namespace:
    from adray.cli import build_parser

    parser = build_parser(f"adray fit --detector auto ({command})", command)
    return parser.parse_args(["--train", train, "--category", category, "--output", out, *extra])


def _fit_bgad(
    category: str, train: str, out: str, n_anomalies: int, extra: str
) -> tuple[dict[str, Any], dict[str, int]]:
    from adray.commands.fit_bgad import configs_from_args
    from adray.train.bgad import fit_bgad

    args = _sub_args(
        "fit-bgad", category, train, out, ["--num-anomalies", str(n_anomalies), *shlex.split(extra)]
    )
    model_cfg, train_cfg = configs_from_args(args)
    s = fit_bgad(train, out, model_cfg, train_cfg, workers=args.workers,
                 gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker)  # fmt: skip
    p = s.plan
    validation = {"loss": s.last_metrics.get("loss"), "fit_seconds": s.seconds, "run_name": s.run_name}
    counts = {"normal": int(p["n_normal"]), "calibration": int(p["n_calibration"]),
              "anomalous": len(p["anomaly_item_ids"])}  # fmt: skip
    return validation, counts


def _build_m3dm(category: str, train: str, out: str, extra: str) -> tuple[dict[str, Any], dict[str, int]]:
    from adray.commands.build_m3dm import config_from_args
    from adray.train.m3dm import build_m3dm

    args = _sub_args("build-m3dm", category, train, out, shlex.split(extra))
    s = build_m3dm(train, out, config_from_args(args), workers=args.workers, uff_workers=args.uff_workers,
                   batch_size=args.batch_size, gpus_per_worker=args.gpus_per_worker,
                   target_fpr=args.target_fpr, target_pixel_fpr=args.target_pixel_fpr)  # fmt: skip
    validation = {"mode": s.mode, "n_skipped": len(s.skipped), "fit_seconds": s.timings.get("total_s")}
    return validation, {"normal": s.n_bank_items, "heldout": s.n_heldout_items}
