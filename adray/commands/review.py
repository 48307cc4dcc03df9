"""`adray review --output ROOT [--report PATH]`: one self-contained HTML page to label the items worth a look.

Per category and detector: the ``--per-category`` highest-scored items not yet labelled and ``--sample``
random low-scored ones (``--seed``), each with its anomaly map, regions, score and decision; keyboard and
buttons mark items normal / anomalous; *Export* downloads a CSV for ``adray labels import`` (see
:mod:`adray.review.page`).
"""

from __future__ import annotations

import argparse

from adray.config import add_flags
from adray.review.page import PageConfig
from adray.review.select import Selection


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", "--results", dest="output", required=True, metavar="ROOT",
        help="results root written by adray score (local path or s3://...)",
    )  # fmt: skip
    parser.add_argument(
        "--report", default="review.html", metavar="PATH",
        help="where to write the page: a .html file or a folder (PATH/review.html); default ./review.html",
    )  # fmt: skip
    add_flags(parser, Selection, ("per_category", "sample", "seed"))
    parser.add_argument("--detector", action="append", default=[], help="only this detector (repeatable)")
    parser.add_argument("--category", action="append", default=[], help="only this category (repeatable)")
    add_flags(parser, PageConfig, ("thumb_size",))
    parser.add_argument(  # PageConfig.max_bytes, in MB on the command line (its default read from there)
        "--max-mb", type=float, default=PageConfig().max_bytes / 1e6, help="cap on the page's embedded "
        "thumbnails in MB; cards past it are left out and the page says how many (default 40)",
    )  # fmt: skip
    add_flags(parser, PageConfig, ("page_size", "reviewer"))


def run(args: argparse.Namespace) -> int:
    from adray.config import flag_values
    from adray.errors import UserError
    from adray.review import write_review

    if args.max_mb <= 0:
        raise UserError(f"--max-mb must be positive, got {args.max_mb}")
    sel = Selection(
        **flag_values(Selection, args), detectors=tuple(args.detector), categories=tuple(args.category)
    )
    cfg = PageConfig(**flag_values(PageConfig, args), max_bytes=int(args.max_mb * 1e6))
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
