"""BGAD configuration: the model/scoring part (stored in the artifact and hashed into its version) and the
training part (also stored, for provenance). Defaults are the official ones (README / scripts.sh).

Both are pydantic models (:class:`adray.config.Config`): a bad value raises a one-line ConfigError.
``from_dict`` ignores keys it does not know, so artifacts and checkpoints written by other versions load.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from adray.config import Config, Flag, Real
from adray.detectors.bgad.losses import LossConfig
from adray.detectors.thresholds import DEFAULT_TARGET_PIXEL_FPR


class BgadConfig(Config):
    """Backbone, flows and scoring. ``weights`` is ``pretrained | random | PATH``; ``backbone`` is a timm
    name, with or without ``.tag`` (see :func:`adray.backbones.timm_features.resolve_model_name`)."""

    category: str = ""
    # the paper's B6 is timm's old plain "tf_efficientnet_b6", now tag aa_in1k (bare B6 is ns_jft_in1k in timm>=0.9)
    backbone: Annotated[str, Flag("--backbone")] = Field(
        "tf_efficientnet_b6.aa_in1k",
        description="any timm model name, optionally name.tag; a bare name takes timm's default tag for it "
        "(default %(default)s)",
    )
    # for a bare backbone name; a tag in the name wins, a different one errs
    pretrained_tag: Annotated[str | None, Flag("--pretrained-tag")] = Field(
        None,
        description="timm weight tag for a bare --backbone name (default: none, i.e. the tag in the name or "
        "timm's default for a bare name); one that differs from a tag in the name is an error",
    )
    weights: Annotated[str, Flag("--weights")] = Field(
        "pretrained", description="pretrained | random (tests) | PATH to a weights file"
    )
    backbone_seed: int = 0  # only for weights="random"
    image_size: int = 256
    out_indices: tuple[int, ...] = (1, 2, 3)
    pos_dim: int = 128
    n_blocks: Annotated[int, Flag("--flow-blocks", dest="flow_blocks")] = Field(
        8, description="AllInOneBlocks per flow"
    )
    clamp: Real = 1.9  # Real: an int stays an int in the versioned document
    hidden_ratio: Real = 2.0
    permute_soft: bool = True
    flow_seed: int = 0
    # image score = mean of the top-k map pixels (1 = max, the official score)
    top_k: Annotated[int, Flag("--top-k")] = Field(1, description="image score = mean of top-k map pixels")
    score_chunk: int = 65536  # patches per flow call at scoring time (memory bound, no effect on values)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BgadConfig:
        """The config of a saved artifact; keys this version does not know are ignored."""
        return cls(**{k: v for k, v in d.items() if k in cls.model_fields})


class BgadTrainConfig(Config):
    """Training schedule, data strategy and calibration. ``num_anomalies=0`` is the unsupervised variant."""

    meta_epochs: Annotated[int, Flag("--epochs", dest="epochs")] = Field(
        25, description="meta-epochs (checkpoint after each)"
    )
    sub_epochs: Annotated[int, Flag("--sub-epochs")] = Field(
        8, description="passes over the data per meta-epoch"
    )
    # step 1: maximum likelihood on normal patches only
    ml_meta_epochs: Annotated[int, Flag("--ml-epochs", dest="ml_epochs")] = Field(
        1, description="meta-epochs of step 1 (maximum likelihood on normals) before push-pull"
    )
    warmup_meta_epochs: int = 2
    lr: Annotated[float, Flag("--lr")] = 2e-4
    lr_decay_rate: float = 0.1  # cosine floor = lr * rate**3
    batch_size: Annotated[int, Flag("--batch-size")] = Field(
        32, description="images per global batch (all workers together)"
    )
    # patches per optimiser step (the official N_batch)
    chunk_size: Annotated[int, Flag("--chunk-size")] = Field(
        4096, description="patches per optimiser step (global: split across workers)"
    )
    # per category, balanced across defect types
    num_anomalies: Annotated[int, Flag("--num-anomalies")] = Field(
        10,
        description="labelled anomalies per category taken from the test split (balanced across defect "
        "types, seeded, recorded in the artifact, to be excluded from evaluation); 0 = unsupervised "
        "variant (step 1 only) (default %(default)s)",
    )
    seen_defects: tuple[str, ...] | None = None  # restrict training anomalies to these defect types
    anomaly_repeats: Annotated[int, Flag("--anomaly-repeats")] = Field(
        5, description="times each real anomaly is seen per sub-epoch (default %(default)s)"
    )  # official: 5
    copy_paste_variants: Annotated[int, Flag("--copy-paste-variants")] = Field(
        5, description="synthetic copy-paste samples per anomaly, 0 disables (default %(default)s)"
    )  # official: 5
    copy_paste_placement: str = "in_place"  # or "random" (flip + move anywhere: textures)
    calibration_fraction: Annotated[float, Flag("--calibration-fraction")] = Field(
        0.1, description="train/good fraction held out to calibrate the threshold (default %(default)s)"
    )
    target_fpr: Annotated[float, Flag("--target-fpr")] = Field(
        0.01,
        description="false-positive rate of the stored threshold on held-out normals (default %(default)s)",
    )
    target_pixel_fpr: Annotated[float, Flag("--target-pixel-fpr")] = Field(
        DEFAULT_TARGET_PIXEL_FPR,
        description="false-positive rate of the stored pixel threshold (defect regions) over the held-out "
        "normals' map pixels (default %(default)s)",
    )
    # the flag also seeds the flows and a random backbone (FLAG_FIELDS)
    seed: Annotated[int, Flag("--seed")] = 0
    loss: LossConfig = Field(default_factory=LossConfig)

    @property
    def supervised(self) -> bool:
        return self.num_anomalies > 0

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["seen_defects"] = list(self.seen_defects) if self.seen_defects else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BgadTrainConfig:
        """The training config of a checkpoint or artifact; keys this version does not know are ignored
        (also inside ``loss``)."""
        kw = {k: v for k, v in d.items() if k in cls.model_fields}
        if isinstance(kw.get("loss"), dict):
            kw["loss"] = {k: v for k, v in kw["loss"].items() if k in LossConfig.model_fields}
        return cls(**kw)


#: Fit flags (argparse destinations) -> the config fields each sets, as ``(part, field)`` with part
#: ``model`` (BgadConfig), ``train`` (BgadTrainConfig) or ``loss`` (its LossConfig). ``adray fit-bgad``
#: has all of them; the BGAD benchmarks a subset.
FLAG_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "category": (("model", "category"),),
    "backbone": (("model", "backbone"),),
    "pretrained_tag": (("model", "pretrained_tag"),),
    "weights": (("model", "weights"),),
    "image_size": (("model", "image_size"),),
    "out_indices": (("model", "out_indices"),),
    "flow_blocks": (("model", "n_blocks"),),
    "top_k": (("model", "top_k"),),
    "seed": (("model", "flow_seed"), ("model", "backbone_seed"), ("train", "seed")),
    "epochs": (("train", "meta_epochs"),),
    "sub_epochs": (("train", "sub_epochs"),),
    "ml_epochs": (("train", "ml_meta_epochs"),),
    "batch_size": (("train", "batch_size"),),
    "chunk_size": (("train", "chunk_size"),),
    "lr": (("train", "lr"),),
    "num_anomalies": (("train", "num_anomalies"),),
    "seen_defects": (("train", "seen_defects"),),
    "anomaly_repeats": (("train", "anomaly_repeats"),),
    "copy_paste_variants": (("train", "copy_paste_variants"),),
    "calibration_fraction": (("train", "calibration_fraction"),),
    "target_fpr": (("train", "target_fpr"),),
    "target_pixel_fpr": (("train", "target_pixel_fpr"),),
    "beta": (("loss", "beta"),),
    "tau": (("loss", "tau"),),
    "no_focal": (("loss", "focal_weighting"),),
}


def _names(value: Any) -> tuple[str, ...] | None:
    """``"crack,hole"`` (or a sequence) -> ``("crack", "hole")``; nothing -> None."""
    items = value.split(",") if isinstance(value, str) else (value or ())
    return tuple(s.strip() for s in items if s.strip()) or None


def _ints(value: Any) -> tuple[int, ...]:
    """``"1,2,3"`` (or a sequence) -> ``(1, 2, 3)``."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(int(v) for v in items if str(v).strip())


_FLAG_VALUE = {
    "pretrained_tag": lambda v: v or None,  # "" on the command line: none
    "out_indices": _ints,
    "seen_defects": _names,
    "no_focal": lambda v: not v,
}


def configs_from_flags(flags: Any, **train: Any) -> tuple[BgadConfig, BgadTrainConfig]:
    """The model and training configs that parsed fit flags describe (the one mapping from flags to BGAD
    configs, used by ``adray fit-bgad`` and the BGAD benchmarks).

    ``flags``: an ``argparse.Namespace`` (any object) holding some of :data:`FLAG_FIELDS`' names; a name
    it lacks leaves the config default. ``train``: training fields set on top (``copy_paste_variants=1``).
    Raises :class:`adray.errors.ConfigError` for a bad value.
    """
    parts: dict[str, dict[str, Any]] = {"model": {}, "train": {}, "loss": {}}
    for dest, targets in FLAG_FIELDS.items():
        if hasattr(flags, dest):
            value = _FLAG_VALUE.get(dest, lambda v: v)(getattr(flags, dest))
            for part, name in targets:
                parts[part][name] = value
    if parts["loss"]:
        parts["train"]["loss"] = LossConfig(**parts["loss"])
    return BgadConfig(**parts["model"]), BgadTrainConfig(**{**parts["train"], **train})
