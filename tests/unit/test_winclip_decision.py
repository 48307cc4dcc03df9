"""WinCLIP's decisions: the zero-shot rule, WinCLIP+ leave-one-out calibration, k = 1, artifacts old and new."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from adray.backbones.open_clip import register_tiny_clip
from adray.detectors import create_detector, load_detector
from adray.detectors.artifact import HEADER_FIELDS
from adray.detectors.thresholds import LEGACY, ZERO_SHOT_SOURCE
from adray.detectors.winclip import calibration

TINY = register_tiny_clip()


def _rgb(seed: int, shape=(64, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def _winclip(refs=None, **kw):
    return create_detector(
        "winclip",
        class_name="bottle",
        model_name=TINY,
        weights="random",
        device="cpu",
        reference_images=refs,
        **kw,
    )


def test_zero_shot_rule_is_half_and_says_uncalibrated():
    det = _winclip()
    assert (det.threshold, det.pixel_threshold, det.threshold_source) == (0.5, 0.5, ZERO_SHOT_SOURCE)


def test_leave_one_out_scores_are_the_scores_against_the_other_references():
    refs = [_rgb(s) for s in range(4)]
    det = _winclip(refs, target_fpr=0.0, target_pixel_fpr=0.0)
    assert det.threshold_source == "reference_loo_fpr_0"
    assert det.decision.n_calibration == 4 and det.decision.target_pixel_fpr == 0.0
    # recompute reference 2's leave-one-out score with an independent detector holding the other three
    others = _winclip([refs[i] for i in (0, 1, 3)])
    batch = torch.from_numpy(det.preprocess({"image": refs[2]})["image"][None])
    expected = others.score(batch)
    images = torch.from_numpy(np.stack([det.preprocess({"image": r})["image"] for r in refs]))
    encoded = det.encode(images)
    per_ref = {"patch": torch.nn.functional.normalize(encoded.patches, dim=-1)}
    per_ref.update(
        {f"window_{k}": torch.nn.functional.normalize(w, dim=-1) for k, w in encoded.windows.items()}
    )
    assert per_ref.keys() == encoded.memory_rows().keys()
    for name, rows in encoded.memory_rows().items():
        torch.testing.assert_close(rows, per_ref[name])
    scores, maps = calibration.leave_one_out_scores(det, encoded, per_ref, tuple(images.shape[-2:]))
    np.testing.assert_allclose(scores[2], expected.image_score.numpy()[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps[2], expected.anomaly_map.numpy()[0], rtol=1e-4, atol=1e-5)
    # at rate 0 nothing normal is flagged: thresholds sit just above the largest leave-one-out values
    assert det.threshold > scores.max() and det.threshold == pytest.approx(scores.max(), abs=1e-6)
    assert det.pixel_threshold > maps.max()


def test_target_rate_moves_the_threshold_and_not_the_version():
    refs = [_rgb(s) for s in range(5)]
    strict, loose = _winclip(refs, target_fpr=0.0), _winclip(refs, target_fpr=0.4, target_pixel_fpr=0.2)
    assert loose.threshold < strict.threshold and loose.pixel_threshold < strict.pixel_threshold
    assert loose.threshold_source == "reference_loo_fpr_0.4"
    assert loose.version == strict.version  # thresholds decide, they do not change scores
    with pytest.raises(ValueError, match="target_fpr"):
        _winclip(refs, target_fpr=1.5)


def test_one_reference_cannot_leave_one_out():
    det = _winclip([_rgb(1)])
    assert det.k_shot == 1
    assert (det.threshold, det.pixel_threshold, det.threshold_source) == (
        0.5,
        0.5,
        "uncalibrated_k1_fused_0.5",
    )


def test_artifacts_keep_the_decision_and_old_ones_load_as_legacy(tmp_path: Path):
    det = _winclip([_rgb(s) for s in range(3)])
    uri = tmp_path / "wc"
    det.save(str(uri))
    loaded = load_detector(str(uri))
    assert loaded.decision == det.decision
    doc = json.loads((uri / "config.json").read_text())
    assert doc["metadata"]["decision"]["source"] == "reference_loo_fpr_0.05"
    del doc["metadata"]["decision"]  # an artifact written before decisions were recorded:
    for key in ("threshold_source", "pixel_threshold"):  # its header has no decision either
        doc.pop(key, None)
    (uri / "config.json").write_text(json.dumps(doc))
    old = load_detector(str(uri))
    assert old.threshold_source == LEGACY and old.pixel_threshold is None
    assert old.threshold == pytest.approx(det.threshold)
    zero = _winclip()
    zero.save(str(tmp_path / "zs"))
    doc = json.loads((tmp_path / "zs" / "config.json").read_text())
    del doc["metadata"]["decision"]
    doc["metadata"]["threshold"] = None
    for key in HEADER_FIELDS:  # written before decisions: before headers too (format 1.0)
        doc.pop(key, None)
    doc["schema_version"] = "1.0"
    (tmp_path / "zs" / "config.json").write_text(json.dumps(doc))
    assert load_detector(str(tmp_path / "zs")).threshold_source == ZERO_SHOT_SOURCE
