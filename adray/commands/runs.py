"""`adray runs`: look after runs under a results root.

``adray runs repair --output ROOT RUN_ID`` keeps one row per item and detector version in a run whose
result files conflict (two writers of one run id), so that re-running it with the same ``--run-id``
commits. ``adray runs lease --output ROOT RUN_ID`` shows who holds the run id's lease.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    repair = sub.add_parser(
        "repair",
        help="drop duplicate rows of a run (one row per item and detector version is kept), then re-run "
        "it with the same --run-id to commit",
    )
    lease = sub.add_parser("lease", help="show the lease of a run id (owner and expiry), if any")
    for p in (repair, lease):
        p.add_argument("--output", required=True, help="results root (local path or s3://...)")
        p.add_argument("run_id", metavar="RUN_ID")
    repair.add_argument("--dry-run", action="store_true", help="only say what would be dropped")


def run(args: argparse.Namespace) -> int:
    from adray import storage
    from adray.errors import UserError
    from adray.pipeline.lease import describe, lease_url
    from adray.pipeline.runner import repair_run
    from adray.pipeline.spec import RUN_ID_PATTERN

    if not RUN_ID_PATTERN.match(args.run_id):
        raise UserError(f"run id {args.run_id!r} may only use letters, digits, '-' and '_' (max 128)")
    args.output = storage.absolute_url(args.output)
    if args.action == "lease":
        url = lease_url(args.output, args.run_id)
        try:
            doc = json.loads(storage.read_text(url))
        except FileNotFoundError:
            print(f"run {args.run_id}: no lease (no writer active)")
            return 0
        print(f"run {args.run_id}: lease held by {describe(doc)}")
        return 0
    report = repair_run(args.output, args.run_id, dry_run=args.dry_run)
    verb = "would drop" if args.dry_run else "dropped"
    print(
        f"run {args.run_id}: {report['files']} files, {report['rows']} rows; {verb} "
        f"{report['duplicates_dropped']} duplicate rows ({len(report['rewritten'])} files rewritten, "
        f"{len(report['removed'])} removed)"
    )
    if not args.dry_run:
        print(f"next: re-run the same command with --run-id {args.run_id} to score the rest and commit")
    return 0
