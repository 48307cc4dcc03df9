"""WinCLIP settings (Jeong et al., CVPR 2023): window scales, softmax temperature, the prompt ensemble's
defect words, the runtime precision and chunking, and the WinCLIP+ threshold rates.

A pydantic :class:`adray.config.Config` (a bad value raises a one-line ConfigError, a ``ValueError``).
``temperature`` and ``threshold`` are :data:`adray.config.Real` (an int stays an int), so the settings
hashed into an artifact's version serialise exactly as the dataclass this replaced did: versions of
existing artifacts are unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator

from adray.config import Config, Flag, Real, one_of
from adray.detectors import thresholds as decisions

#: runtime precisions: ``auto`` picks per device (see ``adray.detectors.winclip.model.effective_precision``)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class WinClipConfig(Config):
    """WinCLIP settings; defaults are the paper's (τ from anomalib, see scoring.py).

    ``scales``: window sizes in patches (2 and 3: the paper's 2x2 and 3x3 windows). ``precision`` and
    ``max_tokens`` (tokens per transformer call) change speed and memory, not scores, and stay out of
    the version; ``threshold`` (a hand-set image threshold) and the rates are decisions, not scores.
    """

    class_name: Annotated[str, Flag("--class-name")] = Field(
        description="the object's name, e.g. bottle or metal_nut"
    )
    scales: tuple[int, ...] = (2, 3)
    temperature: Real = 0.07
    defect_types: tuple[str, ...] = ()  # flag: adray winclip --defect-type (repeatable)
    # what runs: effective_precision(); bf16 on CPU: windows only
    precision: Annotated[str, Flag("--precision", choices=PRECISIONS), one_of(PRECISIONS)] = "auto"
    max_tokens: int = 32768  # tokens per transformer call (bounds memory); CPU: at most CPU_CHUNK_TOKENS
    threshold: Real | None = None  # an image threshold given by hand (else the decision's rule)
    # WinCLIP+: the false-positive rates of its leave-one-out thresholds (images, map pixels)
    target_fpr: float = decisions.DEFAULT_TARGET_FPR
    target_pixel_fpr: float = decisions.DEFAULT_TARGET_PIXEL_FPR
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("scales")
    @classmethod
    def _positive_scales(cls, scales: tuple[int, ...]) -> tuple[int, ...]:
        if not scales or min(scales) < 1:
            raise ValueError(f"window scales must be positive patch counts, got {scales}")
        return scales

    @field_validator("target_fpr", "target_pixel_fpr")
    @classmethod
    def _rate(cls, value: float, info: Any) -> float:
        return decisions.check_rate(info.field_name, value)
