"""BGAD configuration: the model/scoring part (stored in the artifact and hashed into its version) and the
training part (also stored, for provenance). Defaults are the official ones (README / scripts.sh)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from adray.detectors.bgad.losses import LossConfig


@dataclass
class BgadConfig:
    """Backbone, flows and scoring. ``weights`` is ``pretrained | random | PATH``; ``backbone`` is a timm
    name, with or without ``.tag`` (see :func:`adray.backbones.timm_features.resolve_model_name`)."""

    category: str = ""
    # the paper's B6 is timm's old plain "tf_efficientnet_b6", now tag aa_in1k (bare B6 is ns_jft_in1k in timm>=0.9)
    backbone: str = "tf_efficientnet_b6.aa_in1k"
    pretrained_tag: str | None = None  # for a bare backbone name; a tag in the name wins, a different one errs
    weights: str = "pretrained"
    backbone_seed: int = 0  # only for weights="random"
    image_size: int = 256
    out_indices: tuple[int, ...] = (1, 2, 3)
    pos_dim: int = 128
    n_blocks: int = 8
    clamp: float = 1.9
    hidden_ratio: float = 2.0
    permute_soft: bool = True
    flow_seed: int = 0
    top_k: int = 1  # image score = mean of the top-k map pixels (1 = max, the official score)
    score_chunk: int = 65536  # patches per flow call at scoring time (memory bound, no effect on values)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_indices"] = list(self.out_indices)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BgadConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "out_indices" in kw:
            kw["out_indices"] = tuple(kw["out_indices"])
        return cls(**kw)


@dataclass
class BgadTrainConfig:
    """Training schedule, data strategy and calibration. ``num_anomalies=0`` is the unsupervised variant."""

    meta_epochs: int = 25
    sub_epochs: int = 8
    ml_meta_epochs: int = 1  # step 1: maximum likelihood on normal patches only
    warmup_meta_epochs: int = 2
    lr: float = 2e-4
    lr_decay_rate: float = 0.1  # cosine floor = lr * rate**3
    batch_size: int = 32  # images per step
    chunk_size: int = 4096  # patches per optimiser step (the official N_batch)
    num_anomalies: int = 10  # per category, balanced across defect types
    seen_defects: tuple[str, ...] | None = None  # restrict training anomalies to these defect types
    anomaly_repeats: int = 5  # real anomalies appear this many times per epoch (official: 5)
    copy_paste_variants: int = 5  # synthetic copy-paste samples per anomaly (official: 5); 0 disables
    copy_paste_placement: str = "in_place"  # or "random" (flip + move anywhere: textures)
    calibration_fraction: float = 0.1  # train/good held out to calibrate the threshold
    target_fpr: float = 0.01
    seed: int = 0
    loss: LossConfig = field(default_factory=LossConfig)

    @property
    def supervised(self) -> bool:
        return self.num_anomalies > 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seen_defects"] = list(self.seen_defects) if self.seen_defects else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BgadTrainConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if isinstance(kw.get("loss"), dict):
            kw["loss"] = LossConfig(**kw["loss"])
        if kw.get("seen_defects"):
            kw["seen_defects"] = tuple(kw["seen_defects"])
        return cls(**kw)
