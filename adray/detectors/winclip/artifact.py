"""WinCLIP construction by name (the registry factory) and its artifact (save/load).

The artifact holds what WinCLIP derives, not the CLIP weights: ``weights.safetensors`` has the text
embeddings and the WinCLIP+ reference memories; ``config.json`` records the settings and the backbone spec
(model name, weights spec, pretrained tag, weights id), and under ``weights_source`` the file that was read
(hub id, file name, snapshot revision, sha256). Loading rebuilds the open_clip model from the spec (shared
per process), checks that the weights still have the recorded id and, when recorded, that the file found
has the same sha256 (``random`` weights are seeded, so they are the same), and scores exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from adray.backbones.open_clip import DEFAULT_MODEL, load_clip
from adray.detectors.base import load_artifact, save_artifact
from adray.detectors.winclip.model import WinClip, WinClipConfig


def create_winclip(
    *,
    class_name: str,
    weights: str = "pretrained",
    model_name: str = DEFAULT_MODEL,
    pretrained_tag: str | None = None,
    scales: Sequence[int] = (2, 3),
    reference_images: list[np.ndarray] | None = None,
    device: str | None = None,
    precision: str = "auto",
    defect_types: Sequence[str] = (),
    temperature: float = 0.07,
    max_tokens: int = 32768,
) -> WinClip:
    """A WinCLIP detector for one category (the registry factory ``create_detector("winclip", ...)``).

    ``reference_images`` (uint8 ``[H, W, 3]`` normal images) make it WinCLIP+ (k-shot). The open_clip
    model is loaded once per process for ``(model_name, weights, pretrained_tag, device)``; no
    ``pretrained_tag`` means the model's default tag (``laion400m_e31`` for ViT-B-16-plus-240).
    """
    backbone = load_clip(model_name, weights, pretrained_tag, device)
    config = WinClipConfig(
        class_name=class_name,
        scales=tuple(scales),
        temperature=temperature,
        defect_types=tuple(defect_types),
        precision=precision,
        max_tokens=max_tokens,
    )
    detector = WinClip(backbone, config)
    if reference_images:
        detector.set_reference_images(reference_images)
    return detector


def save_winclip(detector: WinClip, uri: str) -> None:
    spec = detector.backbone.spec
    if spec["weights"] == "unknown" or spec["model_name"] == "custom":
        raise ValueError(
            "this WinClip wraps an open_clip model of unknown origin, so its artifact could not rebuild it: "
            "build it with create_detector('winclip', ...) or pass model_name= and weights= to from_open_clip"
        )
    tensors = {
        "text_embeddings": detector.text_embeddings,
        **{f"memory.{k}": v for k, v in detector.memory.items()},
    }
    config = detector.describe()
    config["max_tokens"] = detector.config.max_tokens
    config["weights_source"] = detector.backbone.weights_record()
    metadata = {"threshold": detector.threshold, "precision_at_save": detector.config.precision}
    save_artifact(
        uri,
        detector=WinClip.name,
        version=detector.version,
        config=config,
        tensors=tensors,
        metadata=metadata,
    )


def load_winclip(uri: str, device: str | None = None, precision: str = "auto") -> WinClip:
    doc, tensors, _ = load_artifact(uri)
    cfg = doc["config"]
    spec = cfg["backbone"]
    backbone = load_clip(spec["model_name"], spec["weights"], spec["pretrained_tag"], device)
    if backbone.weights_id != spec["weights_id"]:
        raise ValueError(
            f"artifact {uri} was made with CLIP weights {spec['weights_id']}, but {spec['weights']!r} now "
            f"resolves to {backbone.weights_id}; restore the original weights file or rebuild the detector"
        )
    recorded = cfg.get("weights_source", {}).get("sha256")
    if recorded and spec["weights"] == "pretrained":
        found = backbone.weights_record()
        if found.get("sha256") != recorded:
            raise ValueError(
                f"artifact {uri} was made with {cfg['weights_source'].get('hub_id')} file "
                f"{cfg['weights_source'].get('file')} of sha256 {recorded[:12]}..., but the cache now has "
                f"{found.get('file')} of sha256 {str(found.get('sha256'))[:12]}...; stage the recorded "
                "revision in the Hugging Face cache or rebuild the detector"
            )
    config = WinClipConfig(
        class_name=cfg["class_name"],
        scales=tuple(cfg["scales"]),
        temperature=cfg["temperature"],
        defect_types=tuple(cfg["defect_types"]),
        precision=precision,
        max_tokens=int(cfg.get("max_tokens", 32768)),
        threshold=doc.get("metadata", {}).get("threshold"),
        extra=dict(cfg.get("extra", {})),
    )
    detector = WinClip(backbone, config, text=tensors["text_embeddings"])
    detector.memory = {
        k.removeprefix("memory."): v.to(detector.device)
        for k, v in tensors.items()
        if k.startswith("memory.")
    }
    if detector.version != doc["version"]:
        raise ValueError(
            f"artifact {uri} does not reproduce its version {doc['version']} (got {detector.version})"
        )
    return detector
