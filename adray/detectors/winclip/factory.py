"""WinCLIP by name: the registry factory (``create_detector("winclip", ...)``) and loading an artifact."""

from __future__ import annotations

from typing import Any

import numpy as np

from adray.backbones.open_clip import DEFAULT_MODEL, load_clip
from adray.detectors.winclip.config import WinClipConfig
from adray.detectors.winclip.detector import WinClipDetector


def create_winclip(
    *,
    class_name: str,
    weights: str = "pretrained",
    model_name: str = DEFAULT_MODEL,
    pretrained_tag: str | None = None,
    reference_images: list[np.ndarray] | None = None,
    device: str | None = None,
    **settings: Any,
) -> WinClipDetector:
    """A WinCLIP detector for one category (the registry factory ``create_detector("winclip", ...)``).

    ``settings``: fields of :class:`WinClipConfig` (``scales``, ``precision``, ``defect_types``,
    ``temperature``, ``max_tokens``, ``target_fpr``, ``target_pixel_fpr``, ...), each defaulting to the
    config's own default (stated there once); an unknown or bad one raises
    :class:`adray.errors.ConfigError`. ``reference_images`` (uint8 ``[H, W, 3]`` normal images) make it
    WinCLIP+ (k-shot), its thresholds placed on leave-one-out scores of those references at
    ``target_fpr`` (images) and ``target_pixel_fpr`` (map pixels); see
    :mod:`adray.detectors.winclip.calibration`. The open_clip model is loaded once per process for
    ``(model_name, weights, pretrained_tag, device)``; no ``pretrained_tag`` means the model's default tag
    (``laion400m_e31`` for ViT-B-16-plus-240).
    """
    config = WinClipConfig(class_name=class_name, **settings)  # a bad setting fails before the model loads
    backbone = load_clip(model_name, weights, pretrained_tag, device)
    detector = WinClipDetector(backbone, config)
    if reference_images:
        detector.set_reference_images(reference_images)
    return detector


def load_winclip(uri: str, device: str | None = None, precision: str = "auto") -> WinClipDetector:
    """The WinCLIP detector saved at ``uri`` (:meth:`WinClipDetector.load`); raises what it raises."""
    return WinClipDetector.load(uri, device, precision)
