"""`adray reinspect` / `python jobs/reinspect.py`: score only what is new or changed.

Builds the delta (the manifest minus items already scored by committed runs with the same detector
version and content token), scores only that, and records it as a run. Same flags as `adray score`.
"""

from __future__ import annotations

import argparse

from adray.commands import score


def add_arguments(parser: argparse.ArgumentParser) -> None:
    score.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return score.run(args, delta=True)
