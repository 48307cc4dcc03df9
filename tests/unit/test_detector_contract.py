"""The Detector contract, checked the same way for every detector the ``adray`` package registers.

Each registered name has a case below: a tiny configuration, fitted where the detector needs fitting
(tiny synthetic data from :mod:`adray.synthetic`), and a few synthetic samples. Every case is checked for
the protocol's members, output shapes and dtypes, batch invariance (items scored one by one equal the
same items scored in one batch), save -> load keeping the version, threshold, categories and scores,
and preprocessing: the loaded artifact's ``preprocess`` (and, where the registry has one, the
model-free preprocessor built from the same options) equals the fitted model's, bit for bit.

A detector registered by ``adray`` without a case here fails :func:`test_every_registered_detector_has_a_case`.
Detectors registered by test modules (plugins of the integration tests) are not ``adray``'s and are left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from adray.detectors import registry
from adray.detectors.artifact import read_artifact_config
from adray.detectors.base import Detector, ScoreBatch
from adray.synthetic import make_rgb_sample, make_xyz_sample

#: how far one item scored alone may differ from the same item scored in a batch (float32 reductions
#: in different orders; a batch-dependent normaliser would be off by far more)
BATCH_ATOL = 1e-4
BATCH_RTOL = 1e-4


@dataclass
class Case:
    detector: Detector
    samples: list[dict[str, Any]]  # at least 3, raw (uint8 images, float32 xyz)
    options: dict[str, Any] = field(default_factory=dict)  # factory options, for the model-free preprocessor
    prepared: list[dict[str, np.ndarray]] = field(default_factory=list)  # detector.preprocess(sample)
    scores: tuple[np.ndarray, np.ndarray] | None = None  # (image_score, anomaly_map) of all in one batch
    loaded: Detector | None = None  # the detector after save -> load_detector
    header: dict[str, Any] = field(default_factory=dict)  # its artifact's config.json

    def __post_init__(self) -> None:  # computed once: M3DM's point-cloud preprocessing takes seconds
        self.prepared = [self.detector.preprocess(s) for s in self.samples]
        self.scores = _scores(self.detector, self.prepared)


def _rgb_samples(category: str, size: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    defects = ("good", "hole", "scratch")
    return [{"image": make_rgb_sample(category, d, size, rng)[0]} for d in defects]


def _xyz_samples(category: str, size: int, seed: int, defects=("good", "dent", "good")) -> list[dict]:
    out = []
    for i, defect in enumerate(defects):
        rgb, xyz, _ = make_xyz_sample(category, defect, size, np.random.default_rng(seed + i))
        out.append({"image": rgb, "xyz": xyz})
    return out


def _winclip(tmp_path_factory) -> Case:
    options = {"model_name": "adray-tiny-clip", "weights": "random"}
    references = [s["image"] for s in _rgb_samples("bottle", 40, 7)[::2]]  # 2-shot: WinCLIP+ memories
    det = registry.create_detector(
        "winclip", class_name="bottle", device="cpu", reference_images=references, **options
    )
    return Case(det, _rgb_samples("bottle", 37, 0), options)


def _bgad(tmp_path_factory) -> Case:
    from adray.catalog import build_manifest
    from adray.detectors.bgad import BgadConfig, BgadTrainConfig
    from adray.detectors.bgad.session import fit_bgad_local
    from adray.synthetic import generate_mvtec_ad

    data = str(tmp_path_factory.mktemp("bgad-data"))
    generate_mvtec_ad(
        data, categories=("bottle",), image_size=48, n_train=8, n_test_good=1, n_test_per_defect=1
    )
    rows = build_manifest(data, "auto", categories=["bottle"])[0].to_pylist()
    model_cfg = BgadConfig(
        backbone="test_efficientnet", weights="random", image_size=32, n_blocks=2, category="bottle"
    )
    train_cfg = BgadTrainConfig(
        meta_epochs=1, sub_epochs=1, batch_size=8, num_anomalies=1, anomaly_repeats=1, copy_paste_variants=1
    )
    det = fit_bgad_local(rows, model_cfg, train_cfg, device="cpu")
    return Case(det, _rgb_samples("bottle", 40, 1))


def _m3dm(tmp_path_factory) -> Case:
    from adray.detectors.m3dm import M3DMDetector, tiny_config
    from adray.detectors.m3dm.build import build_detector
    from adray.detectors.m3dm.features import FeatureExtractor
    from adray.detectors.m3dm.fusion import FeatureFusion

    cfg = tiny_config("cookie", img_size=32)
    ext = FeatureExtractor(cfg)
    cfg = cfg.with_dims(ext.rgb_dim, ext.xyz_dim)
    unfitted = M3DMDetector(cfg, ext)

    def features(samples):
        prepared = [unfitted.preprocess(s) for s in samples]
        batch = {k: np.stack([p[k] for p in prepared]) for k in prepared[0]}
        return {k: v.numpy() for k, v in ext(batch).items()}

    torch.manual_seed(0)
    train = features(_xyz_samples("cookie", 32, 0, ("good",) * 4))
    held = features(_xyz_samples("cookie", 32, 50, ("good",) * 3))
    det = build_detector(cfg, ext, train, held, fusion=FeatureFusion(cfg.uff))
    return Case(det, _xyz_samples("cookie", 32, 100))


#: registry name -> builder of its contract case (add one with every detector you register)
CASES: dict[str, Callable[[Any], Case]] = {"winclip": _winclip, "bgad": _bgad, "m3dm": _m3dm}


def _adray_detectors() -> list[str]:
    """Registered names whose class or factory comes from the ``adray`` package (not from tests)."""
    names = []
    for name in registry.list_detectors():
        owners = [registry.get_factory(name)]
        try:
            owners.append(registry.get_detector(name))
        except KeyError:
            pass
        if any(o is not None and getattr(o, "__module__", "").startswith("adray.") for o in owners):
            names.append(name)
    return names


def test_every_registered_detector_has_a_case():
    names = _adray_detectors()
    assert {"winclip", "bgad", "m3dm"} <= set(names)
    missing = sorted(set(names) - set(CASES))
    assert not missing, f"registered detectors without a contract case in this module: {missing}"


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory) -> Case:
    torch.manual_seed(0)
    built = CASES[request.param](tmp_path_factory)
    uri = str(tmp_path_factory.mktemp("artifact") / built.detector.name)
    built.detector.save(uri)
    built.header = read_artifact_config(uri)  # readable without weights
    built.loaded = registry.load_detector(uri, device="cpu")
    return built


def _stack(prepared: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([p[k] for p in prepared]) for k in prepared[0]}


def _scores(det: Detector, prepared: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    out = det.score(_stack(prepared))
    assert isinstance(out, ScoreBatch)
    return out.numpy()


def test_members_and_registry(case):
    det = case.detector
    assert isinstance(det, Detector)
    assert registry.get_detector(det.name) is type(det)
    assert tuple(det.modalities) in (("rgb",), ("rgb", "xyz"))
    assert isinstance(det.version, str) and len(det.version) == 16
    assert det.categories is None or all(isinstance(c, str) for c in det.categories)
    assert det.threshold is None or np.isfinite(det.threshold)


def test_preprocess_gives_fixed_shapes_and_score_gives_n_maps(case):
    prepared = case.prepared
    for p in prepared:
        assert set(p) == set(prepared[0]) and "image" in p
        assert all(p[k].shape == prepared[0][k].shape for k in p), "preprocess shapes must not vary"
        assert p["image"].ndim == 3 and p["image"].shape[0] == 3
    n = len(case.samples)
    scores, maps = case.scores
    assert scores.shape == (n,) and scores.dtype == np.float32 and np.isfinite(scores).all()
    assert maps.ndim == 3 and maps.shape[0] == n and maps.dtype == np.float32 and np.isfinite(maps).all()
    assert maps.shape[1:] == prepared[0]["image"].shape[1:], "maps come at the detector's input size"


def test_scores_are_batch_invariant(case):
    scores, maps = case.scores
    for i, prepared in enumerate(case.prepared):
        alone_score, alone_map = _scores(case.detector, [prepared])
        np.testing.assert_allclose(alone_score[0], scores[i], rtol=BATCH_RTOL, atol=BATCH_ATOL)
        np.testing.assert_allclose(alone_map[0], maps[i], rtol=BATCH_RTOL, atol=BATCH_ATOL)
    assert not np.allclose(scores, scores[0]), "the samples should score differently (a live check)"


def test_save_load_keeps_version_header_and_scores(case):
    det, loaded = case.detector, case.loaded
    assert case.header["detector"] == det.name and case.header["version"] == det.version
    assert type(loaded) is type(det) and loaded.version == det.version
    assert loaded.threshold == det.threshold and loaded.categories == det.categories
    assert tuple(loaded.modalities) == tuple(det.modalities)
    before, after = case.scores, _scores(loaded, case.prepared)
    np.testing.assert_allclose(after[0], before[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after[1], before[1], rtol=1e-5, atol=1e-6)


def test_preprocessing_from_the_artifact_equals_the_models(case):
    det, loaded = case.detector, case.loaded
    model_free = registry.create_preprocessor(det.name, **case.options) if case.options else None
    for sample, expected in zip(case.samples, case.prepared):
        for other in (loaded.preprocess(sample), model_free(sample) if model_free else None):
            if other is None:
                continue
            assert set(other) == set(expected)
            for k in expected:
                np.testing.assert_array_equal(other[k], expected[k])
