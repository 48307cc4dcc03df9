"""The WinCLIP detector: :class:`WinClipDetector` implements the Detector contract (preprocess, score,
describe / version, save, load) over an open_clip backbone; the maths is in :mod:`.model`, the settings
in :mod:`.config`, the artifact in :mod:`.artifact`, the thresholds in :mod:`.calibration`.

Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation", CVPR 2023 (no official
code; checked against anomalib 2.x and Accurate-WinCLIP, see README.md here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from adray.backbones.open_clip import ClipBackbone, check_vit
from adray.detectors import thresholds as decisions
from adray.detectors.base import ScoreBatch
from adray.detectors.header import Preprocessing
from adray.detectors.winclip import artifact, calibration, model, scoring
from adray.detectors.winclip.config import WinClipConfig
from adray.detectors.winclip.model import state_hash
from adray.detectors.winclip.preprocessing import winclip_preprocessing
from adray.detectors.winclip.prompts import clean_class_name
from adray.detectors.winclip.windows import embed_tokens, window_indices

__all__ = ["WinClip", "WinClipDetector"]


class WinClipDetector(decisions.DecisionMixin):
    """Zero-shot WinCLIP; WinCLIP+ once :meth:`set_reference_images` is called. Implements the Detector contract."""

    name: ClassVar[str] = "winclip"
    modalities: tuple[str, ...] = ("rgb",)

    def __init__(
        self, backbone: ClipBackbone, config: WinClipConfig, text: torch.Tensor | None = None
    ) -> None:
        self.backbone = backbone
        self.config = config
        self.visual = check_vit(backbone.model)
        self.device = backbone.device
        self.grid = tuple(int(g) for g in self.visual.grid_size)
        self.image_size = tuple(int(s) for s in self.visual.image_size)
        self.indices = {k: window_indices(self.grid, k).to(self.device) for k in config.scales}
        #: what runs ("fp32", "bf16", "fp16"), and why it differs from ``config.precision`` (else None)
        self.effective_precision, self.precision_note = model.effective_precision(
            config.precision, self.device
        )
        self.window_dtype, self.full_dtype = model.autocast_dtypes(self.effective_precision, self.device)
        if text is None:
            text = model.class_text(backbone, config.class_name, config.defect_types)
        self.text_embeddings = text.float().to(self.device)  # [2, D]: normal, anomalous
        self.memory: dict[str, torch.Tensor] = {}
        #: thresholds and their source: the zero-shot rule until references calibrate it
        self.decision: decisions.Decision = decisions.zero_shot_decision()
        if config.threshold is not None:
            self.threshold = config.threshold
        self._version: str | None = None

    # ------------------------------------------------------------------------------------ construction

    @classmethod
    def from_open_clip(
        cls, clip: nn.Module, tokenizer: Any, class_name: str, scales: Sequence[int] = (2, 3), **options: Any
    ) -> WinClipDetector:
        """Wrap an already-built open_clip model. ``options``: any :class:`WinClipConfig` field, plus
        ``model_name``/``weights``/``pretrained_tag`` to record how to rebuild it (needed by :meth:`save`)."""
        from adray.backbones.open_clip import DEFAULT_TAG, resolve_pretrained_tag, weights_id_for

        spec = {k: options.pop(k) for k in ("model_name", "weights", "pretrained_tag") if k in options}
        if "model_name" in spec:  # a named model without a tag takes that model's default tag
            spec["pretrained_tag"] = resolve_pretrained_tag(spec["model_name"], spec.get("pretrained_tag"))
        if "weights" in spec and "model_name" in spec:
            weights_id = weights_id_for(spec["model_name"], spec["weights"], spec["pretrained_tag"])
        else:  # unnamed weights: identify them by content (about a second for ViT-B/16+, once)
            weights_id = "state:" + state_hash(clip)
        device = next(clip.parameters()).device
        backbone = ClipBackbone(
            clip.eval(),
            tokenizer,
            spec.get("model_name", "custom"),
            spec.get("weights", "unknown"),
            spec.get("pretrained_tag", DEFAULT_TAG),
            weights_id,
            device,
        )
        return cls(backbone, WinClipConfig(class_name=class_name, scales=tuple(scales), **options))

    # ------------------------------------------------------------------------------------ features

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embedded tokens ``[N, 1+P, W]``, image embeddings ``[N, D]``, patch tokens ``[N, P, W]``)
        (:func:`adray.detectors.winclip.model.encode_images`)."""
        return model.encode_images(self.visual, self._as_images(images), self._chunk_tokens, self.full_dtype)

    @torch.inference_mode()
    def window_embeddings(
        self, images: torch.Tensor, tokens: torch.Tensor | None = None
    ) -> dict[int, torch.Tensor]:
        """``{k: [N, n_windows(k), D]}`` window embeddings for every scale k."""
        if tokens is None:
            tokens = embed_tokens(self.visual, self._as_images(images))
        return model.window_embeddings(
            self.visual, tokens, self.indices, self._chunk_tokens, self.window_dtype, self.device
        )

    def encode(self, images: torch.Tensor) -> model.Encoded:
        """The :class:`~adray.detectors.winclip.model.Encoded` images ``[N, 3, S, S]`` (preprocessed): one
        full-image pass, its embedded tokens reused by every window."""
        tokens, image_emb, patches = self.encode_images(images)
        return model.Encoded(image_emb, patches, self.window_embeddings(images, tokens))

    @property
    def _chunk_tokens(self) -> int:
        """Tokens per transformer call: ``max_tokens``, and on CPU at most :data:`CPU_CHUNK_TOKENS`."""
        if self.device.type == "cpu":
            return min(self.config.max_tokens, model.CPU_CHUNK_TOKENS)
        return self.config.max_tokens

    @torch.inference_mode()
    def set_reference_images(self, images: torch.Tensor | Sequence[np.ndarray] | None) -> None:
        """Build the WinCLIP+ memories from K normal images (``[K, 3, S, S]`` preprocessed tensors, or uint8
        ``[H, W, 3]`` arrays); ``None`` or empty returns to zero-shot. Memories are L2-normalised.

        Also sets :attr:`decision`: for K >= 2 both thresholds from leave-one-out scores of the references
        at ``config.target_fpr`` / ``config.target_pixel_fpr`` (:mod:`.calibration`); K = 1 and zero-shot
        take their uncalibrated rules (:mod:`adray.detectors.thresholds`)."""
        self._version = None
        if images is None or len(images) == 0:
            self.memory = {}
            self.decision = decisions.zero_shot_decision()
            return
        if not isinstance(images, torch.Tensor):
            images = torch.from_numpy(np.stack([self.preprocess({"image": im})["image"] for im in images]))
        images = self._as_images(images)
        encoded = self.encode(images)
        per_ref = encoded.memory_rows()
        self.memory = {name: m.flatten(0, 1) for name, m in per_ref.items()}
        self.decision = calibration.reference_decision(self, encoded, per_ref, tuple(images.shape[-2:]))

    @property
    def k_shot(self) -> int:
        return 0 if not self.memory else self.memory["patch"].shape[0] // (self.grid[0] * self.grid[1])

    # ------------------------------------------------------------------------------------ scoring

    @torch.inference_mode()
    def score(self, batch: Mapping[str, Any] | torch.Tensor | np.ndarray) -> ScoreBatch:
        """Image scores ``[N]`` and anomaly maps ``[N, S, S]`` (float32, CPU) for preprocessed images."""
        images = batch["image"] if isinstance(batch, Mapping) else batch
        images = self._as_images(images)
        scores, maps = self.score_encoded(self.encode(images), self.memory, tuple(images.shape[-2:]))
        return ScoreBatch(scores, maps)

    def score_encoded(
        self, encoded: model.Encoded, memory: Mapping[str, torch.Tensor], size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(image scores ``[N]``, maps ``[N, *size]``), float32 CPU, of N ``encoded`` images against
        ``memory`` (empty: zero-shot); :meth:`score` after encoding, and the leave-one-out calibration's
        scorer (:func:`adray.detectors.winclip.model.score_encoded` with this detector's prompts,
        temperature, grid and scales)."""
        text, temperature = self.text_embeddings, self.config.temperature
        return model.score_encoded(text, temperature, self.grid, tuple(self.indices), encoded, memory, size)

    def _as_images(self, images: Any) -> torch.Tensor:
        x = torch.as_tensor(images)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(
                f"WinCLIP scores preprocessed images [N, 3, {self.image_size[0]}, {self.image_size[1]}], got "
                f"{tuple(x.shape)}; run detector.preprocess({{'image': uint8 HxWx3}}) first"
            )
        return x.to(self.device, torch.float32)

    # ------------------------------------------------------------------------------------ Detector contract

    @property
    def categories(self) -> tuple[str, ...]:
        return (self.config.class_name,)

    @property
    def preprocessing(self) -> Preprocessing:
        """What :meth:`preprocess` does, for the artifact header (see :mod:`.preprocessing`)."""
        cfg = self.backbone.preprocess_cfg
        return winclip_preprocessing(self.image_size, cfg["mean"], cfg["std"])

    def preprocess(self, sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
        cfg = self.backbone.preprocess_cfg
        return {"image": scoring.preprocess_image(sample["image"], self.image_size, cfg["mean"], cfg["std"])}

    def describe(self) -> dict[str, Any]:
        """The configuration recorded in artifacts and hashed into :attr:`version` (precision excluded:
        it is a runtime choice, and ``auto`` differs between CPU and GPU hosts)."""
        cfg = self.config.model_dump()  # python values (tuples), as dataclasses.asdict gave
        cfg.pop("precision")
        cfg.pop("max_tokens")
        for key in ("threshold", "target_fpr", "target_pixel_fpr"):  # decisions, not scores
            cfg.pop(key)
        cfg["class_words"] = clean_class_name(self.config.class_name)
        cfg["backbone"] = self.backbone.spec
        cfg["image_size"] = list(self.image_size)
        cfg["k_shot"] = self.k_shot
        return cfg

    @property
    def version(self) -> str:
        if self._version is None:
            from adray.detectors.base import content_hash

            self._version = content_hash(
                self.describe(), {"text_embeddings": self.text_embeddings, **self.memory}
            )
        return self._version

    def save(self, uri: str) -> None:
        """Write the artifact folder ``uri`` (see :mod:`adray.detectors.winclip.artifact`)."""
        artifact.save_winclip(self, uri)

    @classmethod
    def load(cls, uri: str, device: str | None = None, precision: str = "auto") -> WinClipDetector:
        """The detector saved at ``uri``, on ``device``, scoring exactly as when it was saved.

        Raises ``ValueError`` when the weights or the rebuilt version differ from the record (see
        :func:`~adray.detectors.winclip.artifact.read_winclip_artifact`)."""
        art = artifact.read_winclip_artifact(uri, device)
        cfg = art.config
        config = WinClipConfig(
            class_name=cfg["class_name"],
            scales=tuple(cfg["scales"]),
            temperature=cfg["temperature"],
            defect_types=tuple(cfg["defect_types"]),
            precision=precision,
            max_tokens=int(cfg.get("max_tokens", 32768)),
            extra=dict(cfg.get("extra", {})),
        )
        detector = cls(art.backbone, config, text=art.text_embeddings)
        detector.memory = {k: v.to(detector.device) for k, v in art.memory.items()}
        detector.decision = calibration.loaded_decision(art.decision, art.threshold, detector.k_shot)
        if detector.version != art.version:
            raise ValueError(
                f"artifact {uri} does not reproduce its version {art.version} (got {detector.version})"
            )
        return detector


#: the name this class had before the folder layout gave every detector a ``<Name>Detector``
WinClip = WinClipDetector
