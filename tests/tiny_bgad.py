"""Test support (no tests here): the test-sized BGAD the unit and integration tests fit.

The model is BGAD (Yao et al., CVPR 2023) on the random ``test_efficientnet`` backbone with two flow blocks;
only the image size changes between tests. The training options start from one meta-epoch of one sub-epoch
in batches of 8 and take each test's own values on top; every other option keeps
:class:`adray.detectors.bgad.BgadTrainConfig`'s default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adray.catalog import build_manifest
from adray.detectors.bgad import BgadConfig, BgadTrainConfig
from adray.synthetic import generate_mvtec_ad

if TYPE_CHECKING:
    from adray.detectors.bgad.detector import BgadDetector

#: the shortest fit: one meta-epoch of one sub-epoch, in batches of 8 images
SHORT_FIT: dict[str, Any] = {"meta_epochs": 1, "sub_epochs": 1, "batch_size": 8}


def tiny_model_config(image_size: int = 32) -> BgadConfig:
    """The tiny ``bottle`` model: random ``test_efficientnet`` features, 2 coupling blocks, ``image_size`` px."""
    return BgadConfig(
        category="bottle", backbone="test_efficientnet", weights="random", image_size=image_size, n_blocks=2
    )


def tiny_train_config(**options: Any) -> BgadTrainConfig:
    """:data:`SHORT_FIT` with ``options`` on top (any :class:`BgadTrainConfig` field)."""
    return BgadTrainConfig(**{**SHORT_FIT, **options})


def bottle_archive(root: str, *, n_train: int, image_size: int = 48, **options: int) -> str:
    """``root``, after writing a generated MVTec AD ``bottle`` archive there: ``n_train`` normal training
    images; in test one normal and one per defect type, seed 0, unless ``options`` (``n_test_good``,
    ``n_test_per_defect``, ``seed`` of :func:`adray.synthetic.generate_mvtec_ad`) say otherwise."""
    options = {"n_test_good": 1, "n_test_per_defect": 1, "seed": 0, **options}
    generate_mvtec_ad(root, categories=("bottle",), image_size=image_size, n_train=n_train, **options)
    return root


def bottle_rows(root: str, *, n_train: int, image_size: int = 48) -> list[dict[str, Any]]:
    """The manifest rows of :func:`bottle_archive` under ``root``."""
    bottle_archive(root, n_train=n_train, image_size=image_size)
    return build_manifest(root, "auto", categories=["bottle"])[0].to_pylist()


def fit_tiny_bgad(rows: list[dict[str, Any]], *, image_size: int = 32, **options: Any) -> BgadDetector:
    """A local (no Ray) CPU fit of :func:`tiny_model_config` on ``rows`` with :func:`tiny_train_config`."""
    from adray.detectors.bgad.session import fit_bgad_local

    return fit_bgad_local(rows, tiny_model_config(image_size), tiny_train_config(**options), device="cpu")
