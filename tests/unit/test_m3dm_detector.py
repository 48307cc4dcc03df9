"""M3DM detector on in-memory synthetic scans: contract, preprocess errors, artifact round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adray.detectors.base import Detector, load_detector
from adray.detectors.m3dm import M3DMDetector, tiny_config
from adray.detectors.m3dm.build import build_detector
from adray.detectors.m3dm.features import FeatureExtractor, MissingModalityError
from adray.detectors.m3dm.fusion import FeatureFusion
from adray.synthetic import make_xyz_sample


def _batch(det: M3DMDetector, defect: str, n: int, seed: int) -> dict[str, np.ndarray]:
    rows = []
    for i in range(n):
        rgb, xyz, _ = make_xyz_sample("cookie", defect, 32, np.random.default_rng(seed + i))
        rows.append(det.preprocess({"image": rgb, "xyz": xyz}))
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


@pytest.fixture(scope="module")
def built():
    cfg = tiny_config("cookie", img_size=32)
    ext = FeatureExtractor(cfg)
    cfg = cfg.with_dims(ext.rgb_dim, ext.xyz_dim)
    det = M3DMDetector(cfg, ext)
    feats = {k: v.numpy() for k, v in ext(_batch(det, "good", 4, 0)).items()}
    held = {k: v.numpy() for k, v in ext(_batch(det, "good", 3, 50)).items()}
    torch.manual_seed(0)
    return build_detector(cfg, ext, feats, held, fusion=FeatureFusion(cfg.uff))


def test_contract_shapes_and_batch_invariance(built):
    assert isinstance(built, Detector)
    assert built.name == "m3dm" and built.modalities == ("rgb", "xyz") and built.categories == ("cookie",)
    assert built.threshold is not None and set(built.banks) == {"rgb", "xyz", "fused"}
    batch = _batch(built, "dent", 3, 100)
    assert batch["image"].shape == (3, 3, 32, 32) and batch["xyz"].shape == (3, 3, 32, 32)
    out = built.score(batch)
    assert out.image_score.shape == (3,) and out.anomaly_map.shape == (3, 32, 32)
    alone = built.score({k: v[1:2] for k, v in batch.items()})
    assert torch.allclose(alone.image_score, out.image_score[1:2], atol=1e-5)


def test_preprocess_errors_are_value_errors(built):
    rgb, xyz, _ = make_xyz_sample("cookie", "good", 32, np.random.default_rng(0))
    with pytest.raises(ValueError, match="no valid points"):
        built.preprocess({"image": rgb, "xyz": np.zeros_like(xyz)})
    with pytest.raises(MissingModalityError):
        built.preprocess({"image": rgb})


def test_artifact_round_trip_rebuilds_identical_scores(built, tmp_path):
    uri = str(tmp_path / "m3dm")
    built.save(uri)
    loaded = load_detector(uri)
    assert isinstance(loaded, M3DMDetector) and loaded.version == built.version
    batch = _batch(built, "bump_3d_only", 2, 200)
    a, b = built.score(batch), loaded.score(batch)
    assert torch.allclose(a.image_score, b.image_score, atol=1e-5)
    assert torch.allclose(a.anomaly_map, b.anomaly_map, atol=1e-5)
    assert loaded.threshold == pytest.approx(built.threshold)
