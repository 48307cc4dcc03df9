"""Fitting M3DM in plain torch: build a detector from extracted features (no Ray here;
:mod:`adray.train.m3dm` distributes it). ``adray.detectors.m3dm.build``, this module's former name,
forwards here.

Inputs are raw extractor grids of the bank items (normal training items) and of held-out normal items
(never in the banks): ``{"rgb": [n, Cr, h, w], "xyz": [n, Cx, S, S]}`` numpy arrays. Steps: bank rows
(fused rows through the trained UFF, in chunks) -> greedy coreset per bank -> score the held-out items
-> fit the DLF one-class SVMs (multi-bank modes; the pixel SVM on foreground pixels) -> the decision on the
held-out normals (:func:`heldout_decision`): image threshold = their largest score (or the one at
``target_fpr``), pixel threshold at ``target_pixel_fpr`` over their map pixels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from adray.detectors.m3dm.banks import build_bank
from adray.detectors.m3dm.config import M3DMConfig
from adray.detectors.m3dm.decision import fit_one_class_svm
from adray.detectors.m3dm.detector import M3DMDetector
from adray.detectors.m3dm.features import FeatureExtractor
from adray.detectors.m3dm.fusion import FeatureFusion
from adray.detectors.thresholds import (
    DEFAULT_TARGET_PIXEL_FPR,
    Decision,
    calibrate,
    pixel_threshold_at_fpr,
    source_name,
)

log = logging.getLogger(__name__)


def build_detector(
    config: M3DMConfig,
    extractor: FeatureExtractor,
    bank_features: Mapping[str, np.ndarray],
    heldout_features: Mapping[str, np.ndarray],
    fusion: FeatureFusion | None = None,
    metadata: Mapping[str, Any] | None = None,
    item_chunk: int = 16,
    device: str | None = None,
    target_fpr: float | None = None,
    target_pixel_fpr: float = DEFAULT_TARGET_PIXEL_FPR,
) -> M3DMDetector:
    """Banks, DLF and decision from extracted features (see the module docstring); ``target_fpr`` /
    ``target_pixel_fpr`` as :func:`heldout_decision`. Raises ``ValueError`` without bank or held-out items."""
    timings: dict[str, float] = {}
    det = M3DMDetector(config, extractor, fusion, device=device)
    n_items = _count(bank_features)
    if n_items == 0:
        raise ValueError("no training items to build memory banks from")
    for name in config.bank_names:
        _build_bank(det, name, bank_features, item_chunk, timings)

    t0 = time.perf_counter()
    n_held = _count(heldout_features)
    if n_held == 0:
        raise ValueError("no held-out normal items to fit decision-layer fusion and the threshold on")
    per_bank = heldout_scores(det, heldout_features, item_chunk)
    dlf_record = fit_dlf(det, per_bank, heldout_features) if len(config.bank_names) > 1 else None
    final = det.combine({n: (torch.from_numpy(s), torch.from_numpy(m)) for n, (s, m) in per_bank.items()})
    decision = heldout_decision(
        final.image_score.numpy(), final.anomaly_map.numpy(), target_fpr, target_pixel_fpr
    )
    det._threshold = decision.threshold
    timings["dlf_s"] = time.perf_counter() - t0
    det.metadata = {
        **dict(metadata or {}),
        "n_bank_items": n_items,
        "n_heldout_items": n_held,
        "bank_rows": {n: int(b.rows.shape[0]) for n, b in det.banks.items()},
        "threshold_rule": _threshold_rule(target_fpr),
        "decision": decision.to_dict(),
        "threshold_source": decision.source,
        **({"dlf": dlf_record} if dlf_record is not None else {}),
        "timings": timings,
    }
    det._version = None
    return det


def _build_bank(
    det: M3DMDetector,
    name: str,
    bank_features: Mapping[str, np.ndarray],
    item_chunk: int,
    timings: dict[str, float],
) -> None:
    """Bank ``name`` of ``det``: its patch rows, greedy coreset at the config's ratio (timed)."""
    config = det.config
    t0 = time.perf_counter()
    rows = bank_rows(det, bank_features, name, item_chunk)
    det.banks[name] = build_bank(
        name,
        rows,
        config.coreset_ratio[name],
        foreground_only=(name == "xyz"),
        seed=config.seed,
        projection_dim=config.projection_dim,
        knn_backend=config.knn_backend,
    )
    timings[f"coreset_{name}_s"] = time.perf_counter() - t0
    kept = len(det.banks[name].rows)
    log.info("bank %s: %d rows -> %d (%.1fs)", name, len(rows), kept, timings[f"coreset_{name}_s"])


def _threshold_rule(target_fpr: float | None) -> str:
    if target_fpr is None:
        return "max image score over held-out normal items"
    return f"image score at a false-positive rate of {target_fpr:g} on held-out normal items"


def heldout_decision(
    scores: np.ndarray, maps: np.ndarray, target_fpr: float | None, target_pixel_fpr: float
) -> Decision:
    """M3DM's decision from held-out normal items' image scores ``[n]`` and maps ``[n, S, S]``.

    Pixel threshold: at ``target_pixel_fpr`` over all their map pixels. Image threshold: with
    ``target_fpr=None`` their largest score (the rule M3DM artifacts always had; source
    ``heldout_normals_max``, the pixel rule in ``pixel_source``), else the score at ``target_fpr``
    (``heldout_normals_fpr_<f>``). Raises ``ValueError`` for a rate outside [0, 1] or no items.
    """
    if target_fpr is not None:
        return calibrate(
            scores,
            maps,
            method="heldout_normals",
            target_fpr=target_fpr,
            target_pixel_fpr=target_pixel_fpr,
        )
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("heldout_decision needs at least one held-out normal score")
    return Decision(
        threshold=float(scores.max()),
        pixel_threshold=pixel_threshold_at_fpr(maps, target_pixel_fpr),
        source="heldout_normals_max",
        target_pixel_fpr=float(target_pixel_fpr),
        n_calibration=int(scores.size),
        pixel_source=source_name("heldout_normals_pixel", target_pixel_fpr),
    )


def fit_dlf(
    det: M3DMDetector,
    per_bank: Mapping[str, tuple[np.ndarray, np.ndarray]],
    heldout_features: Mapping[str, np.ndarray],
) -> dict[str, Any]:
    """Fit the image and pixel one-class SVMs of ``det`` on held-out bank scores; returns what was used
    (scale quantile, pixel rows, input scales and weights) for the artifact metadata."""
    config = det.config
    names = config.bank_names
    image_rows = np.stack([per_bank[n][0] for n in names], axis=1)
    pixel_rows = np.stack([per_bank[n][1].reshape(-1) for n in names], axis=1)
    used = "all"
    if config.dlf_pixel_rows == "foreground":
        fg = foreground_pixels(heldout_features["xyz"], per_bank[names[0]][1].shape[-1]).reshape(-1)
        if fg.any():
            pixel_rows, used = pixel_rows[fg], "foreground"
        else:
            log.warning("DLF: no foreground pixel in the held-out items; the pixel SVM is fitted on all")
    q, kernel, nu = config.dlf_scale_quantile, config.dlf_kernel, config.dlf_nu
    det.image_svm, _ = fit_one_class_svm(image_rows, kernel, nu, seed=config.seed, scale_quantile=q)
    det.pixel_svm, _ = fit_one_class_svm(
        pixel_rows, kernel, nu, max_rows=config.dlf_max_pixel_rows, seed=config.seed, scale_quantile=q
    )
    record: dict[str, Any] = {"inputs": list(names), "scale_quantile": q, "pixel_rows": used}
    record["n_pixel_rows"] = int(len(pixel_rows))
    for key, svm in (("image", det.image_svm), ("pixel", det.pixel_svm)):
        record[f"{key}_scales"] = [float(v) for v in svm.scale]
        weights = svm.input_weights()
        record[f"{key}_weights"] = None if weights is None else [float(v) for v in weights]
    log.info("DLF: %s", record)
    return record


def foreground_pixels(xyz_grids: np.ndarray, size: int) -> np.ndarray:
    """bool ``[n, size, size]``: pixels whose point-feature patch of ``xyz_grids [n, C, s, s]`` is not all
    zero (a point of the preprocessed cloud fell there), nearest-upsampled to the map size."""
    grids = torch.from_numpy(np.asarray(xyz_grids))
    fg = (grids.abs().sum(dim=1, keepdim=True) > 0).float()
    return F.interpolate(fg, size=(size, size), mode="nearest")[:, 0].numpy() > 0.5


def bank_rows(
    det: M3DMDetector, features: Mapping[str, np.ndarray], name: str, item_chunk: int = 16
) -> np.ndarray:
    """All patch rows ``[n * h * w, C]`` of bank ``name``, filled chunk by chunk into one array."""
    n = _count(features)
    out: np.ndarray | None = None
    at = 0
    for start in range(0, n, item_chunk):
        raw = {k: torch.from_numpy(np.asarray(v[start : start + item_chunk])) for k, v in features.items()}
        grid = det.bank_grids(raw)[name]
        rows = grid.flatten(2).transpose(1, 2).reshape(-1, grid.shape[1]).numpy()
        if out is None:
            out = np.empty((n * rows.shape[0] // len(grid), rows.shape[1]), dtype=np.float32)
        out[at : at + len(rows)] = rows
        at += len(rows)
    assert out is not None
    return out


def heldout_scores(
    det: M3DMDetector, features: Mapping[str, np.ndarray], item_chunk: int = 16
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per bank ``(image scores [n], maps [n, S, S])`` for the held-out items."""
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n in det.config.bank_names}
    n = _count(features)
    for start in range(0, n, item_chunk):
        raw = {k: torch.from_numpy(np.asarray(v[start : start + item_chunk])) for k, v in features.items()}
        for name, pair in det.bank_scores(raw).items():
            parts[name].append(pair)
    return {
        name: (torch.cat([p[0] for p in ps]).numpy(), torch.cat([p[1] for p in ps]).numpy())
        for name, ps in parts.items()
    }


def _count(features: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(features.values()))) if features else 0
