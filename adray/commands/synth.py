"""`adray synth`: write a synthetic MVTec AD and/or MVTec 3D-AD dataset to any storage URL."""

from __future__ import annotations

import argparse

from adray import storage
from adray.synthetic import CATEGORIES_2D, CATEGORIES_3D, generate_mvtec_3d, generate_mvtec_ad


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, help="destination URL or path (local, file://, s3://...)")
    parser.add_argument("--layout", choices=("mvtec", "mvtec3d", "both"), default="mvtec")
    parser.add_argument("--size", type=int, default=None, help="image size (default 128 for 2D, 64 for 3D)")
    parser.add_argument(
        "--width",
        type=int,
        default=None,
        help="3D layout only: scan width for non-square scans (--size is then the height; default: square)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--categories",
        default=None,
        help="comma-separated categories (2D: carpet,grid,leather,bottle,nut; 3D: cookie,potato)",
    )
    parser.add_argument("--defects", default=None, help="comma-separated defect types (default: all)")
    parser.add_argument("--n-train", type=int, default=8)
    parser.add_argument("--n-validation", type=int, default=4, help="3D layout only")
    parser.add_argument("--n-test-good", type=int, default=4)
    parser.add_argument("--n-test-per-defect", type=int, default=3)


def run(args: argparse.Namespace) -> int:
    chosen = _split(args.categories)
    defects = _split(args.defects)
    counts = {
        "n_train": args.n_train,
        "n_test_good": args.n_test_good,
        "n_test_per_defect": args.n_test_per_defect,
    }
    if args.layout in ("mvtec", "both"):
        url = storage.join_url(args.output, "mvtec") if args.layout == "both" else args.output
        kwargs = dict(counts, seed=args.seed, image_size=args.size or 128, defects=defects)
        if chosen:
            kwargs["categories"] = _for_layout(chosen, CATEGORIES_2D, args.layout)
        print(generate_mvtec_ad(url, **kwargs).to_text())
    if args.layout in ("mvtec3d", "both"):
        url = storage.join_url(args.output, "mvtec3d") if args.layout == "both" else args.output
        kwargs = dict(counts, seed=args.seed, image_size=args.size or 64, defects=defects)
        kwargs["n_validation"] = args.n_validation
        kwargs["image_width"] = args.width
        if chosen:
            kwargs["categories"] = _for_layout(chosen, CATEGORIES_3D, args.layout)
        print(generate_mvtec_3d(url, **kwargs).to_text())
    return 0


def _split(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _for_layout(chosen: tuple[str, ...], known: tuple[str, ...], layout: str) -> tuple[str, ...]:
    """With ``--layout both`` each layout takes the categories it knows; otherwise all must be known."""
    return tuple(c for c in chosen if c in known) if layout == "both" else chosen
