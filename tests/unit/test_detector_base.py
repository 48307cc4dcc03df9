"""The Detector contract's shared pieces: ScoreBatch shapes, content hashes, artifact files, registry."""

from __future__ import annotations

import json

import pytest
import torch

from adray import storage
from adray.detectors import base


def test_score_batch_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="image_score"):
        base.ScoreBatch(torch.zeros(2, 1), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="batch size"):
        base.ScoreBatch(torch.zeros(3), torch.zeros(2, 4, 4))
    scores, maps = base.ScoreBatch(torch.ones(2), torch.zeros(2, 4, 4)).numpy()
    assert scores.dtype.name == "float32" and maps.shape == (2, 4, 4)


def test_content_hash_changes_with_config_and_weights_and_handles_scalars():
    w = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor(7)}
    h = base.content_hash({"a": 1}, w)
    assert h == base.content_hash({"a": 1}, dict(reversed(list(w.items()))))  # order-independent
    assert h != base.content_hash({"a": 2}, w)
    w2 = dict(w, w=w["w"] + 1e-3)
    assert h != base.content_hash({"a": 1}, w2)
    assert h != base.content_hash({"a": 1}, dict(w, n=torch.tensor(8)))


def test_artifact_round_trip_verifies_hashes(tmp_path):
    uri = str(tmp_path / "art")
    tensors = {"flow.0": torch.randn(3, 4)}
    banks = {"rgb": torch.randn(5, 2)}
    base.save_artifact(
        uri,
        detector="demo",
        version="v1",
        config={"k": (1, 2)},
        tensors=tensors,
        extra_files={"banks.safetensors": banks},
        metadata={"anomaly_item_ids": ["a", "b"]},
    )
    doc, weights, groups = base.load_artifact(uri)
    assert doc["detector"] == "demo" and doc["config"] == {"k": [1, 2]}
    assert doc["metadata"]["anomaly_item_ids"] == ["a", "b"]
    assert torch.equal(weights["flow.0"], tensors["flow.0"])
    assert torch.equal(groups["banks.safetensors"]["rgb"], banks["rgb"])
    # a tampered weights file is refused
    storage.write_bytes(storage.join_url(uri, base.WEIGHTS_FILE), base.tensors_to_bytes({"x": torch.ones(1)}))
    with pytest.raises(ValueError, match="sha256"):
        base.load_artifact(uri)


def test_artifact_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        base.read_artifact_config(str(tmp_path / "nothing"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ValueError, match="not an adray artifact"):
        base.read_artifact_config(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match=".safetensors"):
        base.save_artifact(
            str(tmp_path / "x"), detector="d", version="v", config={}, tensors={}, extra_files={"a.pt": {}}
        )


def test_registry_knows_the_three_detectors_and_names_unknown_ones():
    names = base.registered_detectors()
    assert {"winclip", "bgad", "m3dm"} <= set(names)
    with pytest.raises(KeyError, match="no detector factory named 'nope'"):
        base.create_detector("nope")
