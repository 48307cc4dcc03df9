"""MVTec 3D-AD scan preprocessing as practised by BTF / M3DM (``utils/preprocessing.py``), made safe.

Steps (official parameters, in the scan's units, metres for MVTec 3D-AD):

1. RANSAC plane fit (open3d ``segment_plane``: distance 0.004, ``ransac_n`` 50, 1000 iterations) on the
   valid points of the 10-pixel border strips;
2. zero every point within 0.005 of that plane (and the same RGB / GT pixels);
3. zero-pad to a centred square whose side is the larger of H, W rounded up to a multiple of 100
   (:attr:`PreprocessResult.frame` says where the scan sits on it: maps are cut back to the scan with it);
4. DBSCAN (eps 0.006, min_points 30) on the remaining points, keeping the largest cluster.

Departures from the official script, on purpose:

- it works on a copy and never in place (the official script overwrites the dataset);
- it is idempotent: a scan whose border holds fewer than ``ransac_n`` valid points (an already
  preprocessed scan, or an empty one) skips the plane step and reports ``status="no_border_plane"``
  instead of open3d's "There must be at least 'ransac_n' points" (issues #23/#28); padding an already
  square scan and keeping the single largest cluster again change nothing;
- DBSCAN noise (label -1) is never the kept cluster; RANSAC is seeded (``seed``) for repeatable output;
- ``units="auto"`` scales the metre thresholds by 1000 when the scan looks like millimetres
  (median |z| > 10); synthetic scenes with shallow objects pass smaller thresholds explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import ConfigDict

from adray.config import Config, Real

STATUS_OK = "ok"
STATUS_NO_BORDER_PLANE = "no_border_plane"
STATUS_EMPTY = "empty"


class EmptyScanError(ValueError):
    """A scan has no valid points (all zeros / NaN), before or after preprocessing."""


class PreprocessConfig(Config):
    """Scan preprocessing (distances in metres unless ``units`` says otherwise; see the module docstring).
    A frozen pydantic :class:`~adray.config.Config`."""

    model_config = ConfigDict(frozen=True)

    enabled: bool = True
    border: int = 10
    plane_distance: Real = 0.004
    ransac_n: int = 50
    ransac_iterations: int = 1000
    removal_distance: Real = 0.005
    pad_multiple: int = 100
    dbscan_eps: Real = 0.006
    dbscan_min_points: int = 30
    units: Literal["auto", "m", "mm", "raw"] = "auto"
    seed: int = 0

    def scaled_for(self, xyz: np.ndarray) -> PreprocessConfig:
        """Distances converted to the scan's units (``raw``: use as given)."""
        units = self.units
        if units == "auto":
            valid = xyz[np.any(xyz != 0, axis=-1)]
            units = "mm" if len(valid) and float(np.median(np.abs(valid[:, 2]))) > 10.0 else "m"
        if units != "mm":
            return self
        return self.replace(
            plane_distance=self.plane_distance * 1000,
            removal_distance=self.removal_distance * 1000,
            dbscan_eps=self.dbscan_eps * 1000,
            units="raw",
        )


@dataclass
class PreprocessResult:
    xyz: np.ndarray  # float32 [S, S, 3] (or [H, W, 3] when disabled / no padding needed)
    rgb: np.ndarray | None
    mask: np.ndarray | None
    status: str
    plane: tuple[float, float, float, float] | None = None
    removed_plane_points: int = 0
    removed_outliers: int = 0
    #: ``(canvas_h, canvas_w, top, left)``: the padded canvas and the scan's offset on it, in scan pixels
    #: (``(H, W, 0, 0)`` when nothing was padded); :func:`adray.io.masks.map_to_image` takes it.
    frame: tuple[int, int, int, int] | None = None


def preprocess_scan(
    xyz: np.ndarray,
    rgb: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    config: PreprocessConfig | None = None,
) -> PreprocessResult:
    """Preprocess one organised scan (and its RGB / GT with the same pixels); inputs are not modified."""
    cfg = config or PreprocessConfig()
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"an organised scan is [H, W, 3], got {xyz.shape}")
    xyz = np.nan_to_num(np.array(xyz, dtype=np.float32, copy=True), nan=0.0, posinf=0.0, neginf=0.0)
    rgb = None if rgb is None else np.array(rgb, copy=True)
    mask = None if mask is None else np.array(mask, copy=True)
    if not np.any(xyz != 0):
        raise EmptyScanError("the scan has no valid points (every xyz is zero or NaN)")
    if not cfg.enabled:
        return PreprocessResult(xyz, rgb, mask, STATUS_OK, frame=(*xyz.shape[:2], 0, 0))
    cfg = cfg.scaled_for(xyz)
    grid = xyz.shape[:2]
    same_grid = rgb is not None and rgb.shape[:2] == grid

    plane = _fit_border_plane(xyz, cfg)
    removed = 0
    status = STATUS_NO_BORDER_PLANE if plane is None else STATUS_OK
    if plane is not None:
        a, b, c, d = plane
        dist = np.abs(xyz @ np.array([a, b, c], dtype=np.float32) + d)
        near = (dist < cfg.removal_distance) & np.any(xyz != 0, axis=-1)
        removed = int(near.sum())
        xyz[near] = 0
        if same_grid:
            rgb[near] = 0
    xyz = _pad_square(xyz, cfg.pad_multiple)
    if same_grid:
        rgb = _pad_square(rgb, cfg.pad_multiple)
    if mask is not None and mask.shape[:2] == grid:
        mask = _pad_square(mask, cfg.pad_multiple)
    outliers = _largest_cluster_outliers(xyz, cfg)
    if outliers is not None:
        xyz[outliers] = 0
        if same_grid:
            rgb[outliers] = 0
    if not np.any(xyz != 0):
        raise EmptyScanError(
            "no points are left after plane removal and outlier cleaning; are the preprocessing distances "
            f"right for this scan's units? (removal_distance={cfg.removal_distance}, dbscan_eps={cfg.dbscan_eps})"
        )
    n_out = 0 if outliers is None else int(outliers.sum())
    side, top, left = square_frame(*grid, cfg.pad_multiple)
    return PreprocessResult(xyz, rgb, mask, status, plane, removed, n_out, (side, side, top, left))


def _fit_border_plane(xyz: np.ndarray, cfg: PreprocessConfig) -> tuple[float, float, float, float] | None:
    import open3d as o3d

    b = cfg.border
    strips = [
        xyz[:b].reshape(-1, 3),
        xyz[-b:].reshape(-1, 3),
        xyz[:, :b].reshape(-1, 3),
        xyz[:, -b:].reshape(-1, 3),
    ]
    pts = np.concatenate(strips)
    pts = pts[np.any(pts != 0, axis=1)]
    if len(pts) < max(cfg.ransac_n, 3):
        return None
    o3d.utility.random.seed(cfg.seed)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts.astype(np.float64)))
    model, _ = cloud.segment_plane(
        distance_threshold=cfg.plane_distance, ransac_n=cfg.ransac_n, num_iterations=cfg.ransac_iterations
    )
    a, b_, c, d = (float(v) for v in model)
    norm = float(np.sqrt(a * a + b_ * b_ + c * c)) or 1.0
    return a / norm, b_ / norm, c / norm, d / norm


def square_frame(h: int, w: int, multiple: int) -> tuple[int, int, int]:
    """``(side, top, left)`` of the centred square an ``h x w`` scan is zero-padded to (official: the
    larger side rounded up to ``multiple``; ``multiple <= 0``: the larger side)."""
    side = max(-(-h // multiple) * multiple, -(-w // multiple) * multiple) if multiple > 0 else max(h, w)
    return side, (side - h) // 2, (side - w) // 2


def _pad_square(arr: np.ndarray, multiple: int) -> np.ndarray:
    h, w = arr.shape[:2]
    side, top, left = square_frame(h, w, multiple)
    if (h, w) == (side, side):
        return arr
    out = np.zeros((side, side, *arr.shape[2:]), dtype=arr.dtype)
    out[top : top + h, left : left + w] = arr
    return out


def _largest_cluster_outliers(xyz: np.ndarray, cfg: PreprocessConfig) -> np.ndarray | None:
    """Boolean ``[H, W]`` of valid points outside the largest DBSCAN cluster (None: nothing to remove)."""
    import open3d as o3d

    valid = np.any(xyz != 0, axis=-1)
    pts = xyz[valid]
    if len(pts) < cfg.dbscan_min_points:
        return None
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts.astype(np.float64)))
    labels = np.asarray(cloud.cluster_dbscan(eps=cfg.dbscan_eps, min_points=cfg.dbscan_min_points))
    clustered = labels[labels >= 0]
    if len(clustered) == 0:
        return None
    keep = np.bincount(clustered).argmax()
    out = np.zeros(valid.shape, dtype=bool)
    out[valid] = labels != keep
    return out if out.any() else None
