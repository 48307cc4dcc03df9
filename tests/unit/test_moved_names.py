"""Names that moved from a detector's ``model.py`` to its ``detector.py`` are forwarded from the new home's
``__all__`` (:func:`adray.detectors.moved.forward_moved`), and nothing else is."""

from __future__ import annotations

import pytest

from adray.detectors.m3dm import detector as m3dm_detector
from adray.detectors.m3dm import model as m3dm_model
from adray.detectors.moved import forward_moved
from adray.detectors.winclip import detector as winclip_detector
from adray.detectors.winclip import model as winclip_model


@pytest.mark.parametrize(("old", "home"), [(m3dm_model, m3dm_detector), (winclip_model, winclip_detector)])
def test_every_name_of_the_new_home_is_forwarded_and_no_other(old, home):
    assert home.__all__
    for name in home.__all__:
        assert getattr(old, name) is getattr(home, name)
    with pytest.raises(AttributeError, match=f"module '{old.__name__}' has no attribute 'NoSuchName'"):
        old.NoSuchName  # noqa: B018
    assert hasattr(home, "ScoreBatch") and not hasattr(old, "ScoreBatch")  # imported there, not in __all__


def test_dunder_names_never_import_the_home():
    forward = forward_moved("old.module", "no.such.home")
    with pytest.raises(AttributeError, match="'old.module' has no attribute '__path__'"):
        forward("__path__")
    with pytest.raises(ModuleNotFoundError):
        forward("Anything")
