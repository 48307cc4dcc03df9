"""Moved to :mod:`adray.bench.m3dm_compare` (run it as ``python jobs/benchmark.py m3dm-compare``).

This forwarding shim keeps ``python -m adray.train.m3dm_compare ...`` and its names working.
"""

import sys

from adray.bench.m3dm_compare import (
    GROUPS,
    MODES,
    auroc_by_group,
    compare_modes,
    format_table,
    mode_config,
    score_test_items,
)
from adray.bench.m3dm_compare import main as _main

__all__ = [
    "GROUPS",
    "MODES",
    "auroc_by_group",
    "compare_modes",
    "format_table",
    "main",
    "mode_config",
    "score_test_items",
]


def main(argv: list[str] | None = None) -> int:
    """``python -m adray.bench.m3dm_compare`` under its old name."""
    return _main(argv, prog="python -m adray.train.m3dm_compare")


if __name__ == "__main__":
    sys.exit(main())
