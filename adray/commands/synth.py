"""`adray synth`: write a synthetic MVTec AD and/or MVTec 3D-AD dataset to any storage URL."""

from __future__ import annotations

import argparse
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from adray import storage
from adray.config import Config, Flag, add_flags, flag_values
from adray.synthetic import CATEGORIES_2D, CATEGORIES_3D, SynthConfig, generate_mvtec_3d, generate_mvtec_ad

#: the dataset flags, in the help output's order (fields of adray.synthetic.SynthConfig)
DATASET_FLAGS = (
    "image_size",
    "image_width",
    "seed",
    "categories",
    "defects",
    "n_train",
    "n_validation",
    "n_test_good",
    "n_test_per_defect",
)


class SynthTarget(Config):
    """Where ``adray synth`` writes and which layouts (``both``: ``OUTPUT/mvtec`` and ``OUTPUT/mvtec3d``)."""

    model_config = ConfigDict(title="synth configuration")

    output: Annotated[str, Flag("--output")] = Field(
        description="destination URL or path (local, file://, s3://...)"
    )
    layout: Annotated[Literal["mvtec", "mvtec3d", "both"], Flag("--layout", choices=True)] = "mvtec"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, SynthTarget, ("output", "layout"))
    add_flags(parser, SynthConfig, DATASET_FLAGS)


def run(args: argparse.Namespace) -> int:
    target = SynthTarget(**flag_values(SynthTarget, args))
    data = SynthConfig(**flag_values(SynthConfig, args))
    both = target.layout == "both"
    if target.layout in ("mvtec", "both"):
        url = storage.join_url(target.output, "mvtec") if both else target.output
        print(generate_mvtec_ad(url, _for_layout(data, CATEGORIES_2D, both)).to_text())
    if target.layout in ("mvtec3d", "both"):
        url = storage.join_url(target.output, "mvtec3d") if both else target.output
        print(generate_mvtec_3d(url, _for_layout(data, CATEGORIES_3D, both)).to_text())
    return 0


def _for_layout(data: SynthConfig, known: tuple[str, ...], both: bool) -> SynthConfig:
    """With ``--layout both`` each layout takes the categories it knows; otherwise all must be known."""
    if not data.categories or not both:
        return data
    return data.replace(categories=tuple(c for c in data.categories if c in known))
