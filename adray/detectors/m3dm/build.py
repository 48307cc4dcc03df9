"""Former home of M3DM's fitting, now :mod:`adray.detectors.m3dm.fit`: its names, forwarded."""

from adray.detectors.m3dm.fit import (
    bank_rows,
    build_detector,
    fit_dlf,
    foreground_pixels,
    heldout_decision,
    heldout_scores,
)

__all__ = [
    "bank_rows",
    "build_detector",
    "fit_dlf",
    "foreground_pixels",
    "heldout_decision",
    "heldout_scores",
]
