"""M3DM DLF at build time: pixel SVM on foreground pixels, scales recorded, old artifacts keep theirs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from adray.detectors.base import load_detector
from adray.detectors.m3dm import M3DMDetector, tiny_config
from adray.detectors.m3dm.build import build_detector, foreground_pixels
from adray.detectors.m3dm.config import M3DMConfig
from adray.detectors.m3dm.features import FeatureExtractor
from adray.synthetic import make_xyz_sample


def _features(ext: FeatureExtractor, det: M3DMDetector, n: int, seed: int) -> dict[str, np.ndarray]:
    rows = []
    for i in range(n):
        rgb, xyz, _ = make_xyz_sample("cookie", "good", 32, np.random.default_rng(seed + i))
        rows.append(det.preprocess({"image": rgb, "xyz": xyz}))
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    return {k: v.numpy() for k, v in ext(batch).items()}


@pytest.fixture(scope="module")
def built():
    cfg = tiny_config("cookie", img_size=32, fusion=False)
    ext = FeatureExtractor(cfg)
    det = M3DMDetector(cfg, ext)
    feats, held = _features(ext, det, 4, 0), _features(ext, det, 3, 50)
    torch.manual_seed(0)
    return build_detector(cfg, ext, feats, held), held


def test_foreground_pixels_follow_the_point_grid():
    grids = np.zeros((2, 5, 4, 4), np.float32)
    grids[0, 1, 0, 0] = 1.0
    grids[1, :, 2:, 1] = -0.5
    fg = foreground_pixels(grids, 8)
    assert fg.shape == (2, 8, 8) and fg[0, :2, :2].all() and fg[0].sum() == 4
    assert fg[1, 4:, 2:4].all() and fg[1].sum() == 8


def test_pixel_svm_is_fitted_on_foreground_and_recorded(built):
    det, held = built
    record = det.metadata["dlf"]
    n_fg = int(foreground_pixels(held["xyz"], 32).sum())
    assert record["pixel_rows"] == "foreground" and record["n_pixel_rows"] == n_fg < 3 * 32 * 32
    assert record["scale_quantile"] == det.config.dlf_scale_quantile == 0.9
    assert record["inputs"] == ["rgb", "xyz"]
    np.testing.assert_allclose(record["pixel_scales"], det.pixel_svm.scale.numpy())
    np.testing.assert_allclose(record["image_weights"], det.image_svm.input_weights().numpy())


def test_old_artifact_loads_with_the_median_rule_recorded(built, tmp_path: Path):
    det, _ = built
    uri = tmp_path / "m3dm"
    det.save(str(uri))
    doc = json.loads((uri / "config.json").read_text())
    assert doc["config"]["m3dm"]["dlf_scale_quantile"] == 0.9
    assert doc["config"]["m3dm"]["dlf_pixel_rows"] == "foreground"
    old_doc = det.config.to_dict()
    for key in ("dlf_scale_quantile", "dlf_pixel_rows"):  # a config written before these fields existed
        del old_doc[key]
    config = M3DMConfig.from_dict(old_doc)
    assert config.dlf_scale_quantile == 0.5 and config.dlf_pixel_rows == "all"
    old = M3DMDetector(config, det.extractor, None, det.banks, det.image_svm, det.pixel_svm, det.threshold)
    old.save(str(tmp_path / "old"))
    loaded = load_detector(str(tmp_path / "old"))
    assert loaded.config.dlf_scale_quantile == 0.5 and loaded.config.dlf_pixel_rows == "all"
    assert torch.equal(loaded.pixel_svm.scale, det.pixel_svm.scale.double())  # the stored scales are used


def test_config_rejects_unknown_pixel_rows():
    with pytest.raises(ValueError, match="dlf_pixel_rows"):
        M3DMConfig(category="cookie", dlf_pixel_rows="background")
