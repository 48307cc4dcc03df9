"""`adray evaluate` / jobs/evaluate.py: results + ground truth -> metrics.json and a self-contained report.html."""

from __future__ import annotations

import argparse
import logging
import sys

from adray.catalog import CatalogError
from adray.config import add_flags, flag_values
from adray.evaluation import EvalConfig, EvaluationError, evaluate, write_report
from adray.evaluation.evaluate import DEFAULT_DATASET
from adray.evaluation.published import DATASET_CATEGORIES
from adray.evaluation.report import METRIC_LABELS
from adray.storage import StorageError

log = logging.getLogger(__name__)
# Errors a person can act on (bad flag value, nothing to evaluate, missing or unreadable input): one line
# and exit code 2. Anything else is a bug and keeps its traceback.
USER_ERRORS = (EvaluationError, CatalogError, FileNotFoundError, PermissionError, StorageError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results", required=True, help="results root (holds results/ and runs/), any storage URL"
    )
    parser.add_argument(
        "--input", required=True, help="the manifest that was scored, or a dataset prefix to catalogue"
    )
    parser.add_argument("--report", required=True, help="output folder for metrics.json and report.html")
    parser.add_argument(
        "--artifact",
        action="append",
        default=[],
        help="detector artifact whose fit items (metadata keys *_item_ids) are left out; repeatable "
        "(artifacts named in the run records are read too)",
    )
    parser.add_argument("--run-id", action="append", default=None, help="only these runs (repeatable)")
    parser.add_argument("--detector", action="append", default=None, help="only these detectors (repeatable)")
    parser.add_argument(
        "--dataset",
        default=DEFAULT_DATASET,
        choices=["auto", "none", *DATASET_CATEGORIES],
        help="dataset for the published numbers; auto = recognise by category names",
    )
    add_flags(parser, EvalConfig, ("pixel_size", "fpr_limit", "target_fprs", "worst"))


def run(args: argparse.Namespace) -> int:
    try:
        config = EvalConfig(**flag_values(EvalConfig, args))
        doc = evaluate(
            args.results,
            args.input,
            artifacts=args.artifact,
            run_ids=args.run_id,
            detectors=args.detector,
            dataset=None if args.dataset == "none" else args.dataset,
            config=config,
        )
        json_url, html_url = write_report(doc, args.report)
    except USER_ERRORS as e:
        print(f"adray evaluate: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(summary_table(doc))
    print(f"metrics: {json_url}\nreport:  {html_url}")
    return 0


def summary_table(doc: dict) -> str:
    """Mean metrics per detector as a fixed-width table."""
    names = list(METRIC_LABELS)
    lines = [f"{'detector':<12}" + "".join(f"{METRIC_LABELS[m]:>14}" for m in names)]
    for det, d in doc["detectors"].items():
        cells = "".join(
            f"{d['mean'][m]:>14.4f}" if d["mean"].get(m) is not None else f"{'-':>14}" for m in names
        )
        lines.append(f"{det:<12}{cells}")
    return "\n".join(lines)
