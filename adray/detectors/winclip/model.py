"""The maths of WinCLIP and WinCLIP+ (Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and
Segmentation", CVPR 2023, arXiv 2303.14814) over an open_clip ViT: encoding images and windows, scoring
them against the prompt embeddings and the reference memories, and the precision that runs. The detector
class that implements the contract is :class:`adray.detectors.winclip.detector.WinClipDetector`. There
is no official code; we follow the paper, checked against anomalib 2.x and Accurate-WinCLIP (see
docs/official-code/winclip.md and README.md here).

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
from typing import NamedTuple

import torch
from torch import nn

from adray.backbones.open_clip import (
    ClipBackbone,
    bf16_matmul_weights,
    run_transformer,
    supports_mixed_blocks,
)
from adray.detectors.moved import forward_moved
from adray.detectors.winclip import scoring
from adray.detectors.winclip.config import PRECISIONS, WinClipConfig
from adray.detectors.winclip.prompts import clean_class_name, text_embeddings
from adray.detectors.winclip.windows import embed_tokens, encode_windows, harmonic_aggregation

log = logging.getLogger(__name__)

#: ``WinClipConfig`` is re-exported (its home before :mod:`.config`); ``WinClip`` / ``WinClipDetector``
#: are forwarded by :func:`__getattr__`
__all__ = [
    "BF16_TOLERANCE",
    "CPU_CHUNK_TOKENS",
    "PRECISIONS",
    "Encoded",
    "WinClipConfig",
    "autocast_dtypes",
    "class_text",
    "effective_precision",
    "encode_images",
    "score_encoded",
    "window_embeddings",
]

#: documented largest deviation of bf16 windows from fp32 (ViT-B-16-plus-240; measured 1.7e-5 / 7.6e-5 on
#: an AMX Xeon, README): ``auto`` only picks bf16 where it was measured faster and within these bounds
BF16_TOLERANCE = {"image_score": 1e-4, "anomaly_map": 1e-3}
#: CPU chunk bound: ~4k tokens keep a layer's activations near the caches; measured 1.5-2x faster than
#: 32k-token chunks for the bf16 window passes on a 2-core AMX Xeon (results do not depend on chunking)
CPU_CHUNK_TOKENS = 4096
_TEXT_CACHE: dict[tuple, torch.Tensor] = {}


class Encoded(NamedTuple):
    """What scoring needs of N encoded images: ``image_emb [N, D]`` (full-image embeddings), ``patches
    [N, P, W]`` (last-layer patch tokens, :func:`encode_images`) and ``windows {k: [N, n_k, D]}`` (window
    embeddings per scale, :func:`window_embeddings`)."""

    image_emb: torch.Tensor
    patches: torch.Tensor
    windows: Mapping[int, torch.Tensor]

    def take(self, rows: slice | Sequence[int]) -> Encoded:
        """The encodings of the images ``rows`` only."""
        return Encoded(
            self.image_emb[rows], self.patches[rows], {k: w[rows] for k, w in self.windows.items()}
        )

    def memory_rows(self) -> dict[str, torch.Tensor]:
        """Per image, the rows a WinCLIP+ memory keeps of it, L2-normalised float32: ``{"patch": [N, P, W],
        "window_<k>": [N, n_k, D]}`` (the paper's patch and window memories, §4.2)."""
        rows = {"patch": self.patches, **{f"window_{k}": emb for k, emb in self.windows.items()}}
        return {name: nn.functional.normalize(m.float(), dim=-1) for name, m in rows.items()}


def encode_images(
    visual: nn.Module, images: torch.Tensor, chunk_tokens: int, dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One full-image pass of the CLIP ViT ``visual`` over preprocessed ``images [N, 3, S, S]``, in chunks
    of about ``chunk_tokens`` tokens, under autocast ``dtype`` (None: fp32).

    Returns (embedded tokens ``[N, 1+P, W]``, image embeddings ``[N, D]``, patch tokens ``[N, P, W]``);
    patch tokens are the last layer's tokens after ``ln_post``, unprojected (anomalib's choice)."""
    tokens = embed_tokens(visual, images)
    per_chunk = max(1, chunk_tokens // tokens.shape[1])
    embs, patches = [], []
    for start in range(0, tokens.shape[0], per_chunk):
        x = visual.ln_pre(tokens[start : start + per_chunk])
        with autocast(images.device, dtype):
            x = run_transformer(visual.transformer, x)
        x = visual.ln_post(x.float())
        embs.append(x[:, 0] @ visual.proj.float())
        patches.append(x[:, 1:])
    return tokens, torch.cat(embs), torch.cat(patches)


def window_embeddings(
    visual: nn.Module,
    tokens: torch.Tensor,
    indices: Mapping[int, torch.Tensor],
    chunk_tokens: int,
    dtype: torch.dtype | None,
    device: torch.device,
) -> dict[int, torch.Tensor]:
    """``{k: [N, n_windows(k), D]}``: every k x k window (patch ``indices`` per scale) of the embedded
    ``tokens [N, 1+P, W]`` through the transformer; on CPU with bf16, bf16 matmul weights and the mixed
    fp32-residual blocks where the installed open_clip allows them."""
    transformer = visual.transformer
    if dtype == torch.bfloat16 and device.type == "cpu":
        transformer = bf16_matmul_weights(transformer)
    mixed = device.type == "cpu" and supports_mixed_blocks(transformer)
    return {
        k: encode_windows(visual, tokens, idx, chunk_tokens, transformer, dtype, mixed)
        for k, idx in indices.items()
    }


def score_encoded(
    text: torch.Tensor,
    temperature: float,
    grid: tuple[int, int],
    scales: Sequence[int],
    encoded: Encoded,
    memory: Mapping[str, torch.Tensor],
    size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image scores ``[N]``, maps ``[N, *size]``), float32 CPU, from N ``encoded`` images (window scales
    ``scales``, patch ``grid``).

    ``text [2, D]``: normal / anomalous prompt embeddings; zero-shot: the image's language score and the
    harmonic aggregation of window scores per scale (paper eq. 2-4); with ``memory`` (WinCLIP+: ``patch``
    and ``window_<k>`` reference rows) the visual association maps are fused in (paper §4.2)."""
    image_emb, patches, windows = encoded
    image_scores = scoring.class_scores(image_emb, text, temperature)
    scale_maps = [
        harmonic_aggregation(scoring.class_scores(windows[k], text, temperature), grid, k) for k in scales
    ]
    grid_map = scoring.zero_shot_map(image_scores, scale_maps)
    if memory:
        few = [scoring.visual_association(patches, memory["patch"]).reshape(-1, *grid)]
        for k in scales:
            assoc = scoring.visual_association(windows[k], memory[f"window_{k}"])
            few.append(harmonic_aggregation(assoc, grid, k))
        image_scores, grid_map = scoring.fuse_few_shot(image_scores, grid_map, few)
    maps = scoring.upsample(grid_map, size)
    return image_scores.float().cpu(), maps.float().cpu()


def class_text(backbone: ClipBackbone, class_name: str, defect_types: Sequence[str]) -> torch.Tensor:
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


def autocast_dtypes(precision: str, device: torch.device) -> tuple[torch.dtype | None, torch.dtype | None]:
    """(window pass dtype, full-image pass dtype) for an effective precision; None means fp32."""
    if precision == "fp32":
        return None, None
    half = torch.float16 if precision == "fp16" else torch.bfloat16
    if device.type == "cuda":
        return half, half
    # CPU: the full-image pass stays fp32 (it gives the image score); bf16 helps the many short windows.
    return half, None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def state_hash(model: nn.Module) -> str:
    from adray.detectors.base import content_hash

    return content_hash({}, dict(model.state_dict()))


#: ``WinClip`` / ``WinClipDetector`` (:mod:`.detector`'s ``__all__``), whose home this module was before:
#: forwarded on first use
__getattr__ = forward_moved(__name__, "adray.detectors.winclip.detector")
