"""DLF: the tensor one-class SVM equals sklearn's decision_function and ranks anomalies higher."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adray.detectors.m3dm.decision import OneClassSVMParams, column_scales, fit_one_class_svm


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_tensor_decision_function_equals_sklearn(kernel):
    rng = np.random.default_rng(0)
    normal = np.abs(rng.normal(1.0, 0.2, (60, 3))) * np.array([1.0, 10.0, 0.1])
    params, model = fit_one_class_svm(normal, kernel=kernel, nu=0.5)
    test = np.abs(rng.normal(1.0, 0.6, (40, 3))) * np.array([1.0, 10.0, 0.1])
    ours = params.decision_function(torch.from_numpy(test)).numpy()
    np.testing.assert_allclose(
        ours, model.decision_function(test / params.scale.numpy()), rtol=1e-6, atol=1e-8
    )
    restored = OneClassSVMParams.from_tensors("x", params.to_tensors("x"), kernel)
    np.testing.assert_allclose(restored.decision_function(torch.from_numpy(test)).numpy(), ours)


def test_anomaly_score_is_larger_for_larger_bank_scores():
    rng = np.random.default_rng(1)
    normal = np.abs(rng.normal(1.0, 0.1, (80, 2)))
    params, _ = fit_one_class_svm(normal, kernel="linear")
    scores = params.anomaly_score(torch.tensor([[1.0, 1.0], [3.0, 1.0], [1.0, 3.0]])).numpy()
    assert scores[1] > scores[0] and scores[2] > scores[0]


def test_pixel_rows_are_subsampled_deterministically():
    rows = np.abs(np.random.default_rng(2).normal(1, 0.1, (5000, 2)))
    a, _ = fit_one_class_svm(rows, max_rows=300, seed=0)
    b, _ = fit_one_class_svm(rows, max_rows=300, seed=0)
    assert torch.equal(a.support_vectors, b.support_vectors) and len(a.support_vectors) <= 300


def _zero_inflated_rows(n: int = 4000, seed: int = 3) -> np.ndarray:
    """Columns [rgb-like, xyz-like]: the xyz column is 60 % background (half exact zeros, half faiss-like
    noise ~1e-2), the rest on the same scale as the rgb column."""
    rng = np.random.default_rng(seed)
    rgb = np.abs(rng.normal(1.0, 0.2, n))
    xyz = np.abs(rng.normal(1.0, 0.2, n))
    background = rng.random(n) < 0.6
    xyz[background] = np.where(
        rng.random(background.sum()) < 0.5, 0.0, rng.uniform(0.005, 0.02, background.sum())
    )
    return np.stack([rgb, xyz], axis=1)


def test_zero_inflated_column_does_not_dominate_the_fusion():
    rows = _zero_inflated_rows()
    assert np.mean(rows[:, 1] < 0.05) > 0.55
    params, _ = fit_one_class_svm(rows, kernel="linear", max_rows=2000)
    w = params.input_weights().numpy()
    assert (w > 0).all() and 0.1 < w[1] / w[0] < 10, w  # measured 0.25
    # the former median scale (the median of the xyz column is background noise): the xyz weight is 22x
    # the rgb one (measured; scaled by the columns' spread, the xyz share of the score is 55x the rgb one)
    old, _ = fit_one_class_svm(rows, kernel="linear", max_rows=2000, scale_quantile=0.5)
    w_old = old.input_weights().numpy()
    assert w_old[1] / w_old[0] > 10, w_old
    assert (w_old * rows.std(axis=0))[1] > 30 * (w_old * rows.std(axis=0))[0]


def test_column_scales_quantile_and_guard():
    rows = np.array([[0.0, 0.0], [0.0, 2.0], [4.0, 2.0]])
    np.testing.assert_allclose(column_scales(rows, 1.0), [4.0, 2.0])
    np.testing.assert_allclose(column_scales(np.zeros((3, 2)), 0.9), [1.0, 1.0])
    with pytest.raises(ValueError):
        column_scales(rows, 0.0)


def test_rbf_has_no_input_weights():
    params, _ = fit_one_class_svm(np.abs(np.random.default_rng(4).normal(1, 0.1, (50, 2))), kernel="rbf")
    assert params.input_weights() is None
