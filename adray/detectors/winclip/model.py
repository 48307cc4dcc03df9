"""WinCLIP and WinCLIP+ (Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation",
CVPR 2023, arXiv 2303.14814) as an adray detector. There is no official code; we follow the paper, checked
against anomalib 2.x and Accurate-WinCLIP (see docs/official-code/winclip.md and README.md here).

One forward per batch: the full-image pass gives the image embedding (image-level language score) and the
patch tokens (WinCLIP+), and its embedded tokens feed every 2x2 and 3x3 window, batched across windows and
images. Deliberate departures: the paper's 22 templates (anomalib has 21), the cleaned class name, window
transformer layout checked for the installed open_clip, vectorised aggregation, bf16 window passes on
CPUs with native bf16 (bf16 weights and matmuls, fp32 residual stream, fused linear+GELU, ~4k-token
chunks; the default on AMX, see :func:`effective_precision`) or bf16 autocast by default on CUDA,
references CLIP-normalised like test images.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from adray.backbones.open_clip import (
    ClipBackbone,
    bf16_matmul_weights,
    check_vit,
    run_transformer,
    supports_mixed_blocks,
)
from adray.detectors import thresholds as decisions
from adray.detectors.base import ScoreBatch
from adray.detectors.header import Preprocessing
from adray.detectors.winclip import artifact, calibration, scoring
from adray.detectors.winclip.config import PRECISIONS, WinClipConfig
from adray.detectors.winclip.preprocessing import winclip_preprocessing
from adray.detectors.winclip.prompts import clean_class_name, text_embeddings
from adray.detectors.winclip.windows import embed_tokens, encode_windows, harmonic_aggregation, window_indices

log = logging.getLogger(__name__)

#: documented largest deviation of bf16 windows from fp32 (ViT-B-16-plus-240; measured 1.7e-5 / 7.6e-5 on
#: an AMX Xeon, README): ``auto`` only picks bf16 where it was measured faster and within these bounds
BF16_TOLERANCE = {"image_score": 1e-4, "anomaly_map": 1e-3}
#: CPU chunk bound: ~4k tokens keep a layer's activations near the caches; measured 1.5-2x faster than
#: 32k-token chunks for the bf16 window passes on a 2-core AMX Xeon (results do not depend on chunking)
CPU_CHUNK_TOKENS = 4096
_TEXT_CACHE: dict[tuple, torch.Tensor] = {}


class WinClip(decisions.DecisionMixin):
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
        self.effective_precision, self.precision_note = effective_precision(config.precision, self.device)
        self.window_dtype, self.full_dtype = _autocast_dtypes(self.effective_precision, self.device)
        if text is None:
            text = _class_text(backbone, config.class_name, config.defect_types)
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
        cls, model: nn.Module, tokenizer: Any, class_name: str, scales: Sequence[int] = (2, 3), **options: Any
    ) -> WinClip:
        """Wrap an already-built open_clip model. ``options``: any :class:`WinClipConfig` field, plus
        ``model_name``/``weights``/``pretrained_tag`` to record how to rebuild it (needed by :meth:`save`)."""
        from adray.backbones.open_clip import DEFAULT_TAG, resolve_pretrained_tag, weights_id_for

        spec = {k: options.pop(k) for k in ("model_name", "weights", "pretrained_tag") if k in options}
        if "model_name" in spec:  # a named model without a tag takes that model's default tag
            spec["pretrained_tag"] = resolve_pretrained_tag(spec["model_name"], spec.get("pretrained_tag"))
        if "weights" in spec and "model_name" in spec:
            weights_id = weights_id_for(spec["model_name"], spec["weights"], spec["pretrained_tag"])
        else:  # unnamed weights: identify them by content (about a second for ViT-B/16+, once)
            weights_id = "state:" + _state_hash(model)
        device = next(model.parameters()).device
        backbone = ClipBackbone(
            model.eval(),
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
        """(embedded tokens ``[N, 1+P, W]``, image embeddings ``[N, D]``, patch tokens ``[N, P, W]``).

        Patch tokens are the last layer's tokens after ``ln_post``, unprojected (anomalib's choice)."""
        images = self._as_images(images)
        tokens = embed_tokens(self.visual, images)
        per_chunk = max(1, self._chunk_tokens // tokens.shape[1])
        embs, patches = [], []
        for start in range(0, tokens.shape[0], per_chunk):
            x = self.visual.ln_pre(tokens[start : start + per_chunk])
            with _autocast(self.device, self.full_dtype):
                x = run_transformer(self.visual.transformer, x)
            x = self.visual.ln_post(x.float())
            embs.append(x[:, 0] @ self.visual.proj.float())
            patches.append(x[:, 1:])
        return tokens, torch.cat(embs), torch.cat(patches)

    @torch.inference_mode()
    def window_embeddings(
        self, images: torch.Tensor, tokens: torch.Tensor | None = None
    ) -> dict[int, torch.Tensor]:
        """``{k: [N, n_windows(k), D]}`` window embeddings for every scale k."""
        if tokens is None:
            tokens = embed_tokens(self.visual, self._as_images(images))
        transformer = self.visual.transformer
        if self.window_dtype == torch.bfloat16 and self.device.type == "cpu":
            transformer = bf16_matmul_weights(transformer)
        mixed = self.device.type == "cpu" and supports_mixed_blocks(transformer)
        return {
            k: encode_windows(
                self.visual, tokens, idx, self._chunk_tokens, transformer, self.window_dtype, mixed
            )
            for k, idx in self.indices.items()
        }

    @property
    def _chunk_tokens(self) -> int:
        """Tokens per transformer call: ``max_tokens``, and on CPU at most :data:`CPU_CHUNK_TOKENS`."""
        if self.device.type == "cpu":
            return min(self.config.max_tokens, CPU_CHUNK_TOKENS)
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
        tokens, image_emb, patches = self.encode_images(images)
        windows = self.window_embeddings(images, tokens)
        per_ref = {"patch": patches, **{f"window_{k}": emb for k, emb in windows.items()}}
        per_ref = {name: nn.functional.normalize(m.float(), dim=-1) for name, m in per_ref.items()}
        self.memory = {name: m.flatten(0, 1) for name, m in per_ref.items()}
        self.decision = calibration.reference_decision(
            self, image_emb, patches, windows, per_ref, tuple(images.shape[-2:])
        )

    @property
    def k_shot(self) -> int:
        return 0 if not self.memory else self.memory["patch"].shape[0] // (self.grid[0] * self.grid[1])

    # ------------------------------------------------------------------------------------ scoring

    @torch.inference_mode()
    def score(self, batch: Mapping[str, Any] | torch.Tensor | np.ndarray) -> ScoreBatch:
        """Image scores ``[N]`` and anomaly maps ``[N, S, S]`` (float32, CPU) for preprocessed images."""
        images = batch["image"] if isinstance(batch, Mapping) else batch
        images = self._as_images(images)
        tokens, image_emb, patches = self.encode_images(images)
        windows = self.window_embeddings(images, tokens)
        scores, maps = self.score_encoded(image_emb, patches, windows, self.memory, tuple(images.shape[-2:]))
        return ScoreBatch(scores, maps)

    def score_encoded(
        self,
        image_emb: torch.Tensor,
        patches: torch.Tensor,
        windows: Mapping[int, torch.Tensor],
        memory: Mapping[str, torch.Tensor],
        size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(image scores ``[N]``, maps ``[N, *size]``), float32 CPU, from encoded images against ``memory``
        (empty: zero-shot); :meth:`score` after encoding, and the leave-one-out calibration's scorer."""
        text = self.text_embeddings
        temp = self.config.temperature
        image_scores = scoring.class_scores(image_emb, text, temp)
        scale_maps = [
            harmonic_aggregation(scoring.class_scores(windows[k], text, temp), self.grid, k)
            for k in self.indices
        ]
        grid_map = scoring.zero_shot_map(image_scores, scale_maps)
        if memory:
            few = [scoring.visual_association(patches, memory["patch"]).reshape(-1, *self.grid)]
            for k in self.indices:
                assoc = scoring.visual_association(windows[k], memory[f"window_{k}"])
                few.append(harmonic_aggregation(assoc, self.grid, k))
            image_scores, grid_map = scoring.fuse_few_shot(image_scores, grid_map, few)
        maps = scoring.upsample(grid_map, size)
        return image_scores.float().cpu(), maps.float().cpu()

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
    def load(cls, uri: str, device: str | None = None, precision: str = "auto") -> WinClip:
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


def _class_text(backbone: ClipBackbone, class_name: str, defect_types: Sequence[str]) -> torch.Tensor:
    """Text embeddings, cached per (weights, model, class words, defect types) for the process."""
    key = (backbone.model_name, backbone.weights_id, clean_class_name(class_name), tuple(defect_types))
    if key not in _TEXT_CACHE:
        _TEXT_CACHE[key] = text_embeddings(backbone.model, backbone.tokenizer, class_name, defect_types).cpu()
    return _TEXT_CACHE[key]


_NOTES_LOGGED: set[str] = set()


def effective_precision(precision: str, device: torch.device) -> tuple[str, str | None]:
    """The precision that runs for the requested one on ``device``, and a note when they differ.

    Returns ``(effective, note)``: ``effective`` is ``"fp32"``, ``"bf16"`` or ``"fp16"``; ``note`` is
    ``None`` when the request runs as asked (``auto`` always does) and is logged once per process
    otherwise. CUDA: ``auto``/``bf16`` -> bf16 autocast (fp16 on GPUs without bf16). CPU (capabilities
    from :func:`adray.cpu.cpu_capabilities`, caps honoured): ``auto`` -> bf16 windows only with AMX, the
    one CPU kind where they were measured faster than fp32 and within :data:`BF16_TOLERANCE`, else fp32;
    ``bf16`` -> bf16 windows with native bf16 (AMX or AVX512_BF16), else fp32 (without it a bf16 matmul
    is far slower than fp32, or has no oneDNN kernel at all). Raises ``ValueError`` for ``fp16`` on CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    note = None
    if device.type == "cuda":
        if precision == "fp32":
            return "fp32", None
        if precision == "fp16" or torch.cuda.is_bf16_supported():
            return ("fp16" if precision == "fp16" else "bf16"), None
        effective = "fp16"
        if precision == "bf16":
            note = "precision bf16: this GPU has no bf16; running fp16 autocast"
    else:
        if precision == "fp16":
            raise ValueError("precision 'fp16' needs CUDA; on CPU use 'bf16' (AMX) or 'fp32'")
        from adray.cpu import cpu_capabilities

        caps = cpu_capabilities()
        if precision == "fp32":
            return "fp32", None
        if precision == "auto":
            return ("bf16" if caps.amx_bf16 else "fp32"), None
        effective = "bf16" if caps.native_bf16 else "fp32"
        if effective == "fp32":
            capped = f", capped by ONEDNN_MAX_CPU_ISA={caps.onednn_max_isa}" if caps.onednn_max_isa else ""
            note = (
                "precision bf16: this CPU has no native bf16 (needs AMX or AVX512_BF16; best here: "
                f"{caps.best}{capped}); running fp32, which is faster here"
            )
    if note is not None and note not in _NOTES_LOGGED:
        _NOTES_LOGGED.add(note)
        log.warning(note)
    return effective, note


def _autocast_dtypes(precision: str, device: torch.device) -> tuple[torch.dtype | None, torch.dtype | None]:
    """(window pass dtype, full-image pass dtype) for an effective precision; None means fp32."""
    if precision == "fp32":
        return None, None
    half = torch.float16 if precision == "fp16" else torch.bfloat16
    if device.type == "cuda":
        return half, half
    # CPU: the full-image pass stays fp32 (it gives the image score); bf16 helps the many short windows.
    return half, None


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _state_hash(model: nn.Module) -> str:
    from adray.detectors.base import content_hash

    return content_hash({}, dict(model.state_dict()))
