"""Decisions of the fitted detectors: BGAD and M3DM place their image and pixel thresholds on held-out
normal items (``adray.detectors.thresholds``), record them in the artifact and load them back; artifacts
written before decisions load as ``legacy`` (no pixel threshold)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adray.detectors.thresholds import LEGACY, Decision

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.tiny_bgad import bottle_rows, fit_tiny_bgad, tiny_train_config  # noqa: E402


def _pixel_rate(maps: np.ndarray, pixel_threshold: float) -> float:
    return float((np.asarray(maps) >= np.float32(pixel_threshold)).mean())


@pytest.fixture(scope="module")
def bgad_fit(tmp_path_factory):
    from adray.detectors.bgad.data import plan_fit

    rows = bottle_rows(str(tmp_path_factory.mktemp("bgad-data")), n_train=12)
    options = dict(num_anomalies=0, calibration_fraction=0.25, target_fpr=0.34, target_pixel_fpr=0.05)
    torch.manual_seed(0)
    det = fit_tiny_bgad(rows, **options)
    return det, plan_fit(rows, "bottle", tiny_train_config(**options)).calibration


def test_bgad_thresholds_hold_their_rates_on_the_heldout_normals(bgad_fit):
    from adray import storage
    from adray.io.images import decode_image

    det, calibration = bgad_fit
    d = det.decision
    assert d.source == "heldout_normals_fpr_0.34" == det.threshold_source
    assert len(calibration) == 3
    assert (d.target_fpr, d.target_pixel_fpr, d.n_calibration) == (0.34, 0.05, 3)
    assert d.threshold == det.threshold and d.pixel_threshold == det.pixel_threshold is not None
    prepared = [det.preprocess({"image": decode_image(storage.read_bytes(r["uri"]))}) for r in calibration]
    out = det.score({"image": np.stack([p["image"] for p in prepared])})
    scores, maps = out.image_score.numpy(), out.anomaly_map.numpy()
    # 3 held-out normals at a rate of 0.34: exactly one at or above the image threshold
    assert int((scores >= np.float32(d.threshold)).sum()) == 1
    assert abs(_pixel_rate(maps, d.pixel_threshold) - 0.05) < 0.01
    assert det.metadata["threshold_source"] == d.source


def test_bgad_decision_survives_save_and_load(bgad_fit, tmp_path):
    from adray.detectors import registry

    det, _ = bgad_fit
    det.save(str(tmp_path / "bgad"))
    loaded = registry.load_detector(str(tmp_path / "bgad"), device="cpu")
    assert loaded.decision == det.decision and loaded.version == det.version
    header = registry.read_header(str(tmp_path / "bgad"))
    assert header.pixel_threshold == det.pixel_threshold and header.threshold_source == det.threshold_source


def test_bgad_without_a_recorded_decision_is_legacy(bgad_fit):
    from adray.detectors.bgad.detector import BgadDetector

    det, _ = bgad_fit
    meta = {k: v for k, v in det.metadata.items() if k != "decision"}
    old = BgadDetector(det.model, det.normaliser, threshold=det.threshold, metadata=meta, device="cpu")
    assert old.decision == Decision(threshold=det.threshold, pixel_threshold=None, source=LEGACY)
    assert old.pixel_threshold is None and old.threshold_source == LEGACY


def test_fit_bgad_flags_reach_the_train_config():
    import argparse

    from adray.commands import fit_bgad

    parser = argparse.ArgumentParser()
    fit_bgad.add_arguments(parser)
    base = ["--train", "x", "--category", "c", "--output", "o", "--weights", "random"]
    base += ["--backbone", "test_efficientnet"]
    _, train = fit_bgad.configs_from_args(parser.parse_args([*base, "--target-pixel-fpr", "0.002"]))
    assert (train.target_fpr, train.target_pixel_fpr) == (0.01, 0.002)
    with pytest.raises(SystemExit) as e:
        fit_bgad.configs_from_args(parser.parse_args([*base, "--target-pixel-fpr", "2"]))
    assert e.value.code == 2


@pytest.fixture(scope="module")
def m3dm_parts():
    from adray.detectors.m3dm import M3DMDetector, tiny_config
    from adray.detectors.m3dm.features import FeatureExtractor
    from adray.synthetic import make_xyz_sample

    cfg = tiny_config("cookie", mode="rgb", img_size=32)
    ext = FeatureExtractor(cfg)
    cfg = cfg.with_dims(ext.rgb_dim, ext.xyz_dim)
    unfitted = M3DMDetector(cfg, ext)

    def prepared(seed: int, n: int) -> dict[str, np.ndarray]:
        samples = []
        for i in range(n):
            rgb, xyz, _ = make_xyz_sample("cookie", "good", 32, np.random.default_rng(seed + i))
            samples.append(unfitted.preprocess({"image": rgb, "xyz": xyz}))
        return {k: np.stack([p[k] for p in samples]) for k in samples[0]}

    torch.manual_seed(0)
    train, held = prepared(0, 4), prepared(50, 4)
    feats = {k: {n: v.numpy() for n, v in ext(b).items()} for k, b in (("train", train), ("held", held))}
    return cfg, ext, feats, held


@pytest.mark.parametrize("target_fpr", [None, 0.25])
def test_m3dm_thresholds_on_the_heldout_normals(m3dm_parts, target_fpr, tmp_path):
    from adray.detectors import registry
    from adray.detectors.m3dm.build import build_detector

    cfg, ext, feats, held = m3dm_parts
    det = build_detector(
        cfg, ext, feats["train"], feats["held"], target_fpr=target_fpr, target_pixel_fpr=0.05
    )
    out = det.score(held)
    scores, maps = out.image_score.numpy(), out.anomaly_map.numpy()
    d = det.decision
    assert d.threshold == det.threshold and d.n_calibration == 4 and d.target_pixel_fpr == 0.05
    if target_fpr is None:  # the rule M3DM always had: the largest held-out normal score
        assert d.source == "heldout_normals_max" and d.pixel_source == "heldout_normals_pixel_fpr_0.05"
        assert d.threshold == pytest.approx(float(scores.max()), rel=1e-6)
    else:  # 4 held-out normals at a rate of 0.25: exactly one at or above the threshold
        assert d.source == "heldout_normals_fpr_0.25" and d.pixel_source is None
        assert int((scores >= np.float32(d.threshold) * (1 - 1e-6)).sum()) == 1
    assert abs(_pixel_rate(maps, d.pixel_threshold) - 0.05) < 0.01
    det.save(str(tmp_path / "m3dm"))
    loaded = registry.load_detector(str(tmp_path / "m3dm"), device="cpu")
    assert loaded.decision == d and loaded.pixel_threshold == d.pixel_threshold


def test_m3dm_without_a_recorded_decision_is_legacy(m3dm_parts):
    from adray.detectors.m3dm import M3DMDetector

    cfg, ext, _, _ = m3dm_parts
    old = M3DMDetector(cfg, ext, threshold=1.5, metadata={"threshold_rule": "max"})
    assert old.decision == Decision(threshold=1.5, pixel_threshold=None, source=LEGACY)
