"""Names that moved out of a module stay importable from it: old import paths are a contract.

Each detector's ``model.py`` was once the home of its detector class, which now lives in ``detector.py``
(the folder layout of :mod:`adray.detectors`). ``detector.py`` imports ``model.py``, so ``model.py``
cannot import those names back at module level (a cycle); :func:`forward_moved` gives it a module
``__getattr__`` (PEP 562) that fetches them on first use. The names forwarded are the new home's
``__all__``, so the list lives in one place.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["forward_moved"]


def forward_moved(module: str, home: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``module`` (its dotted name, for the error) that returns the names in
    ``home``'s ``__all__`` from ``home``, imported on first use. Any other name, and any dunder name (so
    introspection never imports ``home``), raises ``AttributeError`` as a plain module would."""

    def __getattr__(name: str) -> Any:
        if not name.startswith("__"):
            target = importlib.import_module(home)
            if name in getattr(target, "__all__", ()):
                return getattr(target, name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
