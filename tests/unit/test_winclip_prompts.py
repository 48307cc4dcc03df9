"""WinCLIP prompts and window geometry: counts, names, indices and harmonic aggregation."""

from __future__ import annotations

import pytest
import torch

from adray.detectors.winclip.prompts import TEMPLATES, build_prompts, clean_class_name
from adray.detectors.winclip.windows import harmonic_aggregation, window_indices


def test_prompt_counts_match_the_paper():
    normal, anomalous = build_prompts("bottle")
    assert len(TEMPLATES) == len(set(TEMPLATES)) == 22
    assert (len(normal), len(anomalous)) == (154, 88)
    assert len(set(normal)) == 154 and len(set(anomalous)) == 88
    assert all("bottle" in p for p in normal + anomalous)
    assert "a photo of a flawless bottle." in normal
    assert "a cropped photo of a damaged bottle." in anomalous


def test_class_name_is_cleaned_and_defect_states_are_optional():
    assert clean_class_name("metal_nut") == "metal nut"
    assert clean_class_name(" pipe-fryum ") == "pipe fryum"
    normal, anomalous = build_prompts("metal_nut", defect_types=["scratch", "color_change"])
    assert len(normal) == 154 and len(anomalous) == 88 + 2 * 3 * 22
    assert "a photo of the metal nut with color change defect." in anomalous
    assert not any("_" in p for p in normal + anomalous)
    with pytest.raises(ValueError, match="empty"):
        clean_class_name("__")


def test_window_indices_and_shapes():
    assert window_indices((3, 3), 2).tolist() == [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]
    assert tuple(window_indices((15, 15), 2).shape) == (196, 4)
    assert tuple(window_indices((15, 15), 3).shape) == (169, 9)
    assert tuple(window_indices((4, 4), 2, stride=2).shape) == (4, 4)
    assert tuple(window_indices((3, 5), 3).shape) == (3, 9)
    with pytest.raises(ValueError, match="does not fit"):
        window_indices((2, 4), 3)


def test_harmonic_aggregation_reference_vector():
    scores = torch.tensor([[1.0, 0.75, 0.5, 0.25]])
    out = harmonic_aggregation(scores, (3, 3), 2)
    expected = torch.tensor([[1.0, 0.857143, 0.75], [0.666667, 0.48, 0.375], [0.5, 0.333333, 0.25]])
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=0)


def _naive_harmonic(scores: torch.Tensor, grid: tuple[int, int], k: int, stride: int) -> torch.Tensor:
    idx = window_indices(grid, k, stride)
    out = torch.zeros(scores.shape[0], grid[0] * grid[1])
    for p in range(grid[0] * grid[1]):
        covering = [w for w in range(idx.shape[0]) if p in idx[w].tolist()]
        if covering:
            out[:, p] = len(covering) / (1.0 / scores[:, covering]).sum(dim=1)
    return out.reshape(-1, *grid)


@pytest.mark.parametrize(
    ("grid", "k", "stride"), [((6, 6), 2, 1), ((6, 6), 3, 1), ((5, 7), 3, 1), ((15, 15), 2, 1)]
)
def test_harmonic_aggregation_equals_per_patch_loop(grid, k, stride):
    gen = torch.Generator().manual_seed(0)
    n_windows = window_indices(grid, k, stride).shape[0]
    scores = torch.rand(3, n_windows, generator=gen) * 0.98 + 0.01
    torch.testing.assert_close(
        harmonic_aggregation(scores, grid, k, stride), _naive_harmonic(scores, grid, k, stride)
    )


def test_harmonic_aggregation_of_zero_scores_is_zero_not_nan():
    scores = torch.tensor([[0.0, 0.5, 0.5, 0.5]])
    out = harmonic_aggregation(scores, (3, 3), 2)
    assert torch.isfinite(out).all()
    assert out[0, 0, 0] < 1e-9 and out[0, 2, 2] == pytest.approx(0.5)
