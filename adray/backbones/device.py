"""The torch device a model runs on when none is named."""

from __future__ import annotations

import torch


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given (``"cpu"``, ``"cuda"``, ``"cuda:1"``), else CUDA when available, else CPU.

    Raises ``RuntimeError`` (from torch) for a malformed device string.
    """
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
