"""Each default is stated once (issue 15): every flag of every ``adray`` command that has a default is
generated from a config field (:func:`adray.config.add_flags` marks its action with ``config_field``),
or is one of the few hand-written flags below, whose default is read from the one place that holds it.

A new hand-written flag with a literal default fails here: make it a field with a ``Flag`` (or, when it
cannot be one, add it below with where its default comes from).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import pytest

from adray.cli import SUBCOMMANDS, build_parser


def _hand_written() -> dict[tuple[str, str], tuple[Any, str]]:
    """(command, flag) -> (the default read from its one home, why the flag is not a field's)."""
    from adray.backbones.vit_features import ViTConfig
    from adray.detectors.bgad.config import BgadConfig
    from adray.detectors.m3dm.config import CORESET_RATIO
    from adray.detectors.m3dm.preprocessing import PreprocessConfig
    from adray.evaluation.evaluate import DEFAULT_DATASET
    from adray.review.page import PageConfig

    bgad, vit = BgadConfig(), ViTConfig()
    return {
        ("fit-bgad", "--out-indices"): (",".join(map(str, bgad.out_indices)), "text, the field a tuple"),
        ("fit-bgad", "--image-size"): (bgad.image_size, "a stored config's error names image_size"),
        ("build-m3dm", "--weights"): (vit.weights, "sets the nested vit.weights"),
        ("build-m3dm", "--rgb-backbone"): (vit.name, "sets the nested vit.name"),
        ("build-m3dm", "--preprocess-units"): (PreprocessConfig().units, "sets preprocess.units"),
        ("build-m3dm", "--coreset-ratio"): (CORESET_RATIO, "one value for the three banks"),
        ("evaluate", "--dataset"): (DEFAULT_DATASET, "evaluate()'s keyword, not an EvalConfig field"),
        ("review", "--max-mb"): (PageConfig().max_bytes / 1e6, "PageConfig.max_bytes in MB"),
        ("review", "--report"): ("review.html", "the command's own output name; nothing else holds it"),
    }


def _flags(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _flags(sub, f"{path} {name}")
        elif action.option_strings and not isinstance(action, argparse._HelpAction):
            yield path, action


def _with_defaults() -> list[tuple[str, argparse.Action]]:
    out = []
    for name in SUBCOMMANDS:
        for path, action in _flags(build_parser(f"adray {name}", name), name):
            if action.default not in (None, False, argparse.SUPPRESS, [], ""):
                out.append((path, action))
    return out


def test_every_flag_default_has_one_home():
    hand = _hand_written()
    stray = []
    for path, action in _with_defaults():
        option = action.option_strings[0]
        if getattr(action, "config_field", None):
            continue
        if (path, option) in hand:
            assert action.default == hand[path, option][0], (path, option)
        else:
            stray.append(f"{path} {option} (default {action.default!r})")
    assert not stray, "hand-written flags with their own default: " + ", ".join(stray)


def test_the_hand_written_list_has_no_stale_entries():
    present = {(path, action.option_strings[0]) for path, action in _with_defaults()}
    generated = {
        (path, action.option_strings[0])
        for path, action in _with_defaults()
        if getattr(action, "config_field", None)
    }
    stale = set(_hand_written()) - (present - generated)
    assert not stale, f"now generated or gone, drop them from the list: {sorted(stale)}"


@pytest.mark.parametrize(
    "path,option,model,field,value,want",
    [
        ("fit-bgad", "--image-size", "adray.detectors.bgad.config:BgadConfig", "image_size", 320, 320),
        ("review", "--max-mb", "adray.review.page:PageConfig", "max_bytes", 5_000_000, 5.0),
    ],
)
def test_a_changed_home_moves_the_hand_written_default(path, option, model, field, value, want):
    """The hand-written defaults are read, not copied: change the home and the flag follows."""
    import importlib

    module, name = model.split(":")
    cls = getattr(importlib.import_module(module), name)
    info = cls.model_fields[field]
    old = info.default
    try:
        info.default = value
        cls.model_rebuild(force=True)
        got = [a.default for p, a in _with_defaults() if p == path and a.option_strings[0] == option]
    finally:
        info.default = old
        cls.model_rebuild(force=True)
    assert got == [want]
    assert getattr(cls(), field) == old  # restored for the other tests
