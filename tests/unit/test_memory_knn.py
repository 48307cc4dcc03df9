"""Exact kNN: faiss and torch agree."""

from __future__ import annotations

import numpy as np
import pytest

from adray.memory.knn import KnnIndex, faiss_available


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
def test_faiss_equals_torch():
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((2000, 32)).astype(np.float32)
    queries = rng.standard_normal((300, 32)).astype(np.float32)
    d_f, i_f = KnnIndex(bank, "faiss").search(queries, 5)
    d_t, i_t = KnnIndex(bank, "torch", query_chunk=64).search(queries, 5)
    assert d_f.shape == d_t.shape == (300, 5)
    np.testing.assert_allclose(d_f, d_t, rtol=1e-4, atol=1e-4)
    assert (i_f == i_t).mean() > 0.999  # identical up to float ties
    assert np.all(np.diff(d_t, axis=1) >= 0)  # nearest first


def test_torch_backend_is_exact():
    rng = np.random.default_rng(1)
    bank = rng.standard_normal((100, 4)).astype(np.float32)
    q = rng.standard_normal((7, 4)).astype(np.float32)
    d, i = KnnIndex(bank, "torch").search(q, 1)
    brute = np.linalg.norm(q[:, None] - bank[None], axis=2)
    np.testing.assert_array_equal(i[:, 0], brute.argmin(axis=1))
    np.testing.assert_allclose(d[:, 0], brute.min(axis=1), rtol=1e-5)


def test_rejects_an_empty_bank():
    with pytest.raises(ValueError):
        KnnIndex(np.zeros((0, 3), np.float32), "torch")


@pytest.mark.cpu_paths
def test_auto_backend_is_torch_on_cpu_and_faiss_only_with_a_faiss_gpu(monkeypatch):
    from adray.memory import knn

    bank = np.random.default_rng(2).standard_normal((50, 8)).astype(np.float32)
    assert knn.choose_backend("cpu") == "torch"
    assert KnnIndex(bank, device="cpu").backend == "torch"  # faster than faiss-cpu's flat index (README)
    assert knn.choose_backend(None) == ("faiss" if knn.faiss_gpus() > 0 else "torch")
    monkeypatch.setattr(knn, "faiss_gpus", lambda: 1)
    assert (knn.choose_backend(None), knn.choose_backend("cuda:0"), knn.choose_backend("cpu")) == (
        "faiss",
        "faiss",
        "torch",
    )
    monkeypatch.setattr(knn, "faiss_gpus", lambda: 0)
    assert knn.choose_backend("cuda") == "torch"
