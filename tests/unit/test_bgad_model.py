"""BGAD detector: batch-invariant scores, artifact round trip, backbone provenance, anomaly split, sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adray.backbones.timm_features import backbone_record, create_timm_backbone
from adray.backbones.weights import WeightsUnavailableError
from adray.detectors.base import load_detector, read_artifact_config
from adray.detectors.bgad import BgadConfig, BgadDetector, BgadModel, BgadTrainConfig, Normaliser
from adray.detectors.bgad.data import plan_fit, select_anomalies
from adray.detectors.bgad.images import copy_paste, patch_labels
from adray.train.common import owner_filter, pad_to_length, shard_of

TINY = dict(backbone="test_efficientnet", weights="random", image_size=32, n_blocks=2, category="bottle")


@pytest.fixture(scope="module")
def detector() -> BgadDetector:
    model = BgadModel(BgadConfig(**TINY))
    with torch.no_grad():  # make the flows non-trivial so maps vary
        for flow in model.flows:
            for block in flow.module_list:
                block.subnet[2].weight.normal_(0, 0.5)
    return BgadDetector(
        model,
        Normaliser([-1.0, -1.1, -1.2], 3.0),
        threshold=0.5,
        metadata={"anomaly_item_ids": ["a1", "a2"]},
        device="cpu",
    )


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(n)]


def test_preprocess_resizes_and_normalises(detector):
    out = detector.preprocess({"image": _images(1)[0]})
    assert out["image"].shape == (3, 32, 32) and out["image"].dtype == np.float32
    assert detector.preprocess({"image": np.full((10, 10, 3), 124, np.uint8)})["image"][
        0
    ].mean() == pytest.approx((124 / 255 - 0.485) / 0.229, abs=1e-3)


def test_scores_do_not_depend_on_the_batch(detector):
    x = np.stack([detector.preprocess({"image": im})["image"] for im in _images(5)])
    full = detector.score({"image": x})
    assert full.image_score.shape == (5,) and full.anomaly_map.shape == (5, 32, 32)
    assert full.image_score.std() > 0
    for i in range(5):
        one = detector.score({"image": x[i : i + 1]})
        torch.testing.assert_close(one.anomaly_map[0], full.anomaly_map[i], atol=1e-5, rtol=1e-5)
    other = detector.score({"image": np.concatenate([x[3:4], x[:1] * 2.0])})
    torch.testing.assert_close(other.image_score[0], full.image_score[3], atol=1e-5, rtol=1e-5)
    # image score is the max of the map (top_k = 1)
    torch.testing.assert_close(full.image_score, full.anomaly_map.flatten(1).max(1).values)


def test_artifact_round_trip(detector, tmp_path):
    uri = str(tmp_path / "bgad-artifact")
    detector.save(uri)
    doc = read_artifact_config(uri)
    assert doc["detector"] == "bgad" and doc["version"] == detector.version
    assert doc["config"]["backbone"] == {"name": "test_efficientnet", "weights": "random", "seed": 0}
    assert doc["metadata"]["anomaly_item_ids"] == ["a1", "a2"]
    loaded = load_detector(uri)
    assert isinstance(loaded, BgadDetector)
    assert loaded.version == detector.version and loaded.threshold == 0.5 and loaded.categories == ("bottle",)
    assert loaded.normaliser == detector.normaliser
    x = np.stack([detector.preprocess({"image": im})["image"] for im in _images(3, seed=1)])
    torch.testing.assert_close(
        loaded.score({"image": x}).anomaly_map, detector.score({"image": x}).anomaly_map
    )


def test_random_backbone_is_rebuilt_from_its_seed_and_file_weights_by_sha(tmp_path):
    a = create_timm_backbone("test_efficientnet", "random", out_indices=(1, 2, 3), seed=5)
    b = create_timm_backbone("test_efficientnet", "random", out_indices=(1, 2, 3), seed=5)
    c = create_timm_backbone("test_efficientnet", "random", out_indices=(1, 2, 3), seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert not any(p.requires_grad for p in a.parameters()) and not a.training

    import timm
    from safetensors.torch import save_file

    full = timm.create_model("test_efficientnet", pretrained=False)
    path = str(tmp_path / "w.safetensors")
    save_file(full.state_dict(), path)
    rec = backbone_record("test_efficientnet", path)
    assert rec["weights"] == path and len(rec["sha256"]) == 64
    from_file = create_timm_backbone("test_efficientnet", path, out_indices=(1, 2, 3))
    key = "conv_stem.weight"
    assert torch.equal(from_file.state_dict()[key], full.state_dict()[key])


def test_pretrained_weights_offline_raise_a_helpful_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="--weights"):
        create_timm_backbone("test_efficientnet", "pretrained", pretrained_tag="r160_in1k")
    assert backbone_record("tf_efficientnet_b6", "pretrained", pretrained_tag="aa_in1k")["name"] == (
        "tf_efficientnet_b6.aa_in1k"
    )


def _rows(category: str = "bottle") -> list[dict]:
    rows = [
        dict(
            item_id=f"{category}-n{i}",
            category=category,
            split="train",
            label=0,
            defect_type="good",
            gt_mask_uri=None,
        )
        for i in range(20)
    ]
    for d, n in (("hole", 6), ("scratch", 6), ("stain", 2)):
        rows += [
            dict(
                item_id=f"{category}-{d}{i}",
                category=category,
                split="test",
                label=1,
                defect_type=d,
                gt_mask_uri=f"m/{d}{i}.png",
            )
            for i in range(n)
        ]
    return rows


def test_anomaly_split_is_seeded_balanced_and_restricted_to_seen_defects():
    rows = _rows()
    chosen = select_anomalies(rows, 6, seed=0)
    types = [r["defect_type"] for r in chosen]
    assert sorted(types) == ["hole", "hole", "scratch", "scratch", "stain", "stain"]
    assert select_anomalies(rows, 6, seed=0) == chosen
    assert [r["item_id"] for r in select_anomalies(rows, 6, seed=1)] != [r["item_id"] for r in chosen]
    seven = select_anomalies(rows, 7, seed=0)  # remainder from the leftovers
    assert len(seven) == 7 and {r["item_id"] for r in chosen} <= {r["item_id"] for r in seven}
    seen = select_anomalies(rows, 4, seed=0, seen_defects=("hole",))
    assert {r["defect_type"] for r in seen} == {"hole"} and len(seen) == 4
    # does not depend on other categories being present
    mixed = _rows("nut") + rows
    plan = plan_fit(mixed, "bottle", BgadTrainConfig(num_anomalies=6))
    assert plan.anomaly_item_ids == sorted(r["item_id"] for r in chosen)
    assert len(plan.calibration) == 2 and len(plan.normal) == 18
    assert not set(plan.anomaly_item_ids) & {r["item_id"] for r in plan.normal + plan.calibration}
    assert plan_fit(rows, "bottle", BgadTrainConfig(num_anomalies=0)).anomalies == []


def test_sharding_covers_every_item_once_and_padding_keeps_all():
    ids = [f"item{i}" for i in range(37)]
    owned = [[i for i in ids if owner_filter(r, 3)(i)] for r in range(3)]
    assert sorted(sum(owned, [])) == sorted(ids) and all(owned)
    assert shard_of("item5", 3) == shard_of("item5", 3)
    entries = torch.arange(5)
    padded = pad_to_length(entries, 9, torch.Generator().manual_seed(0))
    assert len(padded) == 9 and set(padded.tolist()) == set(range(5)) and torch.equal(padded[:5], entries)
    with pytest.raises(ValueError, match="fewer workers"):
        pad_to_length(torch.zeros(0, dtype=torch.long), 3, torch.Generator())


def test_patch_labels_by_nearest_downsampling_and_copy_paste_mask():
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 0:2, 0:2] = True
    labels = patch_labels(mask, 4, 4)
    assert labels.shape == (1, 4, 4) and int(labels.sum()) == 1 and bool(labels[0, 0, 0])
    rng = np.random.default_rng(0)
    anomaly = np.full((16, 16, 3), 200, np.uint8)
    amask = np.zeros((16, 16), bool)
    amask[3:6, 4:9] = True
    normal = np.zeros((16, 16, 3), np.uint8)
    image, new_mask = copy_paste(anomaly, amask, normal, rng)
    assert np.array_equal(new_mask, amask)  # in place by default
    assert (image[new_mask] > 100).all() and (image[~new_mask] == 0).all()
    image, new_mask = copy_paste(anomaly, amask, normal, rng, placement="random")
    assert new_mask.sum() == amask.sum()
    assert (image[new_mask] > 100).all() and (image[~new_mask] == 0).all()
