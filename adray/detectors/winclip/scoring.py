"""WinCLIP / WinCLIP+ scores (Jeong et al., CVPR 2023, Eq. 1, 4, 5) and CLIP input preprocessing.

- Language score (Eq. 1): softmax over {normal, anomalous} of cos(f, g)/τ with τ = 0.07 (anomalib and
  Accurate-WinCLIP; the paper's value is not stated in the sources we have), anomalous probability.
- Zero-shot map: harmonic mean over {image score, aggregated 2x2 map, aggregated 3x3 map} per patch.
- Visual association (Eq. 4): min over a pooled reference memory of (1 - cos)/2.
- Few-shot map: arithmetic mean of the patch, 2x2 and 3x3 association maps; fusion (Eq. 5): the pixel
  map is (M0 + M_few)/2 and the image score (s_img + max M_few)/2, the max taken on the patch grid.
- Preprocessing: resize (no crop) to the model's input size with bicubic antialiasing, clamp to [0, 1],
  normalise with the model's mean/std. Resizing without cropping keeps the map aligned with the whole
  image (open_clip's default crops the centre); this matches anomalib's WinCLIP pre-processor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def class_scores(embeddings: torch.Tensor, text: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Anomalous probability ``[...]`` of embeddings ``[..., D]`` against text embeddings ``[2, D]``."""
    logits = F.normalize(embeddings.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T
    return torch.softmax(logits / temperature, dim=-1)[..., 1]


def visual_association(features: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """min over memory rows of (1 - cos)/2: ``[N, Q]`` from features ``[N, Q, C]`` and memory ``[M, C]``.

    ``memory`` must be L2-normalised (the detector stores it so).
    """
    cos = F.normalize(features.float(), dim=-1) @ memory.float().T  # [N, Q, M]
    return ((1.0 - cos.amax(dim=-1)) / 2.0).clamp_min(0.0)


def zero_shot_map(
    image_scores: torch.Tensor, scale_maps: Sequence[torch.Tensor], eps: float = 1e-12
) -> torch.Tensor:
    """Harmonic mean over {image score broadcast to the grid} ∪ per-scale maps ``[N, h, w]``."""
    reciprocal = 1.0 / image_scores.float().clamp_min(eps)[:, None, None]
    for m in scale_maps:
        reciprocal = reciprocal + 1.0 / m.float().clamp_min(eps)
    return (1 + len(scale_maps)) / reciprocal


def fuse_few_shot(
    image_scores: torch.Tensor, zero_map: torch.Tensor, few_maps: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image score ``[N]``, grid map ``[N, h, w]``) of WinCLIP+ from the language and visual parts."""
    few = torch.stack(list(few_maps)).mean(dim=0)
    score = (image_scores + few.flatten(1).amax(dim=1)) / 2.0
    return score, (zero_map + few) / 2.0


def upsample(grid_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling ``[N, h, w]`` -> ``[N, H, W]`` (align_corners=False, as anomalib)."""
    return F.interpolate(grid_maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def preprocess_image(
    image: np.ndarray, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """uint8 ``[H, W, 3]`` (or ``[H, W]``, ``[H, W, 4]``) -> float32 ``[3, *size]`` CLIP input."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    arr = arr[:, :, :3]
    scale = 255.0 if arr.dtype == np.uint8 else 1.0
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float() / scale
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0.0, 1.0)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return ((x[0] - m) / s).numpy()
