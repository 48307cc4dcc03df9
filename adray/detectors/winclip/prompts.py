"""WinCLIP's compositional prompt ensemble (Jeong et al., CVPR 2023, arXiv 2303.14814, Sec. 4.1).

Prompts are state words (7 normal, 4 anomalous) composed with the paper's 22 templates: 154 normal and 88
anomalous prompts. Each class's text embedding is the mean of its prompts' (unnormalised) CLIP text
embeddings, as in anomalib and Accurate-WinCLIP; the cosine similarity normalises the means.

Departures from anomalib (``prompting.py``): the paper's 22 templates instead of anomalib's 21 (which
miss "a cropped photo of a {}." and "a jpeg corrupted photo of a {}." and list one template twice); the
class name is cleaned ("metal_nut" -> "metal nut"); optional defect-specific states ("{} with {} defect").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from adray.backbones.open_clip import encode_text

NORMAL_STATES: tuple[str, ...] = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ANOMALOUS_STATES: tuple[str, ...] = (
    "damaged {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)
#: Defect-specific anomalous states, filled with (object, defect type); optional (paper Sec. 4.1).
DEFECT_STATES: tuple[str, ...] = ("{} with {} defect", "{} with {} flaw", "{} with {} damage")
TEMPLATES: tuple[str, ...] = (
    "a cropped photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)


def clean_class_name(name: str) -> str:
    """A category id as words: ``metal_nut`` -> ``metal nut``, ``pipe-fryum`` -> ``pipe fryum``."""
    cleaned = re.sub(r"[_\-]+", " ", str(name)).strip()
    cleaned = re.sub(r"\s+", " ", cleaned)
    if not cleaned:
        raise ValueError(
            f"class name {name!r} is empty after cleaning; pass the object's name, e.g. 'bottle'"
        )
    return cleaned


def build_prompts(class_name: str, defect_types: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(normal prompts, anomalous prompts) for a class: 7x22 and (4 + 3 per defect type)x22."""
    obj = clean_class_name(class_name)
    normal_states = [state.format(obj) for state in NORMAL_STATES]
    anomalous_states = [state.format(obj) for state in ANOMALOUS_STATES]
    for defect in defect_types:
        words = clean_class_name(defect)
        anomalous_states += [state.format(obj, words) for state in DEFECT_STATES]
    normal = [template.format(state) for state in normal_states for template in TEMPLATES]
    anomalous = [template.format(state) for state in anomalous_states for template in TEMPLATES]
    return normal, anomalous


@torch.inference_mode()
def text_embeddings(
    model: nn.Module,
    tokenizer: Any,
    class_name: str,
    defect_types: Sequence[str] = (),
    batch_size: int = 128,
) -> torch.Tensor:
    """``[2, D]`` float32: mean text embedding of the normal (row 0) and anomalous (row 1) prompts."""
    device = next(model.parameters()).device
    rows = []
    for prompts in build_prompts(class_name, defect_types):
        tokens = tokenizer(prompts).to(device)
        parts = [
            encode_text(model, tokens[i : i + batch_size]).float() for i in range(0, len(prompts), batch_size)
        ]
        rows.append(torch.cat(parts).mean(dim=0))
    return torch.stack(rows)
