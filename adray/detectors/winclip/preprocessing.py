"""WinCLIP's CPU preprocessing without a model: the image size and mean/std come from open_clip's model and
pretrained configs, exactly what the loaded model would report, so the pipeline's decode tasks never load
the CLIP weights. ``WinClip.preprocess`` and this function share :func:`scoring.preprocess_image`.
An artifact's header records the same size and mean/std (:func:`winclip_preprocessing`), so its
preprocessing is rebuilt from the header alone (:func:`winclip_preprocessor_from`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from adray.backbones.open_clip import DEFAULT_MODEL, TINY_CLIP, register_tiny_clip, resolve_pretrained_tag
from adray.detectors.header import Preprocessing
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


def winclip_preprocessing(
    size: tuple[int, ...], mean: tuple[float, ...], std: tuple[float, ...]
) -> Preprocessing:
    """The header's description of WinCLIP's preprocessing: resize (no crop) to ``size`` with bicubic
    antialiasing, clamp to [0, 1], normalise with CLIP's ``mean`` / ``std``."""
    return Preprocessing(
        size=(int(size[0]), int(size[1])),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        resampling="bicubic-antialias",
    )


def winclip_preprocessor_from(
    preprocessing: Preprocessing,
) -> Callable[[Mapping[str, Any]], dict[str, np.ndarray]]:
    """``WinClip.preprocess`` rebuilt from an artifact header's preprocessing (no CLIP model)."""
    if preprocessing.resampling != "bicubic-antialias":
        raise ValueError(f"WinCLIP resizes with bicubic-antialias, not {preprocessing.resampling!r}")
    size, mean, std = preprocessing.size, preprocessing.mean, preprocessing.std

    def preprocess(sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {"image": scoring.preprocess_image(sample["image"], size, mean, std)}

    return preprocess


def winclip_legacy_header(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Header fields of a WinCLIP artifact written before headers (format ``1.0``), from its config:
    the size it recorded and the mean/std of its open_clip model and tag (open_clip's configs, as for
    the by-name preprocessor; no weights read)."""
    cfg = doc["config"]
    spec = cfg["backbone"]
    _, mean, std = clip_input_spec(spec["model_name"], spec["weights"], spec.get("pretrained_tag") or None)
    metadata = doc.get("metadata") or {}
    decision = metadata.get("decision") or {}
    return {
        "categories": [cfg["class_name"]],
        "modalities": ["rgb"],
        "threshold": metadata.get("threshold"),
        "threshold_source": decision.get("source"),
        "pixel_threshold": decision.get("pixel_threshold"),
        "preprocessing": winclip_preprocessing(tuple(cfg["image_size"]), mean, std),
        "unversioned": None,
    }
