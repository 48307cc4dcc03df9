"""Moved to :mod:`adray.bench.bgad_compare` (run it as ``python jobs/benchmark.py bgad-compare``).

This forwarding shim keeps ``python -m adray.detectors.bgad.compare ...`` and its names working; the
layering test (``tests/unit/test_import_structure.py``) lists it as the one detector module allowed to
import :mod:`adray.bench`.
"""

from adray.bench.bgad_compare import compare_supervised, format_table
from adray.bench.bgad_compare import main as _main

__all__ = ["compare_supervised", "format_table", "main"]


def main(argv: list[str] | None = None) -> int:
    """``python -m adray.bench.bgad_compare`` under its old name."""
    return _main(argv, prog="python -m adray.detectors.bgad.compare")


if __name__ == "__main__":
    raise SystemExit(main())
