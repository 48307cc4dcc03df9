"""`adray score` / `python jobs/score.py`: score an archive with one or more detectors on Ray.

Flags follow one convention across jobs (--input, --output, --detector, --weights, --run-id, --class-name,
resource flags). The driver starts its own embedded Ray cluster unless told to attach (``--address``, or
``RAY_ADDRESS`` as under ``ray job submit``); see :mod:`adray.pipeline.cluster`.
"""

from __future__ import annotations

import argparse
import json
import logging

from adray.pipeline.cluster import add_address_argument
from adray.pipeline.spec import ScoreConfig, parse_env, parse_options

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("data")
    io.add_argument(
        "--input",
        required=True,
        help="dataset prefix with a known layout, or a manifest URI (.parquet/.csv/.jsonl)",
    )
    io.add_argument(
        "--output", required=True, help="storage root for results/, masks/, runs/ (local path or s3://...)"
    )
    io.add_argument(
        "--layout",
        default="auto",
        help="dataset layout when --input is a prefix (auto, mvtec, mvtec3d, visa, folder)",
    )
    io.add_argument(
        "--split",
        default="test",
        help="manifest split to score (train, validation, test) or 'all' (default: test)",
    )
    io.add_argument(
        "--category",
        dest="categories",
        action="append",
        default=None,
        metavar="NAME",
        help="score only this category (repeatable)",
    )
    io.add_argument("--limit", type=int, default=None, help="score at most N items (smoke runs)")
    io.add_argument(
        "--allow-prefix",
        dest="allow_prefixes",
        action="append",
        default=None,
        metavar="PREFIX",
        help="read only item URIs under PREFIX (repeatable; e.g. s3://bucket/images); any other URI gets a "
        "row with status not_allowed. By default a manifest's URIs are read with the job's rights, whatever "
        "they name",
    )
    io.add_argument(
        "--max-pixels",
        type=int,
        default=64_000_000,
        help="images over this many pixels get status too_large (decompression-bomb guard)",
    )
    io.add_argument(
        "--max-points",
        type=int,
        default=64_000_000,
        help="point clouds whose header declares more points get status too_large (checked before reading)",
    )
    io.add_argument(
        "--bit-depth",
        type=_bit_depth,
        default=None,
        metavar="auto|BITS",
        help="significant bits of 16-bit images, e.g. 12 for 12-bit camera data (default auto: the smallest "
        "of 10/12/14/16 bits that holds the image's maximum, noted in the row; a bit_depth manifest column "
        "sets it per item)",
    )

    det = parser.add_argument_group("detectors")
    det.add_argument(
        "--detector",
        dest="detectors",
        action="append",
        default=None,
        metavar="NAME_OR_ARTIFACT_URI",
        help="a registry name (winclip) or a fitted artifact folder URI (BGAD, M3DM); repeatable (default: winclip)",
    )
    det.add_argument(
        "--weights",
        default="pretrained",
        help="backbone weights of registry detectors: pretrained | random (tests/demos) | PATH",
    )
    det.add_argument(
        "--class-name", default=None, help="object name in zero-shot prompts (default: each item's category)"
    )
    det.add_argument(
        "--reference",
        default=None,
        metavar="URI",
        help="k-shot: manifest or prefix whose train split holds the normal reference items (default: --input)",
    )
    det.add_argument(
        "--shots",
        type=int,
        default=0,
        metavar="K",
        help="k-shot: K normal reference items per category from the train split (0 = zero-shot)",
    )
    det.add_argument("--seed", type=int, default=0, help="seed for choosing reference items")
    det.add_argument(
        "--detector-option",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="extra factory option for registry detectors, e.g. model_name=adray-tiny-clip (repeatable; JSON values parse)",
    )
    det.add_argument(
        "--plugin",
        dest="plugins",
        action="append",
        default=None,
        metavar="MODULE[:FUNCTION]",
        help="import MODULE (and call FUNCTION) in every worker before building detectors (extra detectors or model configs)",
    )

    run = parser.add_argument_group("run and resources")
    run.add_argument(
        "--run-id",
        default=None,
        help="run id (default: the Ray submission id under `ray job submit`, else run-<UTC time>); re-running an id adds no duplicate rows and resumes an interrupted run",
    )
    run.add_argument(
        "--num-gpus", type=float, default=0.0, help="GPUs per scoring actor (e.g. 1, or 0.5 to pack two)"
    )
    run.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per scoring actor")
    run.add_argument("--batch-size", type=int, default=16, help="items per scoring batch")
    run.add_argument("--actors", type=int, default=1, help="scoring actors (each loads the model once)")
    run.add_argument(
        "--decode-batch-size", type=int, default=16, help="items per decode/preprocess task batch"
    )
    run.add_argument("--decode-cpus", type=float, default=1.0, help="CPUs per decode task")
    run.add_argument(
        "--rows-per-block", type=int, default=64, help="manifest rows per input block (streaming granularity)"
    )
    run.add_argument(
        "--device",
        default=None,
        help="torch device in the scoring actors (default: cuda when --num-gpus > 0, else cpu)",
    )
    run.add_argument(
        "--no-retain-memory",
        dest="retain_memory",
        action="store_false",
        help="leave glibc's allocator at its defaults in the scoring actors (by default they keep freed "
        "blocks for reuse, which saves re-faulting large activations every batch; see adray/runtime.py)",
    )
    run.add_argument(
        "--actor-env",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="environment variable for the scoring actors (repeatable); CPU actors default to "
        "OMP_WAIT_POLICY=PASSIVE unless this or the driver's environment sets it",
    )
    run.add_argument(
        "--summary-json", default=None, metavar="URI", help="also write the run summary as JSON here"
    )
    add_address_argument(run)


def config_from_args(args: argparse.Namespace, *, delta: bool = False) -> ScoreConfig:
    return ScoreConfig(
        input=args.input,
        output=args.output,
        detectors=args.detectors or ["winclip"],
        weights=args.weights,
        run_id=args.run_id,
        class_name=args.class_name,
        detector_options=parse_options(args.detector_option),
        layout=args.layout,
        split=args.split,
        categories=args.categories,
        limit=args.limit,
        reference=args.reference,
        shots=args.shots,
        seed=args.seed,
        delta=delta,
        num_gpus=args.num_gpus,
        num_cpus=args.num_cpus,
        batch_size=args.batch_size,
        actors=args.actors,
        decode_batch_size=args.decode_batch_size,
        decode_cpus=args.decode_cpus,
        max_pixels=args.max_pixels,
        max_points=args.max_points,
        bit_depth=args.bit_depth,
        rows_per_block=args.rows_per_block,
        device=args.device,
        plugins=args.plugins or [],
        retain_memory=args.retain_memory,
        actor_env=parse_env(args.actor_env),
        address=args.address,
        allow_prefixes=args.allow_prefixes or [],
    )


def _bit_depth(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        bits = int(text)
    except ValueError:
        bits = 0
    if not 1 <= bits <= 16:
        raise argparse.ArgumentTypeError(f"want auto or an integer 1..16, got {text!r}")
    return bits


def run(args: argparse.Namespace, *, delta: bool = False) -> int:
    from adray import storage
    from adray.pipeline import RunCheckError, score_archive

    try:
        summary = score_archive(config_from_args(args, delta=delta))
    except RunCheckError as e:
        print(f"error: {e}")
        return 2
    print(summary.format_table())
    if args.summary_json:
        storage.write_text(args.summary_json, json.dumps(summary.to_dict(), indent=2, default=str))
    return 0
