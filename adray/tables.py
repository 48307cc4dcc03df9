"""adray's one text-table printer: the run summary, ``adray query``, the benchmarks and the evaluation print
their tables through :func:`text_table`.

Columns are left-aligned and separated by two spaces; cells print in full (a URI is never cut short, as
DuckDB's own box renderer does to fit the terminal). Values are formatted by :func:`cell`: ``None`` as
``NULL``, floats to 4 significant digits, anything else with ``str``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def cell(value: Any, *, none: str = "NULL") -> str:
    """One value as table text: ``none`` for ``None``, floats with ``.4g``, anything else ``str``."""
    if value is None:
        return none
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def text_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, rule: bool = True) -> str:
    """``columns`` over ``rows`` (sequences as long as ``columns``; values through :func:`cell`), each
    column as wide as its widest cell, with a ``----`` line under the header when ``rule``. No trailing
    newline. Raises ``ValueError`` for a row whose length differs from the header's."""
    cells = [[v if isinstance(v, str) else cell(v) for v in row] for row in rows]
    for i, row in enumerate(cells):
        if len(row) != len(columns):
            raise ValueError(f"row {i} has {len(row)} cells for {len(columns)} columns")
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = [_line(columns, widths)]
    if rule:
        lines.append("  ".join("-" * w for w in widths))
    lines += [_line(r, widths) for r in cells]
    return "\n".join(lines)


def _line(values: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(v.ljust(w) for v, w in zip(values, widths))
