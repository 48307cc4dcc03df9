"""Preprocessed arrays packed into one binary column: a safetensors buffer per row (no pickle).

The decode stage packs each row's preprocessed arrays (:func:`pack_arrays`); the scoring actor unpacks
and stacks only the rows that decoded (:func:`unpack_arrays`), so a batch of failures never needs a
placeholder of the detector's shapes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import safetensors.numpy


def pack_arrays(arrays: dict[str, Any]) -> bytes:
    """Named arrays (numpy or torch, any shape) as one safetensors buffer (``safetensors.numpy.save``: a
    JSON header of dtypes and shapes, then the raw little-endian bytes; no pickle). Raises ``ValueError``
    for a dtype safetensors cannot hold (object, complex)."""
    try:
        return safetensors.numpy.save({k: np.ascontiguousarray(_to_numpy(v)) for k, v in arrays.items()})
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"cannot pack arrays {sorted(arrays)}: {e}") from e


def unpack_arrays(blob: bytes) -> dict[str, np.ndarray]:
    """The arrays of :func:`pack_arrays`, dtypes and shapes as packed (``safetensors.numpy.load``)."""
    return safetensors.numpy.load(bytes(blob))


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)
