"""WinCLIP+ thresholds from its own reference images, by leaving one out.

A k-shot WinCLIP has no held-out normals: its k reference images are all it knows about the category.
Each reference j is scored exactly as a test image would be (:meth:`WinClip.score_encoded`: language
score, zero-shot map, visual association, fusion), against a memory built from the *other* k-1
references. Those k scores and maps are normal-item scores of a detector one reference poorer, so the
thresholds placed on them (:func:`adray.detectors.thresholds.calibrate` at ``config.target_fpr`` and
``config.target_pixel_fpr``) lean cautious: a normal test item meets a memory of k references, one more
than each reference met here, so its visual association tends to be a little lower. With k images the
image threshold can only take k distinct values; at ``target_fpr < 1/k`` it lies just above the largest
leave-one-out score. The paper (Jeong et al., CVPR 2023) reports threshold-free metrics only and
anomalib's WinCLIP leaves thresholds to a separate normalisation step, so this is our rule.

With one reference there is nothing to leave it out against (its memory would be empty), so the
decision is the uncalibrated ``uncalibrated_k1_fused_0.5``: 0.5 on the fused scale for image and pixels.
The fused image score is the mean of the anomalous-prompt probability and the largest visual
association, ``(1 - cos) / 2``; 0.5 asks, for instance, for a prompt probability of 0.6 with a patch at
cosine 0.2 from every reference patch, which is conservative. Pass two or more references to calibrate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from adray.detectors.thresholds import (
    K1_SOURCE,
    LEGACY,
    PROMPT_PROB,
    Decision,
    calibrate,
    zero_shot_decision,
)

if TYPE_CHECKING:
    from adray.detectors.winclip.detector import WinClipDetector as WinClip
    from adray.detectors.winclip.model import Encoded

#: the ``method`` of :func:`adray.detectors.thresholds.source_name`: ``reference_loo_fpr_<rate>``
METHOD = "reference_loo"


def leave_one_out_scores(
    detector: WinClip, encoded: Encoded, per_ref: Mapping[str, torch.Tensor], size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(scores ``[K]``, maps ``[K, *size]``) of each of K >= 2 references against the other K-1.

    ``encoded``: the K references' encodings (:meth:`WinClip.encode`); ``per_ref``: their memory rows
    (:meth:`Encoded.memory_rows <adray.detectors.winclip.model.Encoded.memory_rows>`: ``{"patch":
    [K, P, C], "window_<k>": [K, n_k, D]}``). Raises ``ValueError`` for fewer than two references.
    """
    k = int(encoded.image_emb.shape[0])
    if k < 2:
        raise ValueError("leave-one-out needs at least two reference images")
    scores, maps = [], []
    for j in range(k):
        others = [i for i in range(k) if i != j]
        memory = {name: rows[others].flatten(0, 1) for name, rows in per_ref.items()}
        s, m = detector.score_encoded(encoded.take(slice(j, j + 1)), memory, size)
        scores.append(s.numpy())
        maps.append(m.numpy())
    return np.concatenate(scores), np.concatenate(maps)


def reference_decision(
    detector: WinClip, encoded: Encoded, per_ref: Mapping[str, torch.Tensor], size: tuple[int, int]
) -> Decision:
    """The WinCLIP+ decision for K references (arguments as :func:`leave_one_out_scores`): leave-one-out
    thresholds at the detector's target rates for K >= 2, the uncalibrated K = 1 rule otherwise."""
    if int(encoded.image_emb.shape[0]) < 2:
        return Decision(threshold=PROMPT_PROB, pixel_threshold=PROMPT_PROB, source=K1_SOURCE)
    scores, maps = leave_one_out_scores(detector, encoded, per_ref, size)
    cfg = detector.config
    return calibrate(
        scores, maps, method=METHOD, target_fpr=cfg.target_fpr, target_pixel_fpr=cfg.target_pixel_fpr
    )


def loaded_decision(doc: Mapping[str, Any] | None, threshold: float | None, k_shot: int) -> Decision:
    """The decision of a loaded artifact: the recorded one; without a record (written before decisions
    were stored) the zero-shot rule for a zero-shot artifact (a rule, not data: the same version would get
    it when built fresh), else ``legacy`` with the stored threshold and no pixel threshold."""
    if doc:
        return Decision.from_dict(doc)
    if k_shot == 0 and threshold is None:
        return zero_shot_decision()
    return Decision(threshold=threshold, pixel_threshold=None, source=LEGACY)
