"""The M3DM comparison (adray.bench.m3dm_compare) builds the configs ``adray build-m3dm`` would build.

The bench room may not import commands, so it states its own small mapping; this test pins it to the
command's flags (``config_from_args``) for every compared mode, tiny and full-size.
"""

from __future__ import annotations

import argparse

import pytest

from adray.bench.m3dm_compare import MODES, mode_config
from adray.commands.build_m3dm import add_arguments, config_from_args


@pytest.mark.parametrize("tiny", [True, False])
@pytest.mark.parametrize("name", sorted(MODES))
def test_mode_config_equals_the_build_commands(name, tiny):
    mode, fusion = MODES[name]
    argv = ["--train", "/d", "--category", "cookie", "--output", "-", "--mode", mode, "--weights", "random"]
    argv += ["--point-weights", "random", "--uff-steps", "30"] + (["--tiny"] if tiny else [])
    argv += [] if fusion else ["--no-fusion"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    expected = config_from_args(parser.parse_args(argv))
    got = mode_config(
        "cookie", mode, fusion, tiny=tiny, weights="random", point_weights="random", uff_steps=30
    )
    assert got == expected
