"""WinCLIP's CPU preprocessing without a model: the image size and mean/std come from open_clip's model and
pretrained configs, exactly what the loaded model would report, so the pipeline's decode tasks never load
the CLIP weights. ``WinClip.preprocess`` and this function share :func:`scoring.preprocess_image`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from adray.backbones.open_clip import DEFAULT_MODEL, TINY_CLIP, register_tiny_clip, resolve_pretrained_tag
from adray.detectors.winclip import scoring


def clip_input_spec(
    model_name: str = DEFAULT_MODEL, weights: str = "pretrained", pretrained_tag: str | None = None
) -> tuple[tuple[int, int], tuple[float, ...], tuple[float, ...]]:
    """``(size, mean, std)`` of the model's input, as open_clip would configure the loaded model (no
    ``pretrained_tag``: the model's default tag, as :func:`~adray.backbones.open_clip.load_clip` takes)."""
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    if model_name == TINY_CLIP:
        register_tiny_clip()
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(f"unknown open_clip model {model_name!r}; choose one of open_clip.list_models()")
    size = cfg["vision_cfg"].get("image_size", 224)
    size = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size)
    pre = dict(cfg.get("preprocess_cfg") or {})
    if weights in (None, "", "pretrained"):
        pre.update(
            {
                k: v
                for k, v in open_clip.get_pretrained_cfg(
                    model_name, resolve_pretrained_tag(model_name, pretrained_tag)
                ).items()
                if k in ("mean", "std")
            }
        )
    mean = tuple(float(v) for v in pre.get("mean", OPENAI_DATASET_MEAN))
    std = tuple(float(v) for v in pre.get("std", OPENAI_DATASET_STD))
    return size, mean, std


def winclip_preprocessor(
    *,
    model_name: str = DEFAULT_MODEL,
    weights: str = "pretrained",
    pretrained_tag: str | None = None,
    **_: Any,
) -> Callable[[Mapping[str, Any]], dict[str, np.ndarray]]:
    """The model-free twin of ``create_winclip(...).preprocess`` (registered for the pipeline)."""
    size, mean, std = clip_input_spec(model_name, weights, pretrained_tag)

    def preprocess(sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {"image": scoring.preprocess_image(sample["image"], size, mean, std)}

    return preprocess
