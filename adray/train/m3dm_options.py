"""How an M3DM build runs: Ray resources and the decision's rates (:class:`M3DMBuildOptions`).

What the detector computes is :class:`adray.detectors.m3dm.config.M3DMConfig` (hashed into its version);
these options change where and how fast it is built and where its thresholds sit, never the version.
Each default is stated here once: :func:`adray.train.m3dm.build_m3dm` takes the model, and ``adray
build-m3dm`` generates its cluster and decision flags from the fields (:func:`adray.config.add_flags`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field

from adray.config import Config, Flag
from adray.detectors.thresholds import DEFAULT_TARGET_PIXEL_FPR


class M3DMBuildOptions(Config):
    """Ray resources of an M3DM build and the rates of its decision (see
    :func:`adray.detectors.m3dm.fit.heldout_decision`). A bad value raises a one-line ConfigError."""

    model_config = ConfigDict(title="build-m3dm options")

    workers: Annotated[int, Flag("--workers")] = Field(
        2, ge=0, description="feature actors and UFF DDP workers"
    )
    uff_workers: Annotated[int | None, Flag("--uff-workers")] = Field(
        None, ge=0, description="UFF workers (0 = Ray Train local mode)"
    )
    batch_size: Annotated[int, Flag("--batch-size")] = Field(
        8, ge=1, description="items per feature-extraction batch"
    )
    gpus_per_worker: Annotated[float, Flag("--gpus-per-worker")] = Field(0.0, ge=0)
    target_fpr: Annotated[float | None, Flag("--target-fpr")] = Field(
        None,
        ge=0,
        le=1,
        description="image threshold at this false-positive rate on the held-out normals (default: their "
        "largest score, the threshold M3DM artifacts always had)",
    )
    target_pixel_fpr: Annotated[float, Flag("--target-pixel-fpr")] = Field(
        DEFAULT_TARGET_PIXEL_FPR,
        ge=0,
        le=1,
        description="pixel threshold (defect regions) at this false-positive rate over the held-out "
        "normals' map pixels (default %(default)s)",
    )

    @property
    def uff_world(self) -> int:
        """UFF's Ray Train workers: ``uff_workers``, else ``workers``."""
        return self.workers if self.uff_workers is None else self.uff_workers
