"""Detectors: plain torch models behind one contract (see :mod:`adray.detectors.base`)."""

from adray.detectors.base import (
    Detector,
    ScoreBatch,
    create_detector,
    load_detector,
    register_detector,
    registered_detectors,
)

__all__ = [
    "Detector",
    "ScoreBatch",
    "create_detector",
    "load_detector",
    "register_detector",
    "registered_detectors",
]
