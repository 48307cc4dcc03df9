"""Decisions: a detector's image threshold, its pixel threshold and where both came from.

Every detector states a :class:`Decision` (``detector.decision``): the image threshold (flag an item when
``image_score >= threshold``), the pixel threshold (a map pixel belongs to a defect region when its value
is ``>= pixel_threshold``) and ``source``, a short name of how both were set, stored in every result row as
``threshold_source``:

- ``uncalibrated_prompt_prob_0.5``: zero-shot WinCLIP. Its image score is the CLIP probability of the
  anomalous prompts and its map the harmonic mean of such probabilities (image and windows), so 0.5, the
  point where "anomalous" becomes likelier than "normal", is the rule for both; nothing is calibrated.
- ``reference_loo_fpr_<f>``: WinCLIP+ (k >= 2): each reference image scored against a memory of the other
  k-1 (leave one out); thresholds at a false-positive rate of ``f`` on those scores and map pixels.
- ``uncalibrated_k1_fused_0.5``: WinCLIP+ with one reference: no leave-one-out is possible (its memory
  would be empty), so both thresholds are 0.5 on the fused scale, uncalibrated.
- ``heldout_normals_fpr_<f>`` / ``train_normals_fpr_<f>``: BGAD, at rate ``f`` on held-out normals (or
  the training normals when none were held out); ``heldout_normals_max``: M3DM's image threshold, the
  largest held-out normal score (its pixel threshold at a pixel rate, recorded as ``pixel_source``).
- ``legacy``: an artifact written before decisions were recorded (its image threshold as stored, no
  pixel threshold).

Pure numpy: the detectors and the fit jobs call :func:`pixel_threshold_at_fpr` on calibration maps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from adray.metrics import threshold_at_fpr

LEGACY = "legacy"
#: zero-shot WinCLIP's rule: the anomalous prompts' probability at one half
PROMPT_PROB = 0.5
ZERO_SHOT_SOURCE = "uncalibrated_prompt_prob_0.5"
K1_SOURCE = "uncalibrated_k1_fused_0.5"
#: default rates when a run or fit does not say (images; map pixels)
DEFAULT_TARGET_FPR = 0.05
DEFAULT_TARGET_PIXEL_FPR = 0.01
#: pixels used to place a pixel threshold (an even stride over all calibration pixels beyond this)
MAX_CALIBRATION_PIXELS = 4_000_000


@dataclass(frozen=True)
class Decision:
    """Image and pixel thresholds with their provenance (JSON-able via :meth:`to_dict`).

    ``threshold`` / ``pixel_threshold``: on ``image_score`` / on map values, ``None`` when unknown.
    ``source``: see the module docstring; ``pixel_source`` only when the pixel rule differs from it.
    ``target_fpr`` / ``target_pixel_fpr``: the rates asked for (``None`` for uncalibrated rules);
    ``n_calibration``: items the thresholds were placed on.
    """

    threshold: float | None
    pixel_threshold: float | None
    source: str
    target_fpr: float | None = None
    target_pixel_fpr: float | None = None
    n_calibration: int = 0
    pixel_source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None, legacy_threshold: float | None = None) -> Decision:
        """The decision an artifact recorded; without one (older artifacts) ``legacy`` with
        ``legacy_threshold`` as the image threshold and no pixel threshold."""
        if not doc:
            thr = None if legacy_threshold is None else float(legacy_threshold)
            return cls(threshold=thr, pixel_threshold=None, source=LEGACY)
        known = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
        for key in ("threshold", "pixel_threshold", "target_fpr", "target_pixel_fpr"):
            if known.get(key) is not None:
                known[key] = float(known[key])
        return cls(**known)


def zero_shot_decision() -> Decision:
    """Zero-shot WinCLIP: 0.5 on the anomalous-prompt probability, for the image and the map."""
    return Decision(threshold=PROMPT_PROB, pixel_threshold=PROMPT_PROB, source=ZERO_SHOT_SOURCE)


def source_name(method: str, target_fpr: float) -> str:
    """``"<method>_fpr_<rate>"``, e.g. ``source_name("reference_loo", 0.05) == "reference_loo_fpr_0.05"``."""
    return f"{method}_fpr_{float(target_fpr):g}"


def check_rate(name: str, value: float) -> float:
    """``value`` as a float when it lies in [0, 1]; else ``ValueError`` naming ``name``."""
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return v


def pixel_threshold_at_fpr(
    maps: np.ndarray | Iterable[np.ndarray],
    target_pixel_fpr: float,
    *,
    max_pixels: int = MAX_CALIBRATION_PIXELS,
) -> float:
    """The lowest map value at which at most ``target_pixel_fpr`` of the normal maps' pixels are flagged.

    ``maps``: float ``[N, H, W]`` (or any iterable of maps) of *normal* items. Beyond ``max_pixels`` pixels
    an even stride over all of them is used (deterministic). Flag rule ``value >= threshold``, ties never
    split (:func:`adray.metrics.threshold_at_fpr`). Raises ``ValueError`` without pixels, with a
    non-finite value or a rate outside [0, 1].
    """
    check_rate("target_pixel_fpr", target_pixel_fpr)
    arrays = [
        np.asarray(m, dtype=np.float32).ravel()
        for m in (maps if not isinstance(maps, np.ndarray) else [maps])
    ]
    values = np.concatenate(arrays) if arrays else np.zeros(0, np.float32)
    if values.size == 0:
        raise ValueError("pixel_threshold_at_fpr needs at least one normal map pixel")
    if values.size > max_pixels:
        values = values[:: int(np.ceil(values.size / max_pixels))]
    return threshold_at_fpr(values, target_pixel_fpr)


def calibrate(
    image_scores: np.ndarray,
    maps: np.ndarray,
    *,
    method: str,
    target_fpr: float,
    target_pixel_fpr: float,
) -> Decision:
    """Both thresholds from normal items' scores ``[N]`` and maps ``[N, H, W]`` at the given rates;
    ``source`` = :func:`source_name` ``(method, target_fpr)``."""
    scores = np.asarray(image_scores, dtype=np.float64).ravel()
    return Decision(
        threshold=threshold_at_fpr(scores, check_rate("target_fpr", target_fpr)),
        pixel_threshold=pixel_threshold_at_fpr(maps, target_pixel_fpr),
        source=source_name(method, target_fpr),
        target_fpr=float(target_fpr),
        target_pixel_fpr=float(target_pixel_fpr),
        n_calibration=int(scores.size),
    )


def decision_of(detector: Any) -> Decision:
    """A detector's :class:`Decision`: its ``decision`` attribute when it has one, else (a plugin written
    before decisions) its ``threshold`` with source ``legacy`` and no pixel threshold."""
    decision = getattr(detector, "decision", None)
    if isinstance(decision, Decision):
        return decision
    thr = getattr(detector, "threshold", None)
    return Decision(threshold=None if thr is None else float(thr), pixel_threshold=None, source=LEGACY)


class DecisionMixin:
    """The Detector contract's decision members, read from ``self.decision`` (a :class:`Decision`):
    ``threshold`` (settable by hand: the source becomes ``given``), ``pixel_threshold`` and
    ``threshold_source``."""

    decision: Decision

    @property
    def threshold(self) -> float | None:
        """Image threshold on ``image_score`` (flag when ``>=``), or ``None`` when unknown."""
        return self.decision.threshold

    @threshold.setter
    def threshold(self, value: float | None) -> None:
        thr = None if value is None else float(value)
        self.decision = replace(self.decision, threshold=thr, source="given")

    @property
    def pixel_threshold(self) -> float | None:
        """Threshold on anomaly-map values: a pixel belongs to a defect region when ``>=`` it."""
        return self.decision.pixel_threshold

    @property
    def threshold_source(self) -> str:
        """How the thresholds were set (see :mod:`adray.detectors.thresholds`)."""
        return self.decision.source
