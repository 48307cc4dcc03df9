"""BGAD's scores of cached features: :func:`cached_image_scores` is the image half of
:func:`cached_scores_and_maps`, with its keyword options, and neither depends on the batch size."""

from __future__ import annotations

import pytest
import torch

from adray.detectors.bgad import BgadConfig
from adray.detectors.bgad.fit import FeatureCache, cached_image_scores, cached_scores_and_maps, fit_normaliser
from adray.detectors.bgad.model import BgadModel


def test_cached_image_scores_are_the_scores_of_cached_scores_and_maps():
    cfg = BgadConfig(
        category="bottle", backbone="test_efficientnet", weights="random", image_size=32, n_blocks=2
    )
    model = BgadModel(cfg).eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    labels = [torch.zeros(f.shape[0], *f.shape[-2:], dtype=torch.bool) for f in feats]
    cache = FeatureCache(list(feats), labels, [f"i{k}" for k in range(5)], ["normal"] * 5)
    normaliser = fit_normaliser(model, cache, batch_size=2)
    idx = torch.arange(5)
    scores, maps = cached_scores_and_maps(model, cache, idx, normaliser, batch_size=5)
    assert scores.shape == (5,) and maps.shape == (5, 32, 32)
    torch.testing.assert_close(cached_image_scores(model, cache, idx, normaliser, batch_size=2), scores)
    torch.testing.assert_close(cached_image_scores(model, cache, idx[:0], normaliser), scores[:0])
    with pytest.raises(TypeError, match="chunk"):
        cached_image_scores(model, cache, idx, normaliser, chunk=2)
