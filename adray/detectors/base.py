"""The Detector contract, its typed output, the registry and the artifact format.

A detector is plain torch: the same object scores a tensor in a notebook and runs inside a Ray actor.
The pipeline only ever talks to this contract:

- ``name``: registry key (``"winclip"``, ``"bgad"``, ``"m3dm"``)
- ``version``: content hash of config + weights (:func:`content_hash`)
- ``modalities``: ``("rgb",)`` or ``("rgb", "xyz")``
- ``categories``: the categories it can score, or ``None`` for any (zero-shot)
- ``threshold``: calibrated decision threshold on ``image_score``, or ``None``
- ``preprocess(sample) -> dict[str, np.ndarray]``: CPU stage; fixed shapes so batches stack
- ``score(batch) -> ScoreBatch``: ``image_score float32[N]``, ``anomaly_map float32[N, H, W]``
- ``save(uri)`` / ``load(uri)``: an artifact folder (``config.json`` + safetensors), never pickle

Scores are batch-invariant: an item's score never depends on the rest of its batch.

A *sample* is a dict with ``"image"`` (uint8 ``[H, W, 3]`` RGB), optionally ``"xyz"`` (float32
``[H, W, 3]`` organised point cloud, zeros where points are missing), ``"category"`` and ``"item_id"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

# The artifact format and the registry live in their own modules; their names stay importable from here.
from adray.backbones.device import pick_device
from adray.detectors.artifact import (
    ARTIFACT_SCHEMA_VERSION,
    CONFIG_FILE,
    WEIGHTS_FILE,
    content_hash,
    load_artifact,
    read_artifact_config,
    save_artifact,
    tensors_from_bytes,
    tensors_to_bytes,
)
from adray.detectors.registry import (
    create_detector,
    create_preprocessor,
    get_detector,
    get_factory,
    list_detectors,
    load_detector,
    register_detector,
    register_factory,
    register_preprocessor,
    registered_detectors,
)

__all__ = [
    "ARTIFACT_SCHEMA_VERSION",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "Detector",
    "ScoreBatch",
    "content_hash",
    "create_detector",
    "create_preprocessor",
    "get_detector",
    "get_factory",
    "list_detectors",
    "load_artifact",
    "load_detector",
    "pick_device",
    "read_artifact_config",
    "register_detector",
    "register_factory",
    "register_preprocessor",
    "registered_detectors",
    "save_artifact",
    "tensors_from_bytes",
    "tensors_to_bytes",
]


@dataclass
class ScoreBatch:
    """What a detector returns for a batch of N items (raises ``ValueError`` on other shapes).

    ``image_score``: float32 ``[N]``, higher = more anomalous (each detector's own scale; compare with its
    ``threshold``). ``anomaly_map``: float32 ``[N, H, W]`` at the detector's input size, same direction.
    """

    image_score: torch.Tensor  # float32 [N]
    anomaly_map: torch.Tensor  # float32 [N, H, W]

    def __post_init__(self) -> None:
        if self.image_score.ndim != 1 or self.anomaly_map.ndim != 3:
            raise ValueError(
                f"ScoreBatch wants image_score [N] and anomaly_map [N, H, W], got "
                f"{tuple(self.image_score.shape)} and {tuple(self.anomaly_map.shape)}"
            )
        if self.image_score.shape[0] != self.anomaly_map.shape[0]:
            raise ValueError("image_score and anomaly_map disagree on the batch size")

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """(``image_score`` float32 ``[N]``, ``anomaly_map`` float32 ``[N, H, W]``) as CPU numpy arrays."""
        return (
            self.image_score.detach().float().cpu().numpy(),
            self.anomaly_map.detach().float().cpu().numpy(),
        )


@runtime_checkable
class Detector(Protocol):
    """What every detector implements; the pipeline, the fit jobs and the benchmarks use nothing else.

    Implementations: :class:`~adray.detectors.winclip.WinClip` (WinCLIP / WinCLIP+, Jeong et al. CVPR
    2023; no official code, the paper checked against anomalib), :class:`~adray.detectors.bgad.BgadDetector`
    (Yao et al. CVPR 2023, official code xcyao00/BGAD) and :class:`~adray.detectors.m3dm.M3DMDetector`
    (Wang et al. CVPR 2023, official code nomewang/M3DM). Each folder's README lists where it departs from
    the paper's code, above all: scores are batch-invariant (BGAD's official code normalises by test-set
    maxima; normalisers are frozen at fit time here). ``tests/unit/test_detector_contract.py`` checks
    every registered detector against this contract.
    """

    #: registry key: ``"winclip"``, ``"bgad"``, ``"m3dm"`` (or a plugin's)
    name: ClassVar[str]
    #: ``("rgb",)`` or ``("rgb", "xyz")``: what :meth:`preprocess` needs in a sample
    modalities: tuple[str, ...]

    @property
    def version(self) -> str:
        """16 hex digits: :func:`content_hash` of the configuration and every tensor that changes scores.

        Equal versions score equally; ``save`` then ``load`` keeps it (a load that does not reproduce the
        recorded version raises ``ValueError``). Runtime choices (device, precision) are not part of it.
        """
        ...

    @property
    def categories(self) -> tuple[str, ...] | None:
        """The categories this detector can score, or ``None`` for any (zero-shot without a class)."""
        ...

    @property
    def threshold(self) -> float | None:
        """Decision threshold on ``image_score`` (same units), or ``None`` when uncalibrated."""
        ...

    def preprocess(self, sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """CPU stage: a sample -> fixed-shape arrays that stack into a batch (no model needed to run it).

        ``sample``: ``"image"`` uint8 ``[H, W, 3]`` RGB of any size; for ``("rgb", "xyz")`` detectors also
        ``"xyz"`` float32 ``[H', W', 3]`` (organised point cloud, zeros where points are missing). Returns
        at least ``"image"``: float32 ``[3, S, S]`` normalised as the backbone was trained (plus ``"xyz"``
        and what else the detector's ``score`` reads, for M3DM). A sample without a needed modality raises
        ``KeyError``.
        """
        ...

    def score(self, batch: Mapping[str, Any]) -> ScoreBatch:
        """Score N preprocessed items: ``batch`` maps each key of :meth:`preprocess` to the ``[N, ...]``
        stack of its arrays (numpy or torch). Returns ``image_score`` ``[N]`` and ``anomaly_map``
        ``[N, S, S]`` (float32, CPU). An item's scores never depend on the rest of the batch."""
        ...

    def save(self, uri: str) -> None:
        """Write the artifact folder ``uri`` (local path or storage URL): ``config.json`` + safetensors
        (:func:`save_artifact`), never pickle. Raises ``ValueError`` when the detector cannot be rebuilt
        from what it would write (e.g. a WinCLIP around a CLIP model of unknown origin)."""
        ...

    @classmethod
    def load(cls, uri: str, device: str | None = None) -> Detector:
        """Read an artifact written by :meth:`save` onto ``device`` (default: CUDA when available).

        Raises ``FileNotFoundError`` when ``config.json`` is missing and ``ValueError`` when a file's
        sha256 or the rebuilt version disagrees with the record."""
        ...
