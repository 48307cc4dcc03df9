"""Greedy k-center coreset: deterministic, covers the bank better than a random subset, chunk-invariant."""

from __future__ import annotations

import numpy as np

from adray.memory.coreset import coreset_size, covering_radius, greedy_coreset_indices, project_bank


def _clustered(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 300, 30)
    centres = rng.standard_normal((30, 48)) * 10
    return np.concatenate([c + rng.standard_normal((s, 48)) for c, s in zip(centres, sizes)]).astype(
        np.float32
    )


def test_covering_radius_beats_random_subsets_of_the_same_size():
    bank = _clustered()
    idx = greedy_coreset_indices(bank, 40, projection_dim=16, seed=0)
    assert len(np.unique(idx)) == 40
    ours = covering_radius(bank, idx)
    rng = np.random.default_rng(1)
    randoms = [covering_radius(bank, rng.choice(len(bank), 40, replace=False)) for _ in range(10)]
    assert ours < min(randoms)


def test_selection_is_deterministic_and_chunking_does_not_change_it():
    bank = _clustered(1)
    a = greedy_coreset_indices(bank, 25, projection_dim=16, seed=3, chunk_rows=50)
    b = greedy_coreset_indices(bank, 25, projection_dim=16, seed=3, chunk_rows=100000)
    np.testing.assert_array_equal(a, b)
    assert a[0] == 0


def test_projection_reads_a_memmapped_bank_in_chunks(tmp_path):
    bank = _clustered(2)
    path = tmp_path / "bank.npy"
    np.save(path, bank)
    mm = np.load(path, mmap_mode="r")
    proj = project_bank(mm, projection_dim=8, seed=0, chunk_rows=64)
    assert proj.shape == (len(bank), 8)
    np.testing.assert_allclose(proj.numpy(), project_bank(bank, 8, seed=0).numpy(), rtol=1e-5, atol=1e-4)


def test_coreset_size_bounds():
    assert coreset_size(1000, 0.1) == 100
    assert coreset_size(5, 0.01) == 1
    assert coreset_size(5, 2.0) == 5
