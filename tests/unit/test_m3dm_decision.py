"""DLF: the tensor one-class SVM equals sklearn's decision_function and ranks anomalies higher."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adray.detectors.m3dm.decision import OneClassSVMParams, fit_one_class_svm


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
