"""One folder shape per detector (as anomalib's ``models/image/<name>/``): ``config.py`` (settings),
``model.py`` (the maths), ``detector.py`` (the contract class ``<Name>Detector``, the one registered),
``fit.py`` where there is plain-torch fitting, ``README.md``; and the import paths that existed before
the move still give the same objects."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from adray.detectors import registry

ROOT = Path(__file__).resolve().parents[2] / "adray" / "detectors"
#: folder -> (registered name, contract class, has plain-torch fitting)
SHAPES = {
    "bgad": ("bgad", "BgadDetector", True),
    "winclip": ("winclip", "WinClipDetector", False),
    "m3dm": ("m3dm", "M3DMDetector", True),
}


@pytest.mark.parametrize("folder", sorted(SHAPES))
def test_every_detector_folder_has_the_same_files(folder):
    name, cls_name, fits = SHAPES[folder]
    files = {p.name for p in (ROOT / folder).iterdir()}
    assert {"config.py", "model.py", "detector.py", "README.md"} <= files
    assert ("fit.py" in files) == fits
    cls = getattr(importlib.import_module(f"adray.detectors.{folder}.detector"), cls_name)
    assert registry.get_detector(name) is cls
    assert getattr(importlib.import_module(f"adray.detectors.{folder}"), cls_name) is cls


def test_old_import_paths_give_the_same_objects():
    from adray.detectors.m3dm import build, fit
    from adray.detectors.m3dm import model as m3dm_model
    from adray.detectors.m3dm.detector import BANKS_FILE, M3DMDetector
    from adray.detectors.winclip import WinClip
    from adray.detectors.winclip import model as winclip_model
    from adray.detectors.winclip.config import WinClipConfig
    from adray.detectors.winclip.detector import WinClipDetector

    assert WinClip is WinClipDetector is winclip_model.WinClip is winclip_model.WinClipDetector
    assert winclip_model.WinClipConfig is WinClipConfig
    assert m3dm_model.M3DMDetector is M3DMDetector and m3dm_model.BANKS_FILE == BANKS_FILE
    for name in build.__all__:
        assert getattr(build, name) is getattr(fit, name)
    with pytest.raises(AttributeError):
        winclip_model.NoSuchName  # noqa: B018
