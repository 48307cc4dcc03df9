"""WinCLIP window embeddings on the tiny random-weight CLIP: the same code path as ViT-B-16-plus-240."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adray.backbones.open_clip import encode_text, load_clip, register_tiny_clip, run_transformer
from adray.detectors.winclip import WinClip


@pytest.fixture(scope="module")
def backbone():
    return load_clip(register_tiny_clip(), "random", device="cpu")


@pytest.fixture(scope="module")
def detector(backbone):
    return WinClip.from_open_clip(
        backbone.model,
        backbone.tokenizer,
        "bottle",
        scales=(2, 3),
        model_name=backbone.model_name,
        weights="random",
    )


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 96, 96, generator=torch.Generator().manual_seed(seed))


def _window_alone(visual: nn.Module, image: torch.Tensor, patches: list[int]) -> torch.Tensor:
    """One window on its own: class token + its patch tokens (own positional embeddings), batch of one."""
    x = visual.conv1(image[None]).flatten(2).transpose(1, 2)[0]  # [P, width]
    pos = visual.positional_embedding
    seq = torch.cat([(visual.class_embedding + pos[0])[None], x[patches] + pos[[p + 1 for p in patches]]])
    out = run_transformer(visual.transformer, visual.ln_pre(seq[None]))
    return visual.ln_post(out[:, 0]) @ visual.proj


def test_batched_window_embedding_equals_the_window_computed_alone(detector):
    images = _images(2)
    batched = detector.window_embeddings(images)
    grid = detector.grid
    with torch.inference_mode():
        for k, emb in batched.items():
            assert tuple(emb.shape) == (2, (grid[0] - k + 1) * (grid[1] - k + 1), 64)
            for n in range(2):
                for w, (r, c) in enumerate(
                    (r, c) for r in range(grid[0] - k + 1) for c in range(grid[1] - k + 1)
                ):
                    patches = [(r + i) * grid[1] + (c + j) for i in range(k) for j in range(k)]
                    alone = _window_alone(detector.visual, images[n], patches)[0]
                    torch.testing.assert_close(emb[n, w], alone, atol=1e-4, rtol=0)


def test_window_embeddings_differ_across_windows(detector):
    for emb in detector.window_embeddings(_images(1, seed=1)).values():
        e = nn.functional.normalize(emb[0], dim=-1)
        cos = e @ e.T
        off_diagonal = cos[~torch.eye(cos.shape[0], dtype=torch.bool)]
        assert off_diagonal.max() < 0.999, "windows collapsed to one embedding (transformer layout bug?)"
        assert emb[0].std(dim=0).mean() > 1e-3


class _LegacyTransformer(nn.Module):
    """open_clip < 2.26 layout: no batch_first attribute, blocks take [L, N, D]."""

    def __init__(self, batch_first_transformer: nn.Module) -> None:
        super().__init__()
        self.resblocks = batch_first_transformer.resblocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [L, N, D], as open_clip 2.24's Transformer
        for block in self.resblocks:
            x = block(x)
        return x


def test_window_embeddings_use_the_installed_transformer_layout(backbone, detector, monkeypatch):
    images = _images(1, seed=2)
    expected = detector.window_embeddings(images)
    legacy = _LegacyTransformer(detector.visual.transformer)
    for block in legacy.resblocks:  # claim the old layout the way open_clip 2.24 modules do
        monkeypatch.setattr(block.attn, "batch_first", False)
    original = detector.visual.transformer
    detector.visual.transformer = legacy  # (monkeypatch cannot restore nn.Module children)
    try:
        got = detector.window_embeddings(images)
    finally:
        detector.visual.transformer = original
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], atol=1e-5, rtol=0)


def test_full_image_pass_matches_open_clip_encode_image(backbone, detector):
    images = _images(3, seed=3)
    _, image_emb, patches = detector.encode_images(images)
    with torch.inference_mode():
        torch.testing.assert_close(image_emb, backbone.model.encode_image(images), atol=1e-5, rtol=0)
    assert tuple(patches.shape) == (3, 36, 64)


def test_truncated_text_encoding_equals_encode_text(backbone):
    tokens = backbone.tokenizer(["a photo of a flawless metal nut.", "damaged bottle", "a"])
    with torch.inference_mode():
        torch.testing.assert_close(
            encode_text(backbone.model, tokens), backbone.model.encode_text(tokens), atol=1e-5, rtol=0
        )


@pytest.mark.cpu_paths  # bf16 matmuls: oneDNN's where the CPU has bf16 kernels, ATen's reference loop elsewhere
def test_mixed_precision_block_runner_equals_the_transformer(detector):
    from adray.backbones.open_clip import bf16_matmul_weights, run_blocks_mixed, supports_mixed_blocks

    transformer = detector.visual.transformer
    assert supports_mixed_blocks(transformer)
    x = torch.randn(7, 5, 64, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        expected = run_transformer(transformer, x)
        torch.testing.assert_close(
            run_blocks_mixed(transformer, x, torch.float32), expected, atol=1e-5, rtol=0
        )
        low = run_blocks_mixed(bf16_matmul_weights(transformer), x, torch.bfloat16)
    assert low.dtype == torch.float32 and (low - expected).abs().max() < 0.1
