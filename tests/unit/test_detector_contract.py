"""The Detector contract, checked the same way for every detector the ``adray`` package registers.

Each registered name has a case below: a tiny configuration, fitted where the detector needs fitting
(tiny synthetic data from :mod:`adray.synthetic`), and a few synthetic samples. Every case is checked for
the protocol's members, output shapes and dtypes, batch invariance (items scored one by one equal the
same items scored in one batch), save -> load keeping the version, threshold, categories and scores,
and preprocessing: the loaded artifact's ``preprocess`` (and, where the registry has one, the
model-free preprocessor built from the same options) equals the fitted model's, bit for bit.

The artifact header: read without weights, valid against ``schemas/artifact``, saying what the model
says; preprocessing rebuilt from it alone equals the model's; the pipeline's driver and decode stage
use it and never read weights; the version rule is checked on load (tampered weights, config or header
fail with a clear error); and artifacts written before headers (format 1.0) still load and score.

A detector registered by ``adray`` without a case here fails :func:`test_every_registered_detector_has_a_case`.
Detectors registered by test modules (plugins of the integration tests) are not ``adray``'s and are left out.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from adray.detectors import registry
from adray.detectors.artifact import read_artifact_config
from adray.detectors.base import Detector, ScoreBatch
from adray.synthetic import make_rgb_sample, make_xyz_sample

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.tiny_bgad import bottle_rows, fit_tiny_bgad  # noqa: E402

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
    uri: str = ""  # the artifact folder it was saved to

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
    rows = bottle_rows(str(tmp_path_factory.mktemp("bgad-data")), n_train=8)
    det = fit_tiny_bgad(rows, num_anomalies=1, anomaly_repeats=1, copy_paste_variants=1)
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
    built.uri = uri
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


# ------------------------------------------------------------------------------------------ the header

LEGACY_DIR = Path(__file__).parent / "data" / "artifact-1.0"


def _forbid_weights(monkeypatch) -> None:
    """Any read of a tensor file (or any model load by the pipeline) fails the test."""
    from adray import storage

    real = storage.read_bytes

    def read_bytes(url, *args, **kwargs):
        assert not str(url).endswith(".safetensors"), f"weights read: {url}"
        return real(url, *args, **kwargs)

    monkeypatch.setattr(storage, "read_bytes", read_bytes)
    monkeypatch.setattr("adray.pipeline.detector_set.load_detector", _no_load)


def _no_load(*args, **kwargs):
    raise AssertionError("the detector was loaded")


def test_header_says_what_the_detector_is_without_weights(case, monkeypatch):
    from adray.detectors.artifact import ARTIFACT_SCHEMA_VERSION
    from adray.schemas import validate_record

    _forbid_weights(monkeypatch)
    det = case.detector
    validate_record(case.header, "artifact")
    header = registry.read_header(case.uri)
    assert header.schema_version == ARTIFACT_SCHEMA_VERSION and not header.legacy
    assert (header.detector, header.version) == (det.name, det.version)
    assert header.categories == (None if det.categories is None else tuple(det.categories))
    assert header.modalities == tuple(det.modalities)
    assert header.threshold == det.threshold
    recorded_source = getattr(det, "threshold_source", None) or getattr(det, "metadata", {}).get(
        "threshold_source"
    )
    assert header.threshold_source == recorded_source
    assert header.pixel_threshold == getattr(det, "pixel_threshold", None)
    assert header.preprocessing == det.preprocessing
    assert header.preprocessing.size == case.prepared[0]["image"].shape[1:]


def test_preprocessing_from_the_header_equals_the_models(case, monkeypatch):
    _forbid_weights(monkeypatch)
    header = registry.read_header(case.uri)
    for build in (
        registry.preprocessor_from_header,
        lambda h: registry.create_preprocessor(h.detector, header=h),
    ):
        preprocess = build(header)
        for sample, expected in zip(case.samples, case.prepared):
            got = preprocess(sample)
            assert set(got) == set(expected)
            for k in expected:
                np.testing.assert_array_equal(got[k], expected[k])


def test_the_driver_and_decode_stage_read_the_header_not_the_weights(case, monkeypatch):
    from adray.pipeline.detector_set import DetectorSet
    from adray.pipeline.spec import DetectorSpec

    _forbid_weights(monkeypatch)
    det = case.detector
    dset = DetectorSet(DetectorSpec(ref=case.uri, device="cpu"))
    category = det.categories[0]
    needs_xyz = "xyz" in det.modalities
    assert dset.name == det.name and dset.needs_xyz == needs_xyz
    assert dset.version(category) == det.version and dset.threshold(category) == det.threshold
    assert dset.applies_to(category, True) and not dset.applies_to("not-" + category, True)
    assert dset.applies_to(category, False) == (not needs_xyz)
    np.testing.assert_array_equal(
        dset.preprocess(category, case.samples[0])["image"], case.prepared[0]["image"]
    )


def _copy(case, tmp_path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(case.uri, out)
    return out


def _rewrite(folder: Path, edit: Callable[[dict], None]) -> None:
    doc = json.loads((folder / "config.json").read_text())
    edit(doc)
    (folder / "config.json").write_text(json.dumps(doc))


def test_version_rule_is_checked_on_load(case, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(case, tmp_path)
    weights = load_file(str(folder / "weights.safetensors"))
    key = next(k for k, v in sorted(weights.items()) if v.is_floating_point() and v.numel())
    weights[key] = (
        weights[key]
        .clone()
        .reshape(-1)
        .index_add(0, torch.tensor([0]), torch.tensor([0.5]))
        .view_as(weights[key])
    )
    save_file(weights, str(folder / "weights.safetensors"))
    with pytest.raises(ValueError, match="does not match its recorded sha256"):
        registry.load_detector(str(folder), device="cpu")
    digest = hashlib.sha256((folder / "weights.safetensors").read_bytes()).hexdigest()
    _rewrite(folder, lambda d: d["files"].update({"weights.safetensors": digest}))  # sha256 forged too
    with pytest.raises(ValueError, match="the header or the weights were changed after saving"):
        registry.load_detector(str(folder), device="cpu")

    folder = _copy(case, tmp_path / "config")
    _rewrite(folder, lambda d: d["config"].update({"tampered": 1}))
    with pytest.raises(ValueError, match="hash to"):
        registry.load_detector(str(folder), device="cpu")

    folder = _copy(case, tmp_path / "header")
    _rewrite(folder, lambda d: d["preprocessing"]["mean"].__setitem__(0, 0.25))
    registry.read_header(str(folder))  # still a valid header; the scoring side refuses it
    with pytest.raises(ValueError, match="header disagrees with the detector"):
        registry.load_detector(str(folder), device="cpu")


def _as_format_1_0(case, tmp_path) -> Path:
    """The case's artifact rewritten as the code before headers wrote it (checked against the
    ``config.json`` that code wrote for the same detector, ``tests/unit/data/artifact-1.0``)."""
    from safetensors.torch import load_file, save_file

    from adray.detectors.artifact import HEADER_FIELDS

    folder = _copy(case, tmp_path / "v1.0")
    if case.detector.name == "winclip":  # memories were stored as memory.<name>
        weights = load_file(str(folder / "weights.safetensors"))
        old = {k if k == "text_embeddings" else f"memory.{k}": v for k, v in weights.items()}
        save_file(old, str(folder / "weights.safetensors"))

    def downgrade(doc: dict) -> None:
        for k in HEADER_FIELDS:
            doc.pop(k, None)
        doc["schema_version"] = "1.0"
        for fname in doc["files"]:
            doc["files"][fname] = hashlib.sha256((folder / fname).read_bytes()).hexdigest()

    _rewrite(folder, downgrade)
    written = json.loads((folder / "config.json").read_text())
    then = json.loads((LEGACY_DIR / case.detector.name / "config.json").read_text())
    assert set(written) == set(then) and set(written["config"]) == set(then["config"])
    return folder


def test_artifacts_written_before_headers_still_load_and_score(case, tmp_path):
    from adray.pipeline.detector_set import DetectorSet
    from adray.pipeline.spec import DetectorSpec

    folder = _as_format_1_0(case, tmp_path)
    header = registry.read_header(str(folder))
    det = case.detector
    assert header.legacy and header.version == det.version and header.modalities == tuple(det.modalities)
    assert header.categories == tuple(det.categories) and header.threshold == det.threshold
    loaded = registry.load_detector(str(folder), device="cpu")
    assert loaded.version == det.version
    image_score, maps = _scores(loaded, case.prepared)
    np.testing.assert_allclose(image_score, case.scores[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps, case.scores[1], rtol=1e-5, atol=1e-6)
    dset = DetectorSet(DetectorSpec(ref=str(folder), device="cpu"))
    got = dset.preprocess(det.categories[0], case.samples[0])  # from the header, else the loaded model
    assert (header.preprocessing is None) == (det.name in ("bgad", "m3dm"))
    for k in case.prepared[0]:
        np.testing.assert_array_equal(got[k], case.prepared[0][k])


def test_a_winclip_artifact_written_before_headers_scores_as_it_did():
    uri = str(LEGACY_DIR / "winclip")
    header = registry.read_header(uri)
    assert header.legacy and header.detector == "winclip" and header.categories == ("bottle",)
    loaded = registry.load_detector(uri, device="cpu")
    assert loaded.version == header.version == "7824f2cbf4bab4ef"
    assert header.preprocessing == loaded.preprocessing
    samples = _rgb_samples("bottle", 37, 0)  # the samples its expected scores were recorded on
    prepared = [loaded.preprocess(s) for s in samples]
    preprocess = registry.preprocessor_from_header(header)
    for s, p in zip(samples, prepared):
        np.testing.assert_array_equal(preprocess(s)["image"], p["image"])
    expected = json.loads((LEGACY_DIR / "winclip" / "expected_scores.json").read_text())
    image_score, maps = _scores(loaded, prepared)
    np.testing.assert_allclose(image_score, expected["image_score"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps.mean(axis=(1, 2)), expected["map_mean"], rtol=1e-5, atol=1e-6)
