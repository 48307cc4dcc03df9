"""``BgadDetector``: the fitted BGAD model behind the :mod:`adray.detectors.base` contract."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from adray.backbones.timm_features import input_normalisation
from adray.detectors.artifact import VersionRule
from adray.detectors.base import (
    ScoreBatch,
    content_hash,
    load_artifact,
    pick_device,
    register_detector,
    save_artifact,
)
from adray.detectors.bgad.config import BgadConfig
from adray.detectors.bgad.images import normalise, resize_image
from adray.detectors.bgad.model import BgadModel, Normaliser, flow_tensors, image_scores, load_flow_tensors
from adray.detectors.header import Preprocessing, header_fields
from adray.detectors.registry import Preprocess, register_header
from adray.detectors.thresholds import Decision, DecisionMixin

#: config keys outside the version: the training hyperparameters (provenance; the flows carry their effect)
UNVERSIONED = ("train",)


@register_detector("bgad")
class BgadDetector(DecisionMixin):
    """A BGAD model fitted for one category: frozen backbone, flows, frozen normaliser, threshold.

    ``metadata`` carries provenance that does not change scores (anomaly split, calibration, fit stats);
    ``train_config`` the training hyperparameters. Both are saved with the artifact.
    """

    name: ClassVar[str] = "bgad"
    modalities: tuple[str, ...] = ("rgb",)

    def __init__(
        self,
        model: BgadModel,
        normaliser: Normaliser,
        *,
        threshold: float | None = None,
        train_config: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        device: str | None = None,
    ) -> None:
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.cfg: BgadConfig = model.cfg
        self.normaliser = normaliser
        self._threshold = threshold
        self.train_config = dict(train_config or {})
        self.metadata = dict(metadata or {})
        self._mean, self._std = input_normalisation(model.backbone)
        self._version: str | None = None

    # ------------------------------------------------------------------------------------------- contract
    @property
    def version(self) -> str:
        if self._version is None:
            self._version = content_hash(self._config_doc(), flow_tensors(self.model))
        return self._version

    @property
    def categories(self) -> tuple[str, ...] | None:
        return (self.cfg.category,) if self.cfg.category else None

    @property
    def threshold(self) -> float | None:
        return self._threshold

    @property
    def decision(self) -> Decision:
        """Image and pixel thresholds and their source, as the fit recorded them in
        ``metadata["decision"]`` (``heldout_normals_fpr_<f>``); ``legacy`` (no pixel threshold) for
        artifacts fitted before decisions."""
        return Decision.from_dict(self.metadata.get("decision"), legacy_threshold=self._threshold)

    @property
    def preprocessing(self) -> Preprocessing:
        """What :meth:`preprocess` does, for the artifact header: PIL Lanczos resize to ``image_size``
        square (as the official ``Resize(LANCZOS)``), the backbone's timm mean/std."""
        size = int(self.cfg.image_size)
        return Preprocessing(size=(size, size), mean=self._mean, std=self._std, resampling="lanczos")

    def preprocess(self, sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """uint8 ``[H, W, 3]`` -> ``{"image": float32 [3, S, S]}`` (Lanczos resize, backbone mean/std)."""
        return _preprocess(sample, int(self.cfg.image_size), self._mean, self._std)

    @torch.no_grad()
    def score(self, batch: Mapping[str, Any]) -> ScoreBatch:
        """``{"image": [N, 3, S, S]}`` -> per-item image scores and ``S x S`` anomaly maps."""
        images = torch.as_tensor(np.asarray(batch["image"]), dtype=torch.float32, device=self.device)
        maps = self.model.anomaly_maps(images, self.normaliser)
        return ScoreBatch(image_scores(maps, self.cfg.top_k).float().cpu(), maps.float().cpu())

    # ------------------------------------------------------------------------------------------- artifact
    def _config_doc(self) -> dict[str, Any]:
        return {
            "model": self.cfg.to_dict(),
            "backbone": dict(self.model.backbone_info),
            "channels": list(self.model.channels),
            "normaliser": self.normaliser.to_dict(),
        }

    def save(self, uri: str) -> None:
        config = self._config_doc()
        config["train"] = self.train_config
        metadata = dict(self.metadata)
        metadata["threshold"] = self._threshold
        save_artifact(
            uri,
            detector=self.name,
            version=self.version,
            config=config,
            tensors=flow_tensors(self.model),
            metadata=json.loads(json.dumps(metadata, default=_jsonable)),
            header=header_fields(self, self.preprocessing, UNVERSIONED),
        )

    @classmethod
    def load(cls, uri: str, device: str | None = None) -> BgadDetector:
        doc, weights, _ = load_artifact(uri, legacy_rule=VersionRule(UNVERSIONED))
        config = doc["config"]
        model = BgadModel(BgadConfig.from_dict(config["model"]), backbone_info=config["backbone"])
        load_flow_tensors(model, weights)
        metadata = dict(doc.get("metadata", {}))
        threshold = metadata.pop("threshold", None)
        det = cls(
            model,
            Normaliser.from_dict(config["normaliser"]),
            threshold=None if threshold is None else float(threshold),
            train_config=config.get("train", {}),
            metadata=metadata,
            device=device,
        )
        if det.version != doc["version"]:
            raise ValueError(
                f"BGAD artifact {uri} rebuilt with version {det.version}, but it records {doc['version']}: the "
                "flows or config were changed after saving"
            )
        return det


def _preprocess(
    sample: Mapping[str, Any], size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> dict[str, np.ndarray]:
    return {"image": normalise(resize_image(np.asarray(sample["image"]), size), mean, std)}


def bgad_preprocessor(preprocessing: Preprocessing) -> Preprocess:
    """``BgadDetector.preprocess`` rebuilt from an artifact header's preprocessing (no weights)."""
    if preprocessing.size[0] != preprocessing.size[1] or preprocessing.resampling != "lanczos":
        raise ValueError(f"BGAD preprocesses to a square with Lanczos, not {preprocessing}")
    size, mean, std = preprocessing.size[0], preprocessing.mean, preprocessing.std
    return lambda sample: _preprocess(sample, size, mean, std)


def bgad_legacy_header(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Header fields of a BGAD artifact written before headers (format ``1.0``): its mean/std were not
    recorded, so ``preprocessing`` is ``None`` and it preprocesses from the loaded detector."""
    category = doc["config"]["model"].get("category")
    metadata = doc.get("metadata") or {}
    return {
        "categories": [category] if category else None,
        "modalities": ["rgb"],
        "threshold": metadata.get("threshold"),
        "threshold_source": metadata.get("threshold_source"),
        "preprocessing": None,
        "unversioned": None,
    }


register_header("bgad", bgad_preprocessor, legacy=bgad_legacy_header)


def _jsonable(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, (tuple, set)):
        return list(o)
    return str(o)
