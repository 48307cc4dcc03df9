"""What the BGAD benchmarks (``bgad-fit``, ``bgad-compare``) share: the category and the small model both
fit (a tiny random timm backbone at 64 px), each a flag of both. Each benchmark's own config
(:class:`adray.bench.bgad_fit.BgadFitBenchConfig`, :class:`adray.bench.bgad_compare.BgadCompareConfig`)
adds its schedule and what it measures; the fields named as in
:data:`adray.detectors.bgad.config.FLAG_FIELDS` reach the BGAD configs through ``configs_from_flags``.
"""

from __future__ import annotations

from typing import Annotated

from adray.config import Config, Flag


class BgadBenchConfig(Config):
    """The category and the fitted model's backbone, its weights and the image size (pixels)."""

    category: Annotated[str, Flag("--category")] = "bottle"
    backbone: Annotated[str, Flag("--backbone")] = "test_efficientnet"
    weights: Annotated[str, Flag("--weights")] = "random"
    image_size: Annotated[int, Flag("--image-size")] = 64
