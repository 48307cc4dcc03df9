"""WinCLIP's artifact: writing it and reading it back (the detector class is in ``detector.py``).

The artifact holds what WinCLIP derives, not the CLIP weights: ``weights.safetensors`` has the text
embeddings and the WinCLIP+ reference memories (``patch``, ``window_<k>``; format 1.0 named them
``memory.<name>``); ``config.json`` records the settings, the header and the backbone spec (model name,
weights spec, pretrained tag, weights id), and under ``weights_source`` the file that was read
(hub id, file name, snapshot revision, sha256). Loading rebuilds the open_clip model from the spec (shared
per process), checks that the weights still have the recorded id and, when recorded, that the file found
has the same sha256 (``random`` weights are seeded, so they are the same), and scores exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from adray.backbones.open_clip import ClipBackbone, load_clip
from adray.detectors.artifact import VersionRule, load_artifact, save_artifact
from adray.detectors.header import header_fields

#: config keys outside the version: runtime chunking and where the CLIP file was read from
UNVERSIONED = ("max_tokens", "weights_source")
#: format 1.0 stored the reference memories as ``memory.<name>`` but hashed them as ``<name>``
LEGACY_RULE = VersionRule(UNVERSIONED, drop_prefix="memory.")
TEXT_KEY = "text_embeddings"

if TYPE_CHECKING:
    from adray.detectors.winclip.detector import WinClipDetector as WinClip


def save_winclip(detector: WinClip, uri: str) -> None:
    """Write ``detector``'s artifact folder ``uri`` (text embeddings, reference memories, settings).

    Raises ``ValueError`` when the detector wraps an open_clip model of unknown origin (its artifact
    could not rebuild it).
    """
    spec = detector.backbone.spec
    if spec["weights"] == "unknown" or spec["model_name"] == "custom":
        raise ValueError(
            "this WinClip wraps an open_clip model of unknown origin, so its artifact could not rebuild it: "
            "build it with create_detector('winclip', ...) or pass model_name= and weights= to from_open_clip"
        )
    tensors = {TEXT_KEY: detector.text_embeddings, **detector.memory}  # stored as hashed (VersionRule)
    config = detector.describe()
    config["max_tokens"] = detector.config.max_tokens
    config["weights_source"] = detector.backbone.weights_record()
    metadata = {
        "threshold": detector.threshold,
        "decision": detector.decision.to_dict(),  # thresholds and how they were set
        "precision_at_save": detector.config.precision,
    }
    save_artifact(
        uri,
        detector=detector.name,
        version=detector.version,
        config=config,
        tensors=tensors,
        metadata=metadata,
        header=header_fields(detector, detector.preprocessing, UNVERSIONED),
    )


@dataclass
class WinClipArtifact:
    """What a WinCLIP artifact holds, read and checked, before a detector is built from it."""

    uri: str
    backbone: ClipBackbone
    config: dict[str, Any]  # the recorded settings (``WinClip.describe()`` + max_tokens, weights_source)
    threshold: float | None
    decision: dict[str, Any] | None  # metadata.decision; None in artifacts written before it existed
    text_embeddings: torch.Tensor  # [2, D]: normal, anomalous
    memory: dict[str, torch.Tensor]  # WinCLIP+ reference memories by name; empty for zero-shot
    version: str


def read_winclip_artifact(uri: str, device: str | None = None) -> WinClipArtifact:
    """Read the artifact folder ``uri`` and rebuild its CLIP backbone on ``device`` (shared per process).

    Raises ``ValueError`` when the CLIP weights now resolve to another weights id than recorded, or (for
    ``pretrained`` weights with a recorded file hash) the cached file's sha256 differs; and what
    :func:`adray.detectors.artifact.load_artifact` raises.
    """
    doc, tensors, _ = load_artifact(uri, legacy_rule=LEGACY_RULE)
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
    return WinClipArtifact(
        uri=uri,
        backbone=backbone,
        config=cfg,
        threshold=doc.get("metadata", {}).get("threshold"),
        decision=doc.get("metadata", {}).get("decision"),
        text_embeddings=tensors[TEXT_KEY],
        memory={k.removeprefix("memory."): v for k, v in tensors.items() if k != TEXT_KEY},
        version=doc["version"],
    )
