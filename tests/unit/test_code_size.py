"""Size limits of ``adray``: no module over 400 lines, no function over 60 (ast only, nothing imported).

A module's size is its number of lines; a function's runs from its ``def`` line to its last line
(decorators not counted), methods and nested functions included. The allow-lists hold the places that are
over today, each with its size now as a ceiling: an entry may shrink, never grow, and the test fails once
an entry is within the limit, so that it is deleted here (the list only gets shorter).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

#: module path -> ceiling (lines)
LONG_MODULES: dict[str, int] = {}
#: "module path:function name" -> ceiling (lines)
LONG_FUNCTIONS: dict[str, int] = {}


def _sizes() -> tuple[dict[str, int], dict[str, int]]:
    """``(lines per module, lines per "module:function")`` over ``adray/**/*.py``; for two functions of
    one name in a module, the longer."""
    modules: dict[str, int] = {}
    functions: dict[str, int] = {}
    for path in sorted((ROOT / "adray").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        modules[rel] = text.count("\n")
        for node in ast.walk(ast.parse(text, rel)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                key = f"{rel}:{node.name}"
                functions[key] = max(functions.get(key, 0), node.end_lineno - node.lineno + 1)
    return modules, functions


def _over(sizes: dict[str, int], limit: int, allowed: dict[str, int]) -> list[str]:
    """What breaks the limit: a place over it and not allowed, or allowed and grown past its ceiling."""
    return [
        f"{place}: {n} lines (limit {limit}" + (f", ceiling {allowed[place]})" if place in allowed else ")")
        for place, n in sorted(sizes.items())
        if n > max(limit, allowed.get(place, 0))
    ]


def _stale(sizes: dict[str, int], limit: int, allowed: dict[str, int]) -> list[str]:
    return [place for place in allowed if sizes.get(place, 0) <= limit]


def test_no_module_over_400_lines():
    modules, _ = _sizes()
    assert _over(modules, MAX_MODULE_LINES, LONG_MODULES) == [], "split these modules by what they do"


def test_no_function_over_60_lines():
    _, functions = _sizes()
    assert _over(functions, MAX_FUNCTION_LINES, LONG_FUNCTIONS) == [], "split these functions"


def test_allow_lists_name_only_places_still_over_the_limits():
    modules, functions = _sizes()
    stale = _stale(modules, MAX_MODULE_LINES, LONG_MODULES)
    stale += _stale(functions, MAX_FUNCTION_LINES, LONG_FUNCTIONS)
    assert stale == [], "within the limit (or gone) now: delete these entries from the allow-lists"


def test_the_measure_counts_what_it_says():
    src = "def f():\n" + "    x = 1\n" * 60 + "\n\ndef g():\n    return 2\n"
    tree = ast.parse(src)
    lengths = {n.name: n.end_lineno - n.lineno + 1 for n in tree.body}
    assert lengths == {"f": 61, "g": 2}
    assert _over({"a.py:f": 61, "a.py:g": 2}, 60, {}) == ["a.py:f: 61 lines (limit 60)"]
    assert _over({"a.py:f": 61}, 60, {"a.py:f": 61}) == []
    assert _over({"a.py:f": 62}, 60, {"a.py:f": 61}) == ["a.py:f: 62 lines (limit 60, ceiling 61)"]
    assert _stale({"a.py:f": 60}, 60, {"a.py:f": 61, "gone.py:h": 70}) == ["a.py:f", "gone.py:h"]
