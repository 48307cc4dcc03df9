"""Metrics against scikit-learn and a slow, literal AUPRO; edge cases; memory of the pixel accumulator."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from adray.metrics import (
    PixelCurveAccumulator,
    aupr,
    aupro,
    f1_max,
    image_auroc,
    pixel_auroc,
    pixel_metrics,
    pro_curve,
    roc_curve_points,
    threshold_at_fpr,
)


def naive_aupro(masks, maps, limit):
    """The MVTec definition written out: every distinct score is a threshold, regions overlap, trapezoid."""
    regions, ok = [], []
    for mask, amap in zip(masks, maps):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [amap[labels == r] for r in range(1, n + 1)]
        ok.append(amap[~mask])
    ok = np.concatenate(ok)
    fprs, pros = [0.0], [0.0]
    for t in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        fprs.append(np.mean(ok >= t))
        pros.append(np.mean([np.mean(r >= t) for r in regions]))
    area = 0.0
    for (f0, p0), (f1, p1) in zip(zip(fprs, pros), zip(fprs[1:], pros[1:])):
        if f1 <= limit:
            area += (f1 - f0) * (p0 + p1) / 2
        else:
            p_lim = p0 + (p1 - p0) * (limit - f0) / (f1 - f0)
            area += (limit - f0) * (p0 + p_lim) / 2
            break
    return area / limit


def random_set(seed, ties=False, n=6, shape=(16, 16)):
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for i in range(n):
        h, w = shape if i % 3 else (shape[0] - 4, shape[1] + 5)  # sizes may differ between images
        noise = ndimage.gaussian_filter(rng.standard_normal((h, w)), 1.2)
        mask = noise > np.quantile(noise, 0.85) if i % 4 else np.zeros((h, w), bool)  # some normal images
        if i == 1:
            mask[0, 0] = True  # a one-pixel region
        amap = rng.standard_normal((h, w)) + 1.5 * mask
        if ties:
            amap = np.round(amap, 1)
        masks.append(mask)
        maps.append(amap.astype(np.float32))
    return masks, maps


@pytest.mark.parametrize("seed, ties", [(0, False), (1, False), (2, True), (3, True)])
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_matches_the_literal_definition(seed, ties, limit):
    masks, maps = random_set(seed, ties)
    assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(naive_aupro(masks, maps, limit), abs=1e-6)


@pytest.mark.parametrize("seed, ties", [(0, False), (5, True)])
def test_pixel_auroc_matches_sklearn(seed, ties):
    masks, maps = random_set(seed, ties)
    expected = roc_auc_score(
        np.concatenate([m.ravel() for m in masks]), np.concatenate([a.ravel() for a in maps])
    )
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-6)


def test_stacked_lists_generators_and_small_chunks_agree():
    masks, maps = random_set(7, ties=True, n=5, shape=(12, 12))
    masks = [m[:, :12] for m in masks]
    maps = [a[:, :12] for a in maps]
    masks = [np.pad(m, ((0, 12 - m.shape[0]), (0, 0))) for m in masks]
    maps = [np.pad(a, ((0, 12 - a.shape[0]), (0, 0))) for a in maps]
    reference = pixel_metrics(masks, maps)
    stacked = pixel_metrics(np.stack(masks), np.stack(maps))
    lazy = pixel_metrics((m for m in masks), (a for a in maps))
    acc = PixelCurveAccumulator(chunk=7)  # chunk edges fall inside tie groups
    for m, a in zip(masks, maps):
        acc.add(m.astype(np.uint8) * 255, a)
    chunked = acc.compute()
    for other in (stacked, lazy, chunked):
        assert other.pixel_auroc == pytest.approx(reference.pixel_auroc, abs=1e-12)
        assert other.aupro == pytest.approx(reference.aupro, abs=1e-12)
    assert reference.aupro == pytest.approx(naive_aupro(masks, maps, 0.3), abs=1e-6)


def test_regions_are_eight_connected_and_weighted_equally():
    mask = np.zeros((6, 6), bool)
    mask[1, 1] = mask[2, 2] = True  # diagonal neighbours: one region
    mask[4:6, 4:6] = True  # a second region
    amap = np.zeros((6, 6), np.float32)
    amap[1, 1] = amap[2, 2] = 1.0  # the small region is found first, the big one not at all
    result = pixel_metrics([mask], [amap], fpr_limit=0.3)
    assert result.n_regions == 2
    # PRO is 0.5 at FPR 0 (one of two equally weighted regions, though it has 2 of 6 anomalous pixels),
    # then the only other threshold jumps to (1, 1): the line from (0, 0.5) reaches 0.65 at FPR 0.3
    assert result.aupro == pytest.approx((0.5 + 0.65) / 2)
    assert result.aupro == pytest.approx(naive_aupro([mask], [amap], 0.3))
    fpr, pro = pro_curve([mask], [amap])
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.3])
    np.testing.assert_allclose(pro, [0.0, 0.5, 0.65])


def test_pro_curve_starts_at_origin_and_ends_at_the_limit():
    masks, maps = random_set(4)
    fpr, pro = pro_curve(masks, maps, fpr_limit=0.2)
    assert fpr[0] == 0 and pro[0] == 0 and fpr[-1] == pytest.approx(0.2)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)
    area = np.sum(np.diff(fpr) * (pro[1:] + pro[:-1]) / 2) / 0.2
    assert area == pytest.approx(aupro(masks, maps, 0.2), abs=1e-12)
    thin_fpr, thin_pro = pro_curve(masks, maps, fpr_limit=0.2, max_points=10)
    assert thin_fpr.size <= 10 and thin_fpr[0] == 0 and thin_fpr[-1] == fpr[-1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(200) < 0.3
    scores = rng.standard_normal(200) + labels
    if seed == 2:
        scores = np.round(scores, 1)  # ties
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert aupr(labels.astype(int), scores) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-9
    )
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = np.max(2 * precision * recall / np.maximum(precision + recall, 1e-300))
    assert f1_max(labels, scores) == pytest.approx(f1, abs=1e-9)
    fpr, tpr, thresholds = roc_curve_points(labels, scores)
    sk_fpr, sk_tpr, sk_thr = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thresholds[1:], sk_thr[1:])


def test_threshold_at_fpr_is_the_lowest_threshold_within_the_target():
    rng = np.random.default_rng(3)
    normal = np.round(rng.standard_normal(101), 1).astype(np.float32)
    distinct = np.unique(normal)
    for target in (0.0, 0.01, 0.05, 0.1, 0.33, 0.5, 1.0):
        t = threshold_at_fpr(normal, target)
        assert np.mean(normal >= np.float32(t)) <= target + 1e-12
        lower = distinct[distinct < t]
        if lower.size:  # the next lower candidate would break the target
            assert np.mean(normal >= lower[-1]) > target
    assert threshold_at_fpr(normal, 1.0) == normal.min()
    assert not (normal >= np.float32(threshold_at_fpr(normal, 0.0))).any()


def test_missing_classes_nan_and_shape_mismatch_are_clear_errors():
    with pytest.raises(ValueError, match="at least one normal"):
        image_auroc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="at least one anomalous"):
        image_auroc([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="at least one anomalous"):
        aupr([0, 0], [0.1, 0.2])
    assert aupr([1, 1], [0.1, 0.2]) == 1.0  # no normals is fine for average precision
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="0 .normal. or 1"):
        image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="differ in length"):
        image_auroc([0, 1, 1], [0.1, 0.2])
    empty = [np.zeros((4, 4), bool)]
    with pytest.raises(ValueError, match="at least one anomalous ground-truth pixel"):
        aupro(empty, [np.ones((4, 4), np.float32)])
    with pytest.raises(ValueError, match="at least one normal .OK. pixel"):
        pixel_auroc([np.ones((4, 4), bool)], [np.ones((4, 4), np.float32)])
    bad = np.ones((4, 4), np.float32)
    bad[2, 2] = np.nan
    with pytest.raises(ValueError, match="image 0: anomaly map has NaN"):
        aupro([np.eye(4, dtype=bool)], [bad])
    with pytest.raises(ValueError, match="mask shape .4, 4. differs from anomaly-map shape .4, 5."):
        aupro([np.eye(4, dtype=bool)], [np.ones((4, 5), np.float32)])
    with pytest.raises(ValueError, match="different numbers of images"):
        aupro([np.eye(4, dtype=bool)] * 2, [np.ones((4, 4), np.float32)])
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro([np.eye(4, dtype=bool)], [np.ones((4, 4), np.float32)], fpr_limit=0)


def test_none_masks_mean_normal_images_and_negative_zero_ties_with_zero():
    mask = np.eye(4, dtype=bool)
    amap = np.where(mask, 1.0, 0.0).astype(np.float32)
    negative_zero = np.full((4, 4), -0.0, np.float32)
    result = pixel_metrics([mask, None], [amap, negative_zero])
    expected = roc_auc_score(np.r_[mask.ravel(), np.zeros(16, bool)], np.r_[amap.ravel(), np.zeros(16)])
    assert result.pixel_auroc == pytest.approx(expected) and result.aupro == pytest.approx(1.0)


def test_pixel_accumulator_holds_one_packed_copy():
    rng = np.random.default_rng(0)
    maps = [rng.random((128, 128), dtype=np.float32) for _ in range(32)]
    masks = [np.zeros((128, 128), bool) for _ in range(32)]
    for m in masks[::2]:
        m[40:60, 30:70] = True
    pixels = 32 * 128 * 128
    tracemalloc.start()
    try:
        acc = PixelCurveAccumulator(expected_pixels=pixels, chunk=1 << 14)
        for m, a in zip(masks, maps):
            acc.add(m, a)
        assert acc.nbytes == 8 * pixels + 8 * acc._n_regions
        acc.compute()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 8 bytes per pixel for the keys, plus per-image and per-chunk temporaries; no copy of all maps
    assert peak < 8 * pixels + 2_000_000, peak


@pytest.mark.parametrize("chunk", [5, 1 << 18])
def test_the_pixel_accumulator_equals_sklearn_where_both_apply(chunk):
    """The one metric both compute (pixel AUROC): our sort-key accumulator, fed map by map with uint8 masks
    and chunk edges inside tie groups, gives scikit-learn's value on the concatenated float32 pixels."""
    masks, maps = random_set(11, ties=True, n=7, shape=(10, 13))
    maps = [a.astype(np.float64) + 1e-9 for a in maps]  # compared at float32 precision: the same ties
    acc = PixelCurveAccumulator(chunk=chunk)
    for m, a in zip(masks, maps):
        acc.add(m.astype(np.uint8) * 255, a)
    ours = acc.compute().pixel_auroc
    labels = np.concatenate([m.ravel() for m in masks])
    scores = np.concatenate([a.ravel() for a in maps]).astype(np.float32)
    assert ours == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert ours == pytest.approx(image_auroc(labels, scores), abs=1e-12)  # the image path is sklearn's


def test_image_metrics_refuse_what_sklearn_would_score_silently_or_cryptically():
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        aupr([0, 2, 1], [0.1, 0.2, 0.3])  # sklearn would read 2 as a third class
    with pytest.raises(ValueError, match="NaN or infinite"):
        image_auroc([0, 1, 1], [0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match="at least one normal"):
        image_auroc([1, 1], [0.1, 0.2])  # sklearn: "Only one class present"
    with pytest.raises(ValueError, match="at least one anomalous"):
        f1_max([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="differ in length"):
        f1_max([0, 1], [0.1, 0.2, 0.3])
