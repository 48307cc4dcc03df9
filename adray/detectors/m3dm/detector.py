"""The M3DM detector (Wang et al., "Multimodal Industrial Anomaly Detection via Hybrid Fusion", CVPR 2023):
:class:`M3DMDetector` implements the Detector contract (preprocess, score, version, save, load, and the
model-free preprocessor from an artifact header); the maths is in :mod:`.model` and the modules it names.

RGB (DINO ViT) and point (Point-MAE) patch features, optionally fused by UFF, each scored against its
own memory bank (PatchCore); with more than one bank, one-class SVMs fuse the image scores and the
pixel maps (DLF). Plain torch behind the :mod:`adray.detectors.base` contract; built by
:func:`adray.detectors.m3dm.fit.build_detector` from features (:mod:`adray.train.m3dm` runs that on Ray).
Deliberate departures from the official code are listed in each module's docstring.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from adray.detectors import base
from adray.detectors.artifact import VersionRule
from adray.detectors.base import ScoreBatch, register_detector
from adray.detectors.header import Preprocessing, header_fields
from adray.detectors.m3dm.banks import MemoryBank, score_grids
from adray.detectors.m3dm.config import M3DMConfig
from adray.detectors.m3dm.decision import OneClassSVMParams
from adray.detectors.m3dm.features import FeatureExtractor, prepare_sample
from adray.detectors.m3dm.fusion import FeatureFusion
from adray.detectors.m3dm.model import backbone_fingerprint, fused_grid
from adray.detectors.m3dm.preprocessing import PreprocessConfig
from adray.detectors.registry import Preprocess, register_header
from adray.detectors.thresholds import Decision, DecisionMixin

BANKS_FILE = "banks.safetensors"
DLF_FILE = "dlf.safetensors"


class BackboneMismatchError(RuntimeError):
    """A rebuilt backbone differs from the one the artifact was built with."""


@register_detector("m3dm")
class M3DMDetector(DecisionMixin):
    """M3DM over an RGB image and its point cloud (mode ``rgb`` needs the image only).

    ``score`` gives image scores ``[N]`` and anomaly maps ``[N, S, S]`` (S = ``config.img_size``), the
    banks' nearest-neighbour distances (one bank), or their DLF one-class-SVM fusion (several banks).
    Built by :func:`adray.detectors.m3dm.fit.build_detector`; ``load`` raises
    :class:`BackboneMismatchError` when the rebuilt backbones differ from the recorded ones.
    """

    name: ClassVar[str] = "m3dm"

    def __init__(
        self,
        config: M3DMConfig,
        extractor: FeatureExtractor | None = None,
        fusion: FeatureFusion | None = None,
        banks: Mapping[str, MemoryBank] | None = None,
        image_svm: OneClassSVMParams | None = None,
        pixel_svm: OneClassSVMParams | None = None,
        threshold: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        device: str | None = None,
    ) -> None:
        self.config = config
        self.device = base.pick_device(device)
        self.extractor = (extractor or FeatureExtractor(config)).to(self.device).eval()
        self.fusion = fusion.eval() if fusion is not None else None
        self.banks = dict(banks or {})
        self.image_svm = image_svm
        self.pixel_svm = pixel_svm
        self._threshold = threshold
        self.metadata = dict(metadata or {})
        self.modalities = ("rgb",) if config.mode == "rgb" else ("rgb", "xyz")
        self._version: str | None = None

    # ------------------------------------------------------------------------------------ contract

    @property
    def categories(self) -> tuple[str, ...]:
        return (self.config.category,)

    @property
    def threshold(self) -> float | None:
        return self._threshold

    @property
    def decision(self) -> Decision:
        """Image and pixel thresholds and their source as the build recorded them in
        ``metadata["decision"]`` (:func:`adray.detectors.m3dm.fit.heldout_decision`); ``legacy`` (no
        pixel threshold) for artifacts built before decisions."""
        return Decision.from_dict(self.metadata.get("decision"), legacy_threshold=self._threshold)

    @property
    def version(self) -> str:
        if self._version is None:
            self._version = base.content_hash(self._config_doc(), self._tensors())
        return self._version

    @property
    def preprocessing(self) -> Preprocessing:
        """What :meth:`preprocess` does, for the artifact header (see :func:`m3dm_preprocessor`)."""
        mean, std = self.extractor.mean_std
        size = int(self.config.img_size)
        params = {
            "mode": self.config.mode,
            "scan": self.config.preprocess.to_dict(),
            "xyz_resampling": "nearest",
        }
        return Preprocessing(
            size=(size, size), mean=mean, std=std, resampling="bicubic-antialias", params=params
        )

    def preprocess(self, sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
        mean, std = self.extractor.mean_std
        return prepare_sample(sample, self.config, mean, std)

    @torch.no_grad()
    def score(self, batch: Mapping[str, Any]) -> ScoreBatch:
        if not self.banks:
            raise RuntimeError("this M3DM detector has no memory banks yet; build it with adray build-m3dm")
        return self.combine(self.bank_scores(self.extractor(batch)))

    # ------------------------------------------------------------------------------------ pieces

    def bank_grids(self, raw: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-bank feature grids from raw extractor grids: ``rgb``, ``xyz`` and the UFF ``fused`` grid."""
        grids: dict[str, torch.Tensor] = {}
        if "rgb" in raw and self.config.uses_rgb:
            grids["rgb"] = raw["rgb"].float().cpu()
        if "xyz" in raw and self.config.uses_xyz:
            grids["xyz"] = raw["xyz"].float().cpu()
        if self.config.uses_fusion:
            if self.fusion is None:
                raise RuntimeError("mode rgb+xyz with fusion needs a trained UFF module")
            grids["fused"] = fused_grid(self.fusion, grids["xyz"], grids["rgb"])
        return grids

    def bank_scores(self, raw: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        grids = self.bank_grids(raw)
        size, sigma = self.config.img_size, self.config.map_sigma
        return {
            name: score_grids(self.banks[name], grids[name], size, sigma) for name in self.config.bank_names
        }

    def combine(self, scores: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> ScoreBatch:
        names = self.config.bank_names
        if len(names) == 1:
            image, maps = scores[names[0]]
            return ScoreBatch(image.float(), maps.float())
        if self.image_svm is None or self.pixel_svm is None:
            raise RuntimeError("a multi-bank M3DM detector needs its decision-layer fusion SVMs")
        image = self.image_svm.anomaly_score(torch.stack([scores[n][0] for n in names], dim=1))
        maps = torch.stack([scores[n][1] for n in names], dim=-1)
        pixel = self.pixel_svm.anomaly_score(maps.reshape(-1, len(names))).view(maps.shape[:-1])
        return ScoreBatch(image.float(), pixel.float())

    # ------------------------------------------------------------------------------------ artifact

    def _config_doc(self) -> dict[str, Any]:
        return {
            "m3dm": self.config.to_dict(),
            "backbones": {
                "rgb": self.extractor.rgb.record if self.extractor.rgb is not None else None,
                "point": self.extractor.point_tag,
            },
            "backbone_fingerprint": backbone_fingerprint(self.extractor),
            "threshold": self._threshold,
        }

    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"uff.{k}": v for k, v in (self.fusion.state_dict() if self.fusion else {}).items()}
        for bank in self.banks.values():
            tensors.update(bank.to_tensors())
        for prefix, svm in (("image_svm", self.image_svm), ("pixel_svm", self.pixel_svm)):
            if svm is not None:
                tensors.update(svm.to_tensors(prefix))
        return tensors

    def save(self, uri: str) -> None:
        tensors = self._tensors()
        weights = {k: v for k, v in tensors.items() if k.startswith("uff.")}
        banks = {k: v for k, v in tensors.items() if k.split(".")[0] in ("rgb", "xyz", "fused")}
        dlf = {k: v for k, v in tensors.items() if k.split(".")[0] in ("image_svm", "pixel_svm")}
        extra = {BANKS_FILE: banks}
        if dlf:
            extra[DLF_FILE] = dlf
        base.save_artifact(
            uri,
            detector=self.name,
            version=self.version,
            config=self._config_doc(),
            tensors=weights,
            extra_files=extra,
            metadata=self.metadata,
            header=header_fields(self, self.preprocessing),
        )

    @classmethod
    def load(cls, uri: str, device: str | None = None) -> M3DMDetector:
        doc, weights, groups = base.load_artifact(uri, legacy_rule=VersionRule())  # all config, all tensors
        cfg_doc = doc["config"]
        config = M3DMConfig.from_dict(cfg_doc["m3dm"])
        extractor = FeatureExtractor(config)
        found = backbone_fingerprint(extractor)
        if found != cfg_doc.get("backbone_fingerprint"):
            raise BackboneMismatchError(
                f"the backbones rebuilt for {uri} ({cfg_doc.get('backbones')}) differ from those it was built "
                f"with (fingerprint {found} != {cfg_doc.get('backbone_fingerprint')}); same weights file, "
                "pretrained tag and library versions are needed"
            )
        fusion = None
        if config.uses_fusion:
            fusion = FeatureFusion(config.uff)
            fusion.load_state_dict({k[len("uff.") :]: v for k, v in weights.items()})
        tensors = {**groups.get(BANKS_FILE, {}), **groups.get(DLF_FILE, {})}
        banks = {n: MemoryBank.from_tensors(n, tensors, config.knn_backend) for n in config.bank_names}
        svms = [
            OneClassSVMParams.from_tensors(p, tensors, config.dlf_kernel)
            if f"{p}.scalars" in tensors
            else None
            for p in ("image_svm", "pixel_svm")
        ]
        det = cls(
            config,
            extractor,
            fusion,
            banks,
            svms[0],
            svms[1],
            cfg_doc.get("threshold"),
            doc.get("metadata"),
            device,
        )
        det._version = doc["version"]
        return det


def m3dm_preprocessor(preprocessing: Preprocessing) -> Preprocess:
    """``M3DMDetector.preprocess`` rebuilt from an artifact header's preprocessing (no backbones): the
    scan cleaned by ``params["scan"]`` (:class:`PreprocessConfig`), both modalities resized to ``size``
    (RGB bicubic with antialiasing, xyz nearest), RGB normalised with ``mean`` / ``std``."""
    params = preprocessing.params
    config = M3DMConfig(
        category="",
        mode=params["mode"],
        img_size=int(preprocessing.size[0]),
        preprocess=PreprocessConfig(**params["scan"]),
    )
    mean, std = preprocessing.mean, preprocessing.std
    return lambda sample: prepare_sample(sample, config, mean, std)


def m3dm_legacy_header(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Header fields of an M3DM artifact written before headers (format ``1.0``): its RGB mean/std were
    not recorded, so ``preprocessing`` is ``None`` and it preprocesses from the loaded detector."""
    cfg = doc["config"]
    mode = cfg["m3dm"].get("mode", "rgb+xyz")
    return {
        "categories": [cfg["m3dm"]["category"]],
        "modalities": ["rgb"] if mode == "rgb" else ["rgb", "xyz"],
        "threshold": cfg.get("threshold"),
        "preprocessing": None,
        "unversioned": None,
    }


register_header("m3dm", m3dm_preprocessor, legacy=m3dm_legacy_header)


__all__ = [
    "BANKS_FILE",
    "DLF_FILE",
    "BackboneMismatchError",
    "M3DMDetector",
    "m3dm_legacy_header",
    "m3dm_preprocessor",
]
