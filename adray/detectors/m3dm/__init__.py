"""M3DM: multimodal (RGB + point cloud) anomaly detection with memory banks (Wang et al., CVPR 2023).

Importing this package registers the ``m3dm`` detector (:class:`M3DMDetector`).
"""

from adray.detectors.m3dm.config import MODES, M3DMConfig, tiny_config
from adray.detectors.m3dm.detector import M3DMDetector

__all__ = ["MODES", "M3DMConfig", "M3DMDetector", "tiny_config"]
