"""BGAD: Explicit Boundary Guided Semi-Push-Pull Contrastive Learning for Supervised Anomaly Detection.

Yao et al., CVPR 2023 (arXiv 2207.01463); official code github.com/xcyao00/BGAD (read at ``2806d37``).
A frozen timm backbone (default ``tf_efficientnet_b6.aa_in1k`` at 256 px, stages 1-3) feeds one
conditional normalizing flow per level; step 1 fits the flows by maximum likelihood on normal patches,
step 2 adds the explicit boundary and the semi-push-pull hinges on a few labelled anomalies.

Deliberate departures from the official code (its bugs and test-set dependencies are not reproduced):

1. Scores are per item: the map normaliser (per-level max log-likelihood and max summed map) is frozen
   from training normals at fit time, never taken from the test set (official: test-set maxima).
2. A decision threshold is calibrated on held-out train/good images at a target FPR and stored.
3. Empty-set guards: hinge/ML means over empty sets are attached zeros, never NaN steps; the anomalous
   focal weight floors ``|s|`` at 1e-3.
4. Warm-up progress counts real batches (official: ``I = len([loader, loader]) = 2``, a saw-tooth warm-up
   that overshoots the peak lr); the remainder chunk of patches per batch is trained, not dropped.
5. The anomaly split is seeded per category (independent of which categories ran before), balanced across
   defect types, recorded in the artifact and excluded from evaluation (official ``test.py`` includes it).
6. The backbone weight tag is pinned (``aa_in1k``; timm >= 0.9 silently maps the bare name to ``ns_jft``).
7. Copy-paste augmentation is simplified (flip + photometric jitter + random placement, no foreground
   masks) and its variants are drawn once per fit so backbone features can be cached; real anomalies
   still appear ``anomaly_repeats`` times per epoch.
8. Training runs with DDP across workers (one DDP wrapper per level flow, one shared Adam) and resumes
   from per-epoch checkpoints; we report the last epoch, not the test-set max over epochs.
"""

from adray.detectors.bgad.config import BgadConfig, BgadTrainConfig
from adray.detectors.bgad.detector import BgadDetector
from adray.detectors.bgad.losses import LossConfig
from adray.detectors.bgad.model import BgadModel, Normaliser

__all__ = ["BgadConfig", "BgadDetector", "BgadModel", "BgadTrainConfig", "LossConfig", "Normaliser"]
