"""The pipeline's model-free WinCLIP preprocessing equals the detector's own, and loads no model."""

from __future__ import annotations

import numpy as np
import pytest

from adray.detectors import base
from adray.detectors.winclip import create_winclip, winclip_preprocessor
from adray.pipeline.detector_set import DetectorSet
from adray.pipeline.spec import DetectorSpec


@pytest.mark.parametrize("model_name", ["adray-tiny-clip", "ViT-B-16-plus-240"])
def test_model_free_preprocess_equals_the_detectors(model_name):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    det = create_winclip(class_name="bottle", weights="random", model_name=model_name, device="cpu")
    expected = det.preprocess({"image": image})["image"]
    got = winclip_preprocessor(model_name=model_name, weights="random")({"image": image})["image"]
    assert got.shape == expected.shape == (3, *det.image_size)
    np.testing.assert_array_equal(got, expected)


def test_pipeline_decode_path_never_builds_a_detector(monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the decode stage must not build a detector")

    monkeypatch.setattr(base, "create_detector", no_model)
    monkeypatch.setattr("adray.pipeline.detector_set.create_detector", no_model, raising=False)
    spec = DetectorSpec(ref="winclip", weights="random", options=(("model_name", "adray-tiny-clip"),))
    out = DetectorSet(spec).preprocess("bottle", {"image": np.zeros((20, 30, 3), np.uint8)})
    assert out["image"].shape == (3, 96, 96) and out["image"].dtype == np.float32
