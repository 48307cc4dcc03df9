"""`adray review --output ROOT [--report PATH]`: one self-contained HTML page to label the items worth a look.

Per category and detector: the ``--per-category`` highest-scored items not yet labelled and ``--sample``
random low-scored ones (``--seed``), each with its anomaly map, regions, score and decision; keyboard and
buttons mark items normal / anomalous; *Export* downloads a CSV for ``adray labels import`` (see
:mod:`adray.review.page`).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", "--results", dest="output", required=True, metavar="ROOT",
        help="results root written by adray score (local path or s3://...)",
    )  # fmt: skip
    parser.add_argument(
        "--report", default="review.html", metavar="PATH",
        help="where to write the page: a .html file or a folder (PATH/review.html); default ./review.html",
    )  # fmt: skip
    parser.add_argument("--per-category", type=int, default=50, help="highest-scored unlabelled items per "
                        "category and detector (default 50)")  # fmt: skip
    parser.add_argument("--sample", type=int, default=10, help="random low-scored items per category and "
                        "detector, to catch misses (default 10)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the low-scored sample (default 0)")
    parser.add_argument("--detector", action="append", default=[], help="only this detector (repeatable)")
    parser.add_argument("--category", action="append", default=[], help="only this category (repeatable)")
    parser.add_argument("--thumb-size", type=int, default=224, help="longer side of thumbnails in px")
    parser.add_argument("--max-mb", type=float, default=40.0, help="cap on the page's embedded thumbnails "
                        "in MB; cards past it are left out and the page says how many (default 40)")  # fmt: skip
    parser.add_argument("--page-size", type=int, default=24, help="cards per page in the browser")
    parser.add_argument("--reviewer", default="", help="pre-filled labelled_by of the exported labels")


def run(args: argparse.Namespace) -> int:
    from adray.errors import UserError
    from adray.review import PageConfig, Selection, write_review

    for name in ("per_category", "sample", "thumb_size", "page_size"):
        if getattr(args, name) < (0 if name in ("per_category", "sample") else 1):
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.max_mb <= 0:
        raise UserError(f"--max-mb must be positive, got {args.max_mb}")
    sel = Selection(args.per_category, args.sample, args.seed, tuple(args.detector), tuple(args.category))
    cfg = PageConfig(args.thumb_size, int(args.max_mb * 1e6), args.page_size, args.reviewer)
    url, page = write_review(args.output, args.report, sel, cfg)
    print(f"review page: {url} ({len(page.html) / 1e6:.1f} MB, {page.cards} card(s))")
    if page.left_out:
        print(f"left out: {page.left_out} card(s) past --max-mb {args.max_mb:g}")
    if page.unreadable:
        print(f"unreadable images: {page.unreadable} card(s) show the error instead")
    print(f"already labelled (not shown): {page.labelled_items} item(s)")
    if not page.cards:
        print("nothing to review: no unlabelled ok rows under this root (and filters)")
    return 0
