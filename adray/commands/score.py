"""`adray score` / `python jobs/score.py`: score an archive with one or more detectors on Ray.

Flags follow one convention across jobs (--input, --output, --detector, --weights, --run-id, --class-name,
resource flags). The driver starts its own embedded Ray cluster unless told to attach (``--address``, or
``RAY_ADDRESS`` as under ``ray job submit``); see :mod:`adray.pipeline.cluster`.
"""

from __future__ import annotations

import argparse
import json
import logging

from adray.config import add_flags
from adray.pipeline.cluster import add_address_argument
from adray.pipeline.spec import ScoreConfig

log = logging.getLogger(__name__)


#: The flags of ``adray score`` / ``reinspect``, by argument group, in help order.
SCORE_FLAG_GROUPS: dict[str, tuple[str, ...]] = {
    "data": (
        "input",
        "output",
        "layout",
        "split",
        "categories",
        "limit",
        "allow_prefixes",
        "max_pixels",
        "max_points",
        "bit_depth",
    ),
    "detectors": (
        "detectors",
        "weights",
        "class_name",
        "reference",
        "shots",
        "seed",
        "detector_options",
        "plugins",
    ),
    "decisions": ("target_fpr", "target_pixel_fpr", "pixel_size_mm"),
    "run and resources": (
        "run_id",
        "num_gpus",
        "num_cpus",
        "batch_size",
        "actors",
        "decode_batch_size",
        "decode_cpus",
        "rows_per_block",
        "device",
        "retain_memory",
        "actor_env",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags, generated from :class:`ScoreConfig`'s fields (defaults, bounds and help live there)."""
    groups = {title: parser.add_argument_group(title) for title in SCORE_FLAG_GROUPS}
    for title, names in SCORE_FLAG_GROUPS.items():
        add_flags(groups[title], ScoreConfig, names)
    run = groups["run and resources"]
    run.add_argument(
        "--summary-json", default=None, metavar="URI", help="also write the run summary as JSON here"
    )
    add_address_argument(run)


def config_from_args(args: argparse.Namespace, *, delta: bool = False) -> ScoreConfig:
    """The run the flags describe (:meth:`ScoreConfig.from_flags`); ``delta`` for ``adray reinspect``."""
    return ScoreConfig.from_flags(args, delta=delta)


def run(args: argparse.Namespace, *, delta: bool = False) -> int:
    from adray import storage
    from adray.pipeline import RunCheckError, score_archive

    try:
        summary = score_archive(config_from_args(args, delta=delta))
    except RunCheckError as e:
        print(f"error: {e}")
        return 2
    print(summary.format_table())
    if args.summary_json:
        storage.write_text(args.summary_json, json.dumps(summary.to_dict(), indent=2, default=str))
    return 0
