"""How a BGAD fit runs on Ray Train (:class:`FitBgadOptions`).

What BGAD computes is :class:`adray.detectors.bgad.config.BgadConfig` / ``BgadTrainConfig`` (hashed into
its version); these options change where and how it is fitted (workers, resources, run name,
checkpoints), never the version. Each default is stated here once: :func:`adray.train.bgad.fit_bgad`
takes the model, and ``adray fit-bgad`` generates its Ray Train flags from the fields.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field

from adray import storage
from adray.config import Config, Flag


class FitBgadOptions(Config):
    """How :func:`adray.train.bgad.fit_bgad` runs (workers, resources, run name and checkpoints), never
    what it fits; ``adray fit-bgad`` generates its "Ray Train" flags from these fields. A bad value raises
    a one-line :class:`adray.errors.ConfigError`."""

    model_config = ConfigDict(title="fit-bgad options")

    workers: Annotated[int, Flag("--workers")] = Field(
        1, ge=0, description="Ray Train workers (0 = local mode in-process)"
    )
    gpus_per_worker: Annotated[float, Flag("--gpus-per-worker")] = Field(
        0.0, ge=0, description=">0 uses NCCL on GPUs, else gloo on CPU"
    )
    cpus_per_worker: Annotated[float, Flag("--cpus-per-worker")] = Field(1.0, ge=0)
    run_name: Annotated[str | None, Flag("--run-name")] = Field(
        None,
        description="Ray Train run name; the same name resumes from its last checkpoint (default: derived "
        "from output + config, so rerunning the same command resumes)",
    )
    checkpoint_root: Annotated[str | None, Flag("--checkpoint-root")] = Field(
        None, description="default: <parent of --output>/checkpoints"
    )

    def fit_kwargs(self) -> dict[str, Any]:
        """These options as keyword arguments of :func:`adray.train.bgad.fit_bgad` (the checkpoint root
        made absolute)."""
        return self.absolute().model_dump()

    def absolute(self) -> FitBgadOptions:
        """A copy whose checkpoint root is an absolute URL (Ray workers do not share the driver's working
        directory)."""
        root = storage.absolute_url(self.checkpoint_root) if self.checkpoint_root else None
        return self.replace(checkpoint_root=root)
