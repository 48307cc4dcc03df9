"""The strategy ladder's rules as data: which data each rung needs (``StrategyRules``), overridable with a
JSON file (``adray plan --rules FILE.json``).

The rungs, lowest first, and the papers their defaults follow (``docs/strategy.md`` says more):

- ``zero-shot``: WinCLIP (Jeong et al., CVPR 2023) with prompts only; needs items to score.
- ``k-shot``: WinCLIP+ with K normal reference images; the paper reports K = 1, 2 and 4, so one normal
  image is enough (``min_normals_kshot = 1``).
- ``supervised``: BGAD (Yao et al., CVPR 2023) fits normalizing flows on normals and a few labelled
  anomalies *with masks* (its boundary and push-pull losses work on anomalous pixels); the paper's setting
  is 10 anomalies per category (``min_anomalies_with_masks = 10``).
- ``multimodal``: M3DM (Wang et al., CVPR 2023) fits memory banks on normal RGB + point-cloud pairs; every
  item of the category must have a point cloud (``pointclouds_required = "all"``): a category with point
  clouds for only some items stays image-only.

``ladder`` orders the rungs the plan tries, best first; the first whose needs are met is the plan.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import ConfigDict, Field

from adray import storage
from adray.config import Config
from adray.errors import UserError

#: strategy -> (adray detector name, method, paper); "none": a category nothing can score.
STRATEGIES: dict[str, tuple[str, str, str]] = {
    "multimodal": ("m3dm", "M3DM", "Wang et al., CVPR 2023"),
    "supervised": ("bgad", "BGAD", "Yao et al., CVPR 2023"),
    "k-shot": ("winclip", "WinCLIP+", "Jeong et al., CVPR 2023"),
    "zero-shot": ("winclip", "WinCLIP", "Jeong et al., CVPR 2023"),
    "none": ("", "", ""),
}
#: rank of a strategy on the ladder (higher is further up); the fitted rungs share the top rank
RANK = {"multimodal": 2, "supervised": 2, "k-shot": 1, "zero-shot": 0, "none": -1}
Strategy = Literal["multimodal", "supervised", "k-shot", "zero-shot"]


class StrategyRules(Config):
    """Thresholds of the ladder. Counts are items of one category (readable manifest rows, see
    :mod:`adray.strategy.inventory`). Unknown keys and negative counts raise :class:`ConfigError`."""

    model_config = ConfigDict(title="strategy rules")

    min_normals_kshot: int = Field(
        1, ge=1, description="normal images (train split or labelled normal) WinCLIP+ needs as references"
    )
    kshot_shots: int = Field(
        4, ge=1, description="references WinCLIP+ takes at most (the paper: 1, 2 or 4 shots)"
    )
    min_anomalies_with_masks: int = Field(
        10, ge=1, description="labelled anomalies with a defect mask BGAD needs (the paper's setting: 10)"
    )
    min_normals_supervised: int = Field(
        1, ge=1, description="normal training images BGAD needs besides the anomalies"
    )
    min_normals_multimodal: int = Field(
        1, ge=1, description="normal training items (RGB + point cloud) M3DM's memory banks need"
    )
    pointclouds_required: Literal["all"] = Field(
        "all", description="which items of a category must have a point cloud for M3DM (only 'all')"
    )
    ladder: list[Strategy] = Field(
        default_factory=lambda: ["multimodal", "supervised", "k-shot", "zero-shot"],
        min_length=1,
        description="rungs tried best first; the first whose needs are met is the plan",
    )


def load_rules(uri: str | None) -> StrategyRules:
    """The default rules, or those of a JSON file (any storage URL) whose keys override the defaults.

    Raises :class:`UserError` for a file that is not a JSON object, :class:`ConfigError` for unknown keys
    or bad values, ``FileNotFoundError`` when it does not exist."""
    if uri is None:
        return StrategyRules()
    text = storage.read_text(uri)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UserError(f"rules file {storage.redact_url(uri)} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"rules file {storage.redact_url(uri)} must hold a JSON object of thresholds")
    return StrategyRules.from_dict(data)
