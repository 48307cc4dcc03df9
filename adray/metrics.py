"""Anomaly-detection metrics: image AUROC / AUPR / F1-max and pixel AUROC / AUPRO, all exact.

Image level (``labels`` 0 normal / 1 anomalous, ``scores`` higher = more anomalous) is scikit-learn's,
called after one check of the inputs (:func:`_checked`):

- :func:`image_auroc` = ``sklearn.metrics.roc_auc_score`` (trapezoid over all distinct thresholds).
- :func:`aupr` = *average precision*, the step-wise sum ``sum_k (R_k - R_{k-1}) P_k`` of
  ``sklearn.metrics.average_precision_score`` (not the optimistic trapezoid under the PR curve; anomalib
  moves to the same definition in PR #3797).
- :func:`f1_max` = the largest F1 over the points of ``sklearn.metrics.precision_recall_curve``.
- :func:`threshold_at_fpr` (the operating threshold a detector stores) is ours: scikit-learn has none.

Pixel level follows the MVTec AD evaluation code (Bergmann et al., IJCV 2021, ``pro_curve_util.py``):
ground-truth regions are 8-connected components per image (``scipy.ndimage.label``, ``np.ones((3, 3))``);
all pixel scores, normal images included, are sorted descending; FPR = cumulative OK pixels / OK pixels,
PRO = cumulative ``1 / region_size`` / number of regions (every region weighs the same); the last point
per distinct score is kept; the curve from (0, 0) is integrated (trapezoid) up to ``fpr_limit`` with
linear interpolation at the limit and divided by ``fpr_limit`` (the normalisation anomalib fixed in
v2.3, issue #3718). Pixel AUROC comes from the same sort. Scores are compared at float32 precision.

Memory: :class:`PixelCurveAccumulator` packs each pixel into one uint64 sort key (the float32 score's
order-preserving bits in the high word, the pixel's global region id in the low word, 0 = OK pixel) and
sorts that single array in place. Beyond the caller's own maps it holds 8 bytes per pixel, one float64
per ground-truth region, and chunk-sized temporaries (``chunk`` pixels) while the curves are walked;
no concatenated copy of the maps, no sorted copy and no argsort permutation.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_LOW_WORD = np.uint64(0xFFFFFFFF)
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2.0 only has trapz


# ------------------------------------------------------------------------------------------ image level


def image_auroc(labels, scores) -> float:
    """Area under the ROC curve of image scores (``sklearn.metrics.roc_auc_score``).

    ``labels [N]`` 0/1 or bool, ``scores [N]`` finite. Raises ``ValueError`` without an anomalous and a
    normal item, for labels other than 0/1, non-finite scores or lengths that differ."""
    y, s = _checked(labels, scores, need_negatives=True)
    return float(roc_auc_score(y, s))


def roc_curve_points(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` at every distinct score, starting at (0, 0) with threshold +inf.

    ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``; item flagged when ``score >= threshold``.
    Raises ``ValueError`` as :func:`image_auroc`.
    """
    y, s = _checked(labels, scores, need_negatives=True)
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    thresholds[0] = np.inf  # scikit-learn < 1.3 wrote max + 1 here
    return fpr, tpr, thresholds


def aupr(labels, scores) -> float:
    """Average precision (``sklearn.metrics.average_precision_score``); needs one anomalous item.

    Raises ``ValueError`` without an anomalous item, for labels other than 0/1 or non-finite scores."""
    y, s = _checked(labels, scores, need_negatives=False)
    return float(average_precision_score(y, s))


def f1_max(labels, scores) -> float:
    """The best F1 over the points of ``sklearn.metrics.precision_recall_curve``; errors as :func:`aupr`."""
    y, s = _checked(labels, scores, need_negatives=False)
    precision, recall, _ = precision_recall_curve(y, s)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def threshold_at_fpr(normal_scores, target_fpr: float) -> float:
    """The lowest threshold whose false-positive rate on ``normal_scores`` is at most ``target_fpr``.

    Items are flagged when ``score >= threshold``. With ties, fewer normals than ``target_fpr`` allows
    may be flagged (a tie group is never split). ``target_fpr = 0`` gives the next float32 above the
    highest normal score, so no normal item is flagged even after a float32 round trip.
    """
    scores = _finite_1d(normal_scores, "normal_scores")
    if scores.size == 0:
        raise ValueError("threshold_at_fpr needs at least one normal score")
    if not 0.0 <= float(target_fpr) <= 1.0:
        raise ValueError(f"target_fpr must lie in [0, 1], got {target_fpr}")
    values, counts = np.unique(scores, return_counts=True)
    flagged = np.cumsum(counts[::-1])  # normals with score >= value, values descending
    allowed = int(np.floor(float(target_fpr) * scores.size + 1e-9))
    ok = np.flatnonzero(flagged <= allowed)
    if ok.size == 0:
        return float(np.nextafter(np.float32(values[-1]), np.float32(np.inf)))
    return float(values[::-1][ok[-1]])


def _checked(labels, scores, *, need_negatives: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(labels as bool [N], scores as float64 [N])`` once checked: the set scikit-learn would reject, or
    silently score, is a ``ValueError`` that says what is wrong."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if y.dtype != bool:
        if y.size and not np.isin(y, (0, 1)).all():
            raise ValueError(f"labels must be 0 (normal) or 1 (anomalous), got values {np.unique(y)[:5]}")
        y = y.astype(bool)
    s = _finite_1d(scores, "scores")
    if s.shape != y.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("this metric needs at least one anomalous item (label 1); the set has none")
    if need_negatives and n_pos == y.size:
        raise ValueError("AUROC needs at least one normal item (label 0) as well; the set has none")
    return y, s


def _finite_1d(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"{name} contain NaN or infinite values at positions {np.flatnonzero(bad)[:10].tolist()}"
        )
    return arr


# ------------------------------------------------------------------------------------------ pixel level


@dataclass
class PixelMetrics:
    """Pixel AUROC, AUPRO up to ``fpr_limit`` (divided by it) and the PRO curve up to the limit."""

    pixel_auroc: float
    aupro: float
    fpr_limit: float
    pro_fpr: np.ndarray
    pro: np.ndarray
    n_pixels: int
    n_regions: int


def pixel_auroc(masks, maps) -> float:
    """Pixel-level AUROC over all images (see :func:`pixel_metrics` for the accepted inputs)."""
    return pixel_metrics(masks, maps).pixel_auroc


def aupro(masks, maps, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` (MVTec AD definition)."""
    return pixel_metrics(masks, maps, fpr_limit=fpr_limit).aupro


def pro_curve(masks, maps, fpr_limit: float = 0.3, max_points: int | None = None):
    """``(fpr, pro)`` of the exact PRO curve from (0, 0) up to ``fpr_limit`` (interpolated end point).

    The exact curve has one point per distinct score below the limit; ``max_points`` thins it evenly
    (keeping both ends) for plots.
    """
    result = pixel_metrics(masks, maps, fpr_limit=fpr_limit, keep_curve=True)
    fpr, pro = result.pro_fpr, result.pro
    if max_points is not None and fpr.size > max_points:
        pick = np.unique(np.linspace(0, fpr.size - 1, max(2, max_points)).round().astype(np.int64))
        fpr, pro = fpr[pick], pro[pick]
    return fpr, pro


def pixel_metrics(masks, maps, fpr_limit: float = 0.3, keep_curve: bool = False) -> PixelMetrics:
    """Pixel AUROC and AUPRO in one sort.

    ``masks`` / ``maps``: stacked arrays ``[N, H, W]`` or ``[H, W]``, or equally long iterables of
    per-image ``[H, W]`` arrays (sizes may differ between images; a ``None`` mask means a normal image).
    Iterables are consumed one image at a time, so maps can be decoded lazily from storage.
    """
    acc = PixelCurveAccumulator(expected_pixels=_known_pixel_count(maps))
    for mask, amap in _pairs(masks, maps):
        acc.add(mask, amap)
    return acc.compute(fpr_limit=fpr_limit, keep_curve=keep_curve)


class PixelCurveAccumulator:
    """Collects (ground-truth mask, anomaly map) pairs; :meth:`compute` gives exact pixel metrics.

    Memory: 8 bytes per added pixel (packed score + region key) and one int64 per region; see the
    module docstring. With ``expected_pixels`` the key buffer is allocated once and filled in place;
    without it, per-image parts are gathered into one array at :meth:`compute`, each part released as
    soon as it is copied.
    """

    def __init__(self, expected_pixels: int | None = None, chunk: int = 1 << 18) -> None:
        self._buffer = np.empty(int(expected_pixels), np.uint64) if expected_pixels else None
        self._filled = 0
        self._parts: list[np.ndarray] = []
        self._region_sizes: list[np.ndarray] = []
        self._n_regions = 0
        self._n_images = 0
        self._chunk = int(chunk)

    @property
    def nbytes(self) -> int:
        buffer = 0 if self._buffer is None else self._buffer.nbytes
        return buffer + sum(p.nbytes for p in self._parts) + 8 * self._n_regions

    def add(self, mask, amap) -> None:
        """Add one image: ``mask`` [H, W] (nonzero = anomalous, ``None`` = all normal), ``amap`` [H, W]."""
        index = self._n_images
        amap = np.asarray(amap)
        if amap.ndim != 2:
            raise ValueError(f"image {index}: an anomaly map is [H, W], got shape {amap.shape}")
        mask = np.zeros(amap.shape, bool) if mask is None else np.asarray(mask)
        if mask.shape != amap.shape:
            raise ValueError(
                f"image {index}: mask shape {mask.shape} differs from anomaly-map shape {amap.shape}; "
                "resize the maps to ground-truth resolution first (adray.io.masks.resize_map)"
            )
        scores = amap.astype(np.float32) + np.float32(0.0)  # + 0.0 turns -0.0 into 0.0: one key per value
        if not np.isfinite(scores).all():
            raise ValueError(
                f"image {index}: anomaly map has NaN or infinite values; fix the detector output"
            )
        regions, count = ndimage.label(mask != 0, structure=_EIGHT_CONNECTED)
        if self._n_regions + count >= 2**32 - 1:
            raise ValueError("more than 2**32 - 2 ground-truth regions; split the evaluation")
        key = _sortable_bits(scores).astype(np.uint64) << np.uint64(32)
        if count:
            offset = np.where(regions > 0, regions.astype(np.uint64) + np.uint64(self._n_regions), 0)
            key |= offset.astype(np.uint64)
            self._region_sizes.append(np.bincount(regions.ravel(), minlength=count + 1)[1:])
        key = key.ravel()
        if self._buffer is not None and not self._parts and self._filled + key.size <= self._buffer.size:
            self._buffer[self._filled : self._filled + key.size] = key
            self._filled += key.size
        else:
            self._parts.append(key)
        self._n_regions += count
        self._n_images += 1

    def compute(self, fpr_limit: float = 0.3, keep_curve: bool = False) -> PixelMetrics:
        if not 0.0 < float(fpr_limit) <= 1.0:
            raise ValueError(f"fpr_limit must lie in (0, 1], got {fpr_limit}")
        keys = self._packed_keys()
        n_pos = int(sum(int(s.sum()) for s in self._region_sizes))
        n_ok = keys.size - n_pos
        if n_pos == 0:
            raise ValueError(
                "pixel AUROC / AUPRO need at least one anomalous ground-truth pixel; the masks are all empty"
            )
        if n_ok == 0:
            raise ValueError(
                "pixel AUROC / AUPRO need at least one normal (OK) pixel; every pixel is anomalous"
            )
        weights = np.r_[0.0, 1.0 / np.concatenate(self._region_sizes)]
        keys.sort()  # in place: ascending scores, walked backwards below
        walk = _CurveWalk(float(fpr_limit), keep_curve)
        fp = tp = 0
        pro_sum = 0.0
        for hi in range(keys.size, 0, -self._chunk):
            lo = max(0, hi - self._chunk)
            chunk = keys[lo:hi][::-1]
            region = (chunk & _LOW_WORD).astype(np.int64)
            ok = region == 0
            fp_cum = fp + np.cumsum(ok)
            tp_cum = tp + np.cumsum(~ok)
            pro_cum = pro_sum + np.cumsum(weights[region])
            fp, tp, pro_sum = int(fp_cum[-1]), int(tp_cum[-1]), float(pro_cum[-1])
            score = chunk >> np.uint64(32)
            last = np.empty(chunk.size, bool)
            last[:-1] = score[:-1] != score[1:]
            last[-1] = lo == 0 or (keys[lo - 1] >> np.uint64(32)) != score[-1]
            if last.any():  # a chunk inside one tie group has no curve point of its own
                walk.add(fp_cum[last] / n_ok, tp_cum[last] / n_pos, pro_cum[last] / self._n_regions)
        return PixelMetrics(
            pixel_auroc=walk.roc_area,
            aupro=walk.pro_area / float(fpr_limit),
            fpr_limit=float(fpr_limit),
            pro_fpr=np.concatenate(walk.curve_fpr),
            pro=np.concatenate(walk.curve_pro),
            n_pixels=int(keys.size),
            n_regions=self._n_regions,
        )

    def _packed_keys(self) -> np.ndarray:
        """One uint64 array of all keys; parts are released as they are copied (pages fill lazily)."""
        if self._buffer is not None:
            self._parts.insert(0, self._buffer[: self._filled])
            self._buffer = None
        total = sum(p.size for p in self._parts)
        if total == 0:
            raise ValueError("no images were added")
        if len(self._parts) == 1:
            return self._parts[0]
        keys = np.empty(total, np.uint64)
        pos = 0
        while self._parts:
            part = self._parts.pop(0)
            keys[pos : pos + part.size] = part
            pos += part.size
        self._parts = [keys]
        return keys


class _CurveWalk:
    """Integrates the ROC curve fully and the PRO curve up to the limit, chunk by chunk."""

    def __init__(self, fpr_limit: float, keep_curve: bool) -> None:
        self.limit = fpr_limit
        self.keep = keep_curve
        self.roc_area = 0.0
        self.pro_area = 0.0
        self.prev = (0.0, 0.0, 0.0)  # fpr, tpr, pro
        self.pro_done = False
        self.curve_fpr: list[np.ndarray] = [np.zeros(1)]
        self.curve_pro: list[np.ndarray] = [np.zeros(1)]

    def add(self, fpr: np.ndarray, tpr: np.ndarray, pro: np.ndarray) -> None:
        f0, t0, p0 = self.prev
        self.roc_area += float(_trapezoid(np.r_[t0, tpr], np.r_[f0, fpr]))
        if not self.pro_done:
            inside = int(np.searchsorted(fpr, self.limit, side="right"))
            fx, px = np.r_[f0, fpr[:inside]], np.r_[p0, pro[:inside]]
            self.pro_area += float(_trapezoid(px, fx))
            if self.keep:
                self.curve_fpr.append(fpr[:inside])
                self.curve_pro.append(pro[:inside])
            if inside < fpr.size:  # the curve crosses the limit between (fx[-1], px[-1]) and the next point
                f_a, p_a, f_b, p_b = fx[-1], px[-1], fpr[inside], pro[inside]
                p_lim = p_a + (p_b - p_a) * (self.limit - f_a) / (f_b - f_a)
                self.pro_area += (self.limit - f_a) * (p_a + p_lim) / 2
                if self.keep and f_a < self.limit:
                    self.curve_fpr.append(np.array([self.limit]))
                    self.curve_pro.append(np.array([p_lim]))
                self.pro_done = True
        self.prev = (float(fpr[-1]), float(tpr[-1]), float(pro[-1]))


def _sortable_bits(scores: np.ndarray) -> np.ndarray:
    """float32 -> uint32 whose unsigned order is the float order (sign bit flipped, negatives inverted)."""
    bits = scores.view(np.uint32)
    return np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))


def _pairs(masks, maps) -> Iterable[tuple[np.ndarray | None, np.ndarray]]:
    if masks is None or maps is None:
        raise ValueError("pixel metrics need ground-truth masks and anomaly maps (use None per normal image)")
    if isinstance(maps, np.ndarray) and maps.ndim == 2:
        maps, masks = maps[None], np.asarray(masks)[None]
    missing = object()
    pairs = itertools.zip_longest(masks, maps, fillvalue=missing)
    return (_same_count(mask, amap, missing) for mask, amap in pairs)


def _known_pixel_count(maps) -> int | None:
    """Total pixels of a stacked array or a list/tuple of arrays (no copies), else None."""
    if isinstance(maps, np.ndarray):
        return int(maps.size)
    if isinstance(maps, (list, tuple)) and all(hasattr(m, "shape") for m in maps):
        return int(sum(np.prod(m.shape, dtype=np.int64) for m in maps))
    return None


def _same_count(mask, amap, missing):
    if mask is missing or amap is missing:
        raise ValueError("masks and maps hold different numbers of images")
    return mask, amap
