"""How ``adray evaluate`` evaluates: :class:`EvalConfig`, whose fields are also the command's setting flags
(``--pixel-size``, ``--fpr-limit``, ``--target-fpr``, ``--worst``; :func:`adray.config.add_flags`)."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import ConfigDict, Field, model_validator

from adray.config import Config, Flag
from adray.errors import ConfigError
from adray.evaluation.join import EvaluationError


class EvalSettingError(ConfigError, EvaluationError):
    """An evaluation setting out of range: both a :class:`ConfigError` and an :class:`EvaluationError`."""


class EvalConfig(Config):
    """How to evaluate; defaults follow the MVTec AD conventions (AUPRO up to FPR 0.3).

    Raises :class:`EvalSettingError` (an EvaluationError) for out-of-range values (``fpr_limit`` outside
    (0, 1], a target FPR outside [0, 1], a negative ``pixel_size``, ...).
    """

    model_config = ConfigDict(title="evaluation settings")
    error_type: ClassVar[type[Exception]] = EvalSettingError

    pixel_size: Annotated[int, Flag("--pixel-size")] = Field(
        256, description="side of the pixel-metric grid; 0 = ground-truth resolution"
    )
    fpr_limit: Annotated[float, Flag("--fpr-limit")] = Field(
        0.3, description="AUPRO integration limit, in (0, 1] (default 0.3)"
    )
    target_fprs: Annotated[
        tuple[float, ...], Flag("--target-fpr", dest="target_fpr", repeatable=True, parse=tuple)
    ] = Field(
        (0.01, 0.05, 0.1),
        description="false-positive rate to suggest a threshold for (repeatable; default 0.01, 0.05, 0.1)",
    )
    worst: Annotated[int, Flag("--worst")] = Field(
        6, description="false negatives / positives shown per detector"
    )
    curve_points: int = 200
    hist_bins: int = 24
    io_threads: int = 8

    @model_validator(mode="after")
    def _in_range(self) -> EvalConfig:
        if not 0.0 < float(self.fpr_limit) <= 1.0:  # also refuses NaN
            raise ValueError(
                f"--fpr-limit (fpr_limit) must lie in (0, 1], got {self.fpr_limit}: AUPRO integrates the "
                "PRO curve up to this false-positive rate and divides by it (0.3 is the MVTec AD convention)"
            )
        bad = [t for t in self.target_fprs if not 0.0 <= float(t) <= 1.0]
        if bad:
            raise ValueError(f"--target-fpr (target_fprs) values must lie in [0, 1], got {bad}")
        for name, least in (("pixel_size", 0), ("worst", 0), ("curve_points", 2), ("hist_bins", 1),
                            ("io_threads", 1)):  # fmt: skip
            if int(getattr(self, name)) < least:
                flag = f"--{name.replace('_', '-')} ({name})"
                raise ValueError(f"{flag} must be at least {least}, got {getattr(self, name)}")
        return self
