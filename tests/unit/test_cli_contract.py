"""The public CLI is a contract: every ``adray`` subcommand (and each ``jobs/*.py``, which runs the same
parser) keeps its option strings, defaults, help, groups, choices and kinds (repeatable, ``--no-...``
flags, ...). ``cli_contract.json`` was generated once from the code before the configs became pydantic
models; refactors must keep it green.

New flags and subcommands are additive and pass; regenerate the fixture to record them (the diff shows up
in review)::

    ADRAY_WRITE_CLI_CONTRACT=1 .venv/bin/pytest -q tests/unit/test_cli_contract.py
"""

from __future__ import annotations

import argparse
import ast
import json
import os
from pathlib import Path
from typing import Any

import pytest

from adray.cli import SUBCOMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).with_name("cli_contract.json")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return getattr(value, "__name__", repr(value))


def _group_of(parser: argparse.ArgumentParser, action: argparse.Action) -> str | None:
    for group in parser._action_groups:
        if action in group._group_actions:
            return group.title
    return None


def describe(parser: argparse.ArgumentParser) -> list[dict[str, Any]]:
    """Every action of ``parser`` as JSON data: options, dest, kind, default, type, nargs, choices, required,
    metavar, help (raw, before %-formatting), group title; a subparser action lists its parsers."""
    out = []
    for action in parser._actions:
        entry: dict[str, Any] = {
            "options": list(action.option_strings),
            "dest": action.dest,
            "kind": type(action).__name__,
            "default": _jsonable(action.default),
            "type": _jsonable(action.type),
            "nargs": _jsonable(action.nargs),
            "choices": None,
            "required": action.required,
            "metavar": _jsonable(action.metavar),
            "help": action.help,
            "group": _group_of(parser, action),
        }
        if isinstance(action, argparse._SubParsersAction):
            entry["parsers"] = {name: describe(sub) for name, sub in action.choices.items()}
        elif action.choices is not None:
            entry["choices"] = _jsonable(list(action.choices))
        out.append(entry)
    return out


def job_commands() -> dict[str, str]:
    """``jobs/<file>.py`` -> the subcommand name it hands to ``run_command``."""
    found = {}
    for path in sorted((ROOT / "jobs").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "run_command":
                found[f"jobs/{path.name}"] = node.args[0].value
    return found


def current_contract() -> dict[str, Any]:
    return {
        "commands": {name: describe(build_parser(f"adray {name}", name)) for name in SUBCOMMANDS},
        "jobs": job_commands(),
    }


def test_fixture_up_to_date_or_written():
    contract = current_contract()
    if os.environ.get("ADRAY_WRITE_CLI_CONTRACT") == "1":
        FIXTURE.write_text(json.dumps(contract, indent=1, sort_keys=True) + "\n")
    expected = json.loads(FIXTURE.read_text())
    assert set(expected["commands"]) <= set(contract["commands"]), "a subcommand was removed"
    assert expected["jobs"].items() <= contract["jobs"].items(), "a jobs/*.py entry point was removed"


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_subcommand_flags_unchanged(name):
    recorded = json.loads(FIXTURE.read_text())["commands"]
    if name not in recorded:  # additive: a new subcommand is no break; regenerating records it
        pytest.skip(f"adray {name} is newer than the fixture")
    expected = recorded[name]
    got = describe(build_parser(f"adray {name}", name))
    by_dest = {e["dest"]: e for e in got}
    for want in expected:  # per option first, so a failure names the flag
        assert by_dest.get(want["dest"]) == want, f"adray {name} {want['options'] or want['dest']}"
    kept = [e for e in got if e["dest"] in {w["dest"] for w in expected}]
    assert kept == expected  # in the same order (the help output's); new flags may come in between


@pytest.mark.parametrize("job", sorted(job_commands()))
def test_job_entry_points_take_the_same_flags(job):
    name = job_commands()[job]
    assert describe(build_parser(job, name)) == describe(build_parser(f"adray {name}", name))


def test_describe_sees_flag_kinds():
    """The recorder itself tells repeatable, negated and typed flags apart (a contract that cannot fail
    would prove nothing)."""
    p = argparse.ArgumentParser()
    p.add_argument("--a", action="append", default=None)
    p.add_argument("--no-b", dest="b", action="store_false")
    p.add_argument("--c", type=int, default=3)
    kinds = {e["dest"]: (e["kind"], e["default"], e["type"]) for e in describe(p)}
    assert kinds["a"] == ("_AppendAction", None, None)
    assert kinds["b"] == ("_StoreFalseAction", True, None)
    assert kinds["c"] == ("_StoreAction", 3, "int")
