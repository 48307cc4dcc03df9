"""The benchmarks' result table: ``{"name", "rows": [{column: value}], "notes"}`` as aligned text."""

from __future__ import annotations

from adray.tables import text_table


def format_rows(result: dict) -> str:
    """``result`` as a titled, left-aligned text table (columns in first-seen order; floats to 4
    significant digits) followed by its notes; ``"[name] no rows"`` when it has none."""
    rows = result.get("rows", [])
    if not rows:
        return f"[{result.get('name')}] no rows"
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    lines = [f"== {result.get('name')} ==", text_table(cols, cells, rule=False)]
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
