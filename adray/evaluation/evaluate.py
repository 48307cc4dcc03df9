"""Evaluate committed results against ground truth: per detector and category, and the mean over categories.

Metrics (exact, :mod:`adray.metrics`): image AUROC, AUPR (average precision), F1-max on image scores; pixel
AUROC and AUPRO up to ``fpr_limit`` (MVTec AD definition, divided by the limit) on the anomaly maps.
Means are unweighted over categories, as the papers report them. Pixel metrics are computed at
``pixel_size`` x ``pixel_size`` (maps bilinear, masks nearest; BGAD evaluates at 256, M3DM at 224) or, with
``pixel_size=0``, at each ground-truth mask's own resolution (the official MVTec protocol).

Ground truth is read as :mod:`adray.evaluation.ground_truth` describes: masks binarised at half range, a
mask whose shape does not line up with its image left out of pixel metrics (named in the notes), and a
note when more than one mask file fits an image. A category whose evaluated test items are all of one
class gets no image AUROC / AUPR / F1-max (``None``, with a note) and so stays out of their means: AUPR
and F1-max of an all-anomalous set are 1 whatever the scores, which would inflate the mean.

Also produced for the report: ROC and PRO curves (thinned), score histograms of normal vs anomalous items,
thresholds at target false-positive rates with the recall and precision they give, and the worst misses:
anomalous items that most normal items outrank (false negatives) and normal items that outrank most
anomalous ones (false positives). Ranks are within a category, so they compare across categories.
For ``--detector auto`` runs, ``strategies``: each category's ladder rung, why, and the rungs compared
(:mod:`adray.evaluation.strategies`).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from adray import metrics, storage
from adray.evaluation.config import EvalConfig
from adray.evaluation.ground_truth import MaskChecks, mask_shape_problem, other_mask_files
from adray.evaluation.join import (
    EvaluationError,
    FitExclusions,
    collect_fit_exclusions,
    join_ground_truth,
    load_manifest,
    load_results,
)
from adray.evaluation.published import DATASET_NAMES, default_setting, published_for, recognise_dataset
from adray.evaluation.strategies import load_strategy_results, strategy_section
from adray.io.images import resize_mask
from adray.io.masks import decode_map_png16, read_ground_truth_mask, resize_map
from adray.labels import latest_labels

log = logging.getLogger(__name__)
IMAGE_METRICS = ("image_auroc", "aupr", "f1_max")
PIXEL_METRICS = ("pixel_auroc", "aupro")


#: ``dataset`` of :func:`evaluate` (and ``adray evaluate --dataset``): recognise it by category names
DEFAULT_DATASET = "auto"


def evaluate(
    results_root: str,
    input_uri: str,
    *,
    artifacts: list[str] | tuple[str, ...] = (),
    run_ids: list[str] | None = None,
    detectors: list[str] | None = None,
    dataset: str | None = DEFAULT_DATASET,
    config: EvalConfig | None = None,
) -> dict[str, Any]:
    """Join results with the manifest's ground truth and compute everything the report shows (JSON-ready)."""
    config = config or EvalConfig()
    results, records = load_results(results_root, run_ids=run_ids, detectors=detectors)
    if results.empty:
        raise EvaluationError(
            f"no committed results under {results_root}"
            + (f" for runs {run_ids}" if run_ids else "")
            + (f" for detectors {detectors}" if detectors else "")
            + "; score first (jobs/score.py) and check that runs/<run_id>.json exists"
        )
    manifest = load_manifest(input_uri)
    exclusions = collect_fit_exclusions(artifacts, records, registry_root=results_root)
    labels = latest_labels(results_root).to_pandas()  # ground truth for items the manifest has none for
    frame, report = join_ground_truth(results, manifest, exclusions, labels)
    if dataset == "auto":
        dataset = recognise_dataset(manifest["category"].dropna().unique())
    doc = evaluate_frame(frame, config, dataset=dataset, exclusions=exclusions)
    doc.update(
        results=results_root,
        input=input_uri,
        runs=sorted({str(r) for r in results["run_id"].unique()}),
        join=report.to_dict(),
        fit_exclusions={"n_items": len(exclusions.item_ids), "sources": exclusions.by_source},
        labels={"n_items": len(labels), "used": report.from_labels},
    )
    by_strategy = load_strategy_results(results_root, run_ids=run_ids, detectors=detectors)
    if len(by_strategy):  # --detector auto runs: each category's rung, why, and the rungs compared
        joined, _ = join_ground_truth(by_strategy, manifest, exclusions, labels)
        doc["strategies"] = strategy_section(
            by_strategy, joined, results_root, lambda rows: _evaluate_category(rows, config, {})
        )
    return doc


def evaluate_frame(
    frame: pd.DataFrame,
    config: EvalConfig,
    *,
    dataset: str | None = None,
    exclusions: FitExclusions | None = None,
) -> dict[str, Any]:
    """Metrics, curves and examples for an already joined frame (one row per evaluated item and detector)."""
    shots = (exclusions.shots if exclusions else {}) or {}
    out: dict[str, Any] = {
        "schema": "adray/evaluation",
        "schema_version": "1",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": dataset,
        "dataset_name": DATASET_NAMES.get(dataset or "", None),
        "config": config.to_dict(),
        "detectors": {},
    }
    with_masks = frame[(frame["label"] == 1) & frame["gt_mask_uri"].notna()]["gt_mask_uri"]
    candidates = other_mask_files(str(u) for u in with_masks.unique()) if len(with_masks) else {}
    for det, part in frame.groupby("detector", sort=True):
        out["detectors"][det] = _evaluate_detector(
            str(det), part, config, dataset, shots.get(str(det)), candidates
        )
    return out


def _evaluate_detector(
    det: str,
    part: pd.DataFrame,
    config: EvalConfig,
    dataset: str | None,
    shots: int | None,
    candidates: dict[str, list[str]],
) -> dict[str, Any]:
    categories: dict[str, Any] = {}
    ranked = []
    for cat, rows in part.groupby("category", sort=True):
        categories[str(cat)] = _evaluate_category(rows, config, candidates)
        ranked.append(_rank_misses(rows))
    ranked_df = pd.concat(ranked) if ranked else part.iloc[:0]
    mean: dict[str, Any] = {"n_categories": {}}
    for metric in IMAGE_METRICS + PIXEL_METRICS:
        values = [c[metric] for c in categories.values() if c.get(metric) is not None]
        mean[metric] = float(np.mean(values)) if values else None
        mean["n_categories"][metric] = len(values)
    mean["one_class_categories"] = sorted(cat for cat, c in categories.items() if c["one_class"])
    setting = default_setting(det, shots)
    return {
        "versions": sorted({str(v) for v in part["detector_version"].unique()}),
        "n_items": int(len(part)),
        "setting": setting,
        "categories": categories,
        "mean": mean,
        "worst_false_negatives": _examples(ranked_df, label=1, k=config.worst),
        "worst_false_positives": _examples(ranked_df, label=0, k=config.worst),
        "published": [
            {k: v for k, v in asdict(p).items() if k not in ("detector", "dataset")}
            for p in published_for(det, dataset, setting)
        ],
    }


def _evaluate_category(
    rows: pd.DataFrame, config: EvalConfig, candidates: dict[str, list[str]]
) -> dict[str, Any]:
    labels = rows["label"].to_numpy(dtype=np.int64)
    scores = rows["image_score"].to_numpy(dtype=np.float64)
    normal, anomalous = scores[labels == 0], scores[labels == 1]
    res: dict[str, Any] = {"n_normal": int(normal.size), "n_anomalous": int(anomalous.size), "notes": []}
    res["one_class"] = not (normal.size and anomalous.size)
    if res["one_class"]:
        res.update(dict.fromkeys(IMAGE_METRICS))
        res["notes"].append(
            f"the evaluated test items are of one class only ({normal.size} normal, {anomalous.size} "
            "anomalous): no image AUROC / AUPR / F1-max, and the category is left out of their means"
        )
    else:
        for metric in IMAGE_METRICS:
            res[metric] = _safe(getattr(metrics, metric), labels, scores, notes=res["notes"], name=metric)
    if normal.size and anomalous.size:
        fpr, tpr, _ = metrics.roc_curve_points(labels, scores)
        res["roc"] = _thin({"fpr": fpr, "tpr": tpr}, config.curve_points)
        res["f1_threshold"] = _f1_threshold(labels, scores)
    res["histogram"] = _histogram(normal, anomalous, config.hist_bins)
    res["thresholds"] = _thresholds(normal, anomalous, config.target_fprs)
    own = rows["threshold"].dropna()
    res["detector_threshold"] = None
    if len(own):
        t = float(own.median())
        res["detector_threshold"] = {"threshold": t, **_rates(normal, anomalous, t)}
    res.update(_pixel_level(rows, config, res["notes"], candidates))
    lo, hi = rows["map_min"].min(), rows["map_max"].max()
    res["map_range"] = [float(lo), float(hi)] if pd.notna(lo) and pd.notna(hi) else None
    return res


def _pixel_level(
    rows: pd.DataFrame, config: EvalConfig, notes: list[str], candidates: dict[str, list[str]]
) -> dict[str, Any]:
    out: dict[str, Any] = {"pixel_auroc": None, "aupro": None, "n_pixel_items": 0}
    usable = rows[rows["mask_uri"].notna() & ((rows["label"] == 0) | rows["gt_mask_uri"].notna())]
    if usable.empty or not (usable["label"] == 1).any():
        notes.append("pixel metrics need anomaly maps and ground-truth masks of anomalous items; none found")
        return out
    with ThreadPoolExecutor(max_workers=config.io_threads) as pool:
        loaded = list(pool.map(lambda r: _load_pair(r, config.pixel_size), usable.itertuples(index=False)))
    checks = MaskChecks()
    pairs = []
    for row, (mask, amap, problem) in zip(usable.itertuples(index=False), loaded):
        item = str(row.item_id)
        if row.label == 1 and str(row.gt_mask_uri) in candidates:
            checks.ambiguous[item] = {
                "used": str(row.gt_mask_uri).rpartition("/")[2],
                "others": candidates[str(row.gt_mask_uri)],
            }
        if problem is None:
            pairs.append((mask, amap))
        elif problem[0] == "rescaled":
            checks.rescaled[item] = problem[1]
            pairs.append((mask, amap))
        else:
            (checks.mismatched if problem[0] == "shape" else checks.unreadable)[item] = problem[1]
    out["mask_checks"] = checks.to_dict()
    notes.extend(checks.notes())
    if not any(m is not None for m, _ in pairs):
        notes.append("pixel metrics not computed: no anomalous item with a usable ground-truth mask is left")
        return out
    try:
        pm = metrics.pixel_metrics(
            [m for m, _ in pairs], [a for _, a in pairs], config.fpr_limit, keep_curve=True
        )
    except ValueError as exc:
        notes.append(f"pixel metrics not computed: {exc}")
        return out
    out.update(pixel_auroc=pm.pixel_auroc, aupro=pm.aupro, n_pixel_items=len(pairs))
    out["pro"] = _thin({"fpr": pm.pro_fpr, "pro": pm.pro}, config.curve_points)
    return out


def _load_pair(
    row: Any, pixel_size: int
) -> tuple[np.ndarray | None, np.ndarray | None, tuple[str, str] | None]:
    """``(mask, map, problem)`` on the evaluation grid; ``problem`` is ``(kind, why)`` with kind
    ``rescaled`` (kept), ``shape`` or ``unreadable`` (left out: mask and map are None). The stored map has
    its image's shape, so the mask is checked against it."""
    amap = decode_map_png16(storage.read_bytes(row.mask_uri), row.map_min, row.map_max)
    mask, problem = None, None
    if row.label == 1:
        try:
            mask = read_ground_truth_mask(storage.read_bytes(row.gt_mask_uri))
        except (ValueError, FileNotFoundError) as exc:
            return None, None, ("unreadable", f"{row.gt_mask_uri}: {exc}")
        why = mask_shape_problem(mask.shape, amap.shape)
        if why is not None:
            return None, None, ("shape", why)
        if mask.shape != amap.shape:
            (h, w), (big_h, big_w) = mask.shape, amap.shape
            problem = ("rescaled", f"mask {h}x{w} for image {big_h}x{big_w}")
    size = (pixel_size, pixel_size) if pixel_size > 0 else (mask.shape if mask is not None else amap.shape)
    if mask is not None and mask.shape != tuple(size):
        mask = resize_mask(mask, tuple(size))
    return mask, resize_map(amap, tuple(size)), problem


def _rank_misses(rows: pd.DataFrame) -> pd.DataFrame:
    """Severity of each item as a miss: share of the other class it loses to, within its category."""
    rows = rows.copy()
    normal = np.sort(rows.loc[rows["label"] == 0, "image_score"].to_numpy(np.float64))
    anomalous = np.sort(rows.loc[rows["label"] == 1, "image_score"].to_numpy(np.float64))
    s = rows["image_score"].to_numpy(np.float64)
    sev = np.zeros(len(rows))
    if normal.size and anomalous.size:
        is_anom = rows["label"].to_numpy() == 1
        # anomalous item: normals scoring at least as high; normal item: anomalous scoring at most as high
        sev[is_anom] = (normal.size - np.searchsorted(normal, s[is_anom], side="left")) / normal.size
        sev[~is_anom] = np.searchsorted(anomalous, s[~is_anom], side="right") / anomalous.size
    rows["severity"] = sev
    lo, hi = rows["map_min"].min(), rows["map_max"].max()
    rows["map_lo"], rows["map_hi"] = lo, hi
    return rows


def _examples(ranked: pd.DataFrame, *, label: int, k: int) -> list[dict[str, Any]]:
    pick = ranked[(ranked["label"] == label) & (ranked["severity"] > 0)]
    pick = pick.sort_values(["severity", "image_score"], ascending=[False, label == 1]).head(k)
    keys = ["item_id", "category", "uri", "mask_uri", "map_min", "map_max", "gt_mask_uri", "image_score"]
    out = []
    for row in pick.to_dict("records"):
        ex = {key: _plain(row.get(key)) for key in keys}
        ex["label"], ex["severity"] = label, float(row["severity"])
        ex["defect_type"] = _plain(row.get("defect_type"))
        ex["map_range"] = [_plain(row["map_lo"]), _plain(row["map_hi"])]
        out.append(ex)
    return out


def _thresholds(
    normal: np.ndarray, anomalous: np.ndarray, targets: tuple[float, ...]
) -> list[dict[str, Any]]:
    if normal.size == 0:
        return []
    out = []
    for target in targets:
        t = metrics.threshold_at_fpr(normal, target)
        out.append({"target_fpr": float(target), "threshold": float(t), **_rates(normal, anomalous, t)})
    return out


def _rates(normal: np.ndarray, anomalous: np.ndarray, t: float) -> dict[str, Any]:
    fp, tp = int((normal >= t).sum()), int((anomalous >= t).sum())
    return {
        "fpr": fp / normal.size if normal.size else None,
        "tpr": tp / anomalous.size if anomalous.size else None,
        "precision": tp / (tp + fp) if tp + fp else None,
    }


def _f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold (flag when ``score >= t``) at which F1 is largest."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order] == 1
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[last]
    f1 = 2 * tp / ((last + 1) + y.sum())
    return float(s[last][int(np.argmax(f1))])


def _histogram(normal: np.ndarray, anomalous: np.ndarray, bins: int) -> dict[str, Any]:
    both = np.concatenate([normal, anomalous])
    if both.size == 0:
        return {"edges": [], "normal": [], "anomalous": []}
    lo, hi = float(both.min()), float(both.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    return {
        "edges": edges.tolist(),
        "normal": np.histogram(normal, edges)[0].tolist(),
        "anomalous": np.histogram(anomalous, edges)[0].tolist(),
    }


def _thin(curve: dict[str, np.ndarray], n: int) -> dict[str, list[float]]:
    size = len(next(iter(curve.values())))
    pick = np.unique(np.linspace(0, size - 1, min(size, n)).round().astype(int)) if size else []
    return {k: np.asarray(v, dtype=np.float64)[pick].round(6).tolist() for k, v in curve.items()}


def _safe(fn, labels, scores, *, notes: list[str], name: str) -> float | None:
    try:
        return float(fn(labels, scores))
    except ValueError as exc:
        notes.append(f"{name}: {exc}")
        return None


def _plain(v: Any) -> Any:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v
