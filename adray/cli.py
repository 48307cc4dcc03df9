"""`adray` console entry point. Each subcommand lives in ``adray.commands.<module>`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``; ``jobs/*.py`` call the same modules, so the Ray job
entry points and the console script take the same flags."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: subcommand -> (module under adray.commands, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("synth", "write a synthetic MVTec AD / MVTec 3D-AD dataset to any storage URL"),
    "catalog": ("catalog", "build a manifest (Parquet) from a dataset prefix or a given manifest"),
    "winclip": ("winclip", "score local images with WinCLIP zero-/few-shot and print the scores"),
    "score": ("score", "score an archive with one or more detectors on Ray; Parquet + mask PNGs out"),
    "reinspect": ("reinspect", "score only new or changed items (backlog re-inspection)"),
    "runs": ("runs", "repair a run whose files conflict, or show who holds a run id's lease"),
    "query": ("query", "DuckDB SQL over committed results (results, latest_scores, runs, latest_labels ...)"),
    "fit-bgad": ("fit_bgad", "fit a BGAD detector with Ray Train"),
    "build-m3dm": ("build_m3dm", "build an M3DM detector (features, fusion, memory banks) with Ray"),
    "evaluate": ("evaluate", "evaluate results against ground truth; JSON + HTML report"),
    "labels": ("labels", "import labels (CSV / Parquet) into a results root; list the latest"),
    "review": ("review", "write a self-contained HTML page to label the top and sampled items; exports CSV"),
    "plan": ("plan", "per category: the data, the strategy it allows (zero-shot → k-shot → BGAD; M3DM), why"),
    "fit": ("fit", "fit what the plan calls for per category (--detector auto: BGAD, M3DM) and register it"),
    "models": ("models", "list the model registry of a results root, with each artifact's status"),
    "benchmark": ("benchmark", "run the benchmarks (winclip, pipeline, bgad-fit, m3dm, all)"),
    "demo": ("demo", "generate a demo archive, score it and query the results"),
}


def command_module(name: str):
    module, _ = SUBCOMMANDS[name]
    return importlib.import_module(f"adray.commands.{module}")


def build_parser(prog: str, name: str) -> argparse.ArgumentParser:
    """The parser of one subcommand on its own (used by jobs/*.py)."""
    _, help_text = SUBCOMMANDS[name]
    parser = argparse.ArgumentParser(prog=prog, description=help_text)
    command_module(name).add_arguments(parser)
    return parser


def run_command(name: str, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse ``argv`` for subcommand ``name`` and run it; the entry of jobs/*.py.

    Expected user errors (:func:`adray.errors.user_error_types`: a missing input, refused access, a run id
    held by another writer, ...) print one line ``<prog>: error: ...`` and return 2; anything else is a bug
    and propagates with its traceback.
    """
    from adray.errors import report, user_error_types

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    prog = prog or f"adray {name}"
    parser = build_parser(prog, name)
    args = parser.parse_args(argv)
    try:
        return int(command_module(name).run(args) or 0)
    except user_error_types() as e:  # evaluated when raised: covers classes of modules imported by then
        return report(prog, e)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    top = argparse.ArgumentParser(prog="adray", description=__doc__.split("\n")[0])
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    name = argv[0]
    if name not in SUBCOMMANDS:
        top.error(f"unknown command {name!r}; choose from {', '.join(SUBCOMMANDS)}")
    try:
        return run_command(name, argv[1:], prog=f"adray {name}")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
