"""WinCLIP / WinCLIP+ zero-/few-shot anomaly detection (Jeong et al., CVPR 2023); see README.md here."""

from adray.detectors.base import register_detector, register_factory, register_preprocessor
from adray.detectors.registry import register_header
from adray.detectors.winclip.artifact import save_winclip
from adray.detectors.winclip.config import WinClipConfig
from adray.detectors.winclip.detector import WinClip, WinClipDetector
from adray.detectors.winclip.factory import create_winclip, load_winclip
from adray.detectors.winclip.preprocessing import (
    winclip_legacy_header,
    winclip_preprocessor,
    winclip_preprocessor_from,
)
from adray.detectors.winclip.prompts import build_prompts, clean_class_name
from adray.detectors.winclip.windows import harmonic_aggregation, window_indices

register_detector("winclip")(WinClipDetector)
register_factory("winclip", create_winclip)
register_preprocessor("winclip", winclip_preprocessor)
register_header("winclip", winclip_preprocessor_from, legacy=winclip_legacy_header)

__all__ = [
    "WinClip",
    "WinClipConfig",
    "WinClipDetector",
    "build_prompts",
    "clean_class_name",
    "create_winclip",
    "harmonic_aggregation",
    "load_winclip",
    "save_winclip",
    "window_indices",
    "winclip_preprocessor",
]
