"""WinCLIP / WinCLIP+ scoring, the Detector contract and the CLI, on the tiny random-weight CLIP."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from adray.backbones.open_clip import register_tiny_clip
from adray.backbones.weights import WeightsUnavailableError
from adray.detectors import create_detector, load_detector
from adray.detectors.winclip import WinClip

TINY = register_tiny_clip()


def _rgb(seed: int, shape=(80, 100)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def zero_shot() -> WinClip:
    return create_detector("winclip", class_name="metal_nut", model_name=TINY, weights="random", device="cpu")


def _batch(detector: WinClip, seeds) -> torch.Tensor:
    return torch.from_numpy(np.stack([detector.preprocess({"image": _rgb(s)})["image"] for s in seeds]))


def test_detector_contract(zero_shot):
    out = zero_shot.preprocess({"image": _rgb(0)})
    assert out["image"].dtype == np.float32 and out["image"].shape == (3, 96, 96)
    scores = zero_shot.score({"image": out["image"][None]})
    assert scores.image_score.shape == (1,) and scores.anomaly_map.shape == (1, 96, 96)
    assert (
        scores.anomaly_map.dtype == torch.float32
        and ((scores.anomaly_map > 0) & (scores.anomaly_map < 1)).all()
    )
    assert zero_shot.categories == ("metal_nut",) and zero_shot.threshold == 0.5  # the prompt rule
    assert zero_shot.name == "winclip" and zero_shot.modalities == ("rgb",)
    assert len(zero_shot.version) == 16
    with pytest.raises(ValueError, match="preprocess"):
        zero_shot.score(torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize("shots", [0, 2])
def test_outputs_do_not_depend_on_the_rest_of_the_batch(zero_shot, shots):
    detector = WinClip(zero_shot.backbone, zero_shot.config, text=zero_shot.text_embeddings)
    if shots:
        detector.set_reference_images([_rgb(100 + i) for i in range(shots)])
    batch = _batch(detector, [1, 2, 3, 4])
    together = detector.score(batch)
    for i in range(4):
        alone = detector.score(batch[i : i + 1])
        torch.testing.assert_close(together.image_score[i : i + 1], alone.image_score, atol=1e-5, rtol=0)
        torch.testing.assert_close(together.anomaly_map[i : i + 1], alone.anomaly_map, atol=1e-5, rtol=0)
    # and not on the chunking of windows through the transformer
    detector.config.max_tokens = 64
    chunked = detector.score(batch)
    torch.testing.assert_close(chunked.anomaly_map, together.anomaly_map, atol=1e-5, rtol=0)


def test_reference_memory_lowers_the_score_of_a_matching_image(zero_shot):
    query, other = _batch(zero_shot, [7, 8])
    before = zero_shot.score(torch.stack([query, other]))
    few = WinClip(zero_shot.backbone, zero_shot.config, text=zero_shot.text_embeddings)
    few.set_reference_images([_rgb(7)])
    assert few.k_shot == 1
    assert few.memory["patch"].shape == (36, 64) and few.memory["window_2"].shape == (25, 64)
    after = few.score(torch.stack([query, other]))
    # the query's tokens and windows are all in memory: visual distance 0, so its score halves
    assert after.image_score[0] == pytest.approx(before.image_score[0].item() / 2, abs=1e-4)
    assert after.image_score[0] < after.image_score[1]
    assert (after.anomaly_map[0] < before.anomaly_map[0]).all()
    assert after.anomaly_map[0].mean() < after.anomaly_map[1].mean()
    assert few.version != zero_shot.version


def test_artifact_round_trip_scores_identically(zero_shot, tmp_path):
    detector = create_detector(
        "winclip",
        class_name="screw",
        model_name=TINY,
        weights="random",
        device="cpu",
        reference_images=[_rgb(3)],
    )
    detector.threshold = 0.6
    uri = str(tmp_path / "winclip-screw")
    detector.save(uri)
    loaded = load_detector(uri)
    assert isinstance(loaded, WinClip) and loaded.version == detector.version
    assert loaded.threshold == 0.6 and loaded.k_shot == 1 and loaded.categories == ("screw",)
    batch = _batch(detector, [5, 6])
    a, b = detector.score(batch), loaded.score(batch)
    torch.testing.assert_close(a.image_score, b.image_score, atol=0, rtol=0)
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map, atol=0, rtol=0)


def test_random_weights_are_seeded_and_text_is_shared_per_class():
    from adray.backbones import open_clip as oc

    first = oc.load_clip(TINY, "random", device="cpu")
    oc._load_clip_cached.cache_clear()
    second = oc.load_clip(TINY, "random", device="cpu")
    assert first.model is not second.model and first.weights_id == second.weights_id
    for (name, p), q in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(p, q), name
    a = create_detector("winclip", class_name="metal_nut", model_name=TINY, weights="random", device="cpu")
    b = create_detector("winclip", class_name="metal nut", model_name=TINY, weights="random", device="cpu")
    assert a.text_embeddings.data_ptr() == b.text_embeddings.data_ptr() or torch.equal(
        a.text_embeddings, b.text_embeddings
    )
    c = create_detector("winclip", class_name="bottle", model_name=TINY, weights="random", device="cpu")
    assert not torch.equal(a.text_embeddings, c.text_embeddings)


def test_offline_pretrained_weights_raise_a_helpful_error(monkeypatch):
    import huggingface_hub.constants

    from adray.backbones import open_clip as oc

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", "/nonexistent-adray-hf-home")
    with pytest.raises(WeightsUnavailableError, match="--weights") as info:
        oc._create_pretrained("ViT-B-16-plus-240", "laion400m_e31")
    assert "timm/vit_base_patch16_plus_clip_240.laion400m_e31" in str(info.value)
    with pytest.raises(ValueError, match="no pretrained tag"):
        oc._create_pretrained(TINY, "laion400m_e31")


def test_cli_scores_images_and_writes_maps(tmp_path, capsys):
    from PIL import Image

    from adray.commands import winclip as command

    for i in range(3):
        Image.fromarray(_rgb(20 + i, shape=(50 + 10 * i, 70))).save(tmp_path / f"img{i}.png")
    Image.fromarray(_rgb(30)).save(tmp_path / "ref.png")
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    masks = tmp_path / "maps"
    args = parser.parse_args(
        [str(tmp_path / f"img{i}.png") for i in range(3)]
        + ["--class-name", "bottle", "--weights", "random", "--model", TINY, "--device", "cpu"]
        + ["--masks", str(masks), "--reference", str(tmp_path / "ref.png"), "--batch-size", "2"]
    )
    assert command.run(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(tmp_path / f"img{i}.png") for i in range(3)]
    assert all(0.0 < float(line.split("\t")[1]) < 1.0 for line in lines)
    assert Image.open(masks / "img2.png").size == (70, 70) and Image.open(masks / "img0.png").mode.startswith(
        "I"
    )
    assert len((masks / "maps.jsonl").read_text().splitlines()) == 3


def test_weights_file_is_loaded_and_identified_by_its_hash(tmp_path):
    from safetensors.torch import save_file

    from adray.backbones import open_clip as oc

    source = oc.load_clip(TINY, "random", device="cpu").model
    changed = {k: v.clone() for k, v in source.state_dict().items()}
    changed["visual.proj"] += 0.5
    path = tmp_path / "tiny.safetensors"
    save_file(changed, str(path))
    loaded = oc.load_clip(TINY, str(path), device="cpu")
    assert loaded.weights_id.startswith("sha256:")
    torch.testing.assert_close(loaded.model.visual.proj, changed["visual.proj"], atol=0, rtol=0)
    detector = create_detector("winclip", class_name="pill", model_name=TINY, weights=str(path), device="cpu")
    detector.save(str(tmp_path / "artifact"))
    assert load_detector(str(tmp_path / "artifact")).version == detector.version
    save_file({k: v + 1.0 for k, v in changed.items()}, str(path))  # the file changes under the artifact
    oc._load_clip_cached.cache_clear()
    with pytest.raises(ValueError, match="resolves to"):
        load_detector(str(tmp_path / "artifact"))
