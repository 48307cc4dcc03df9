"""`adray winclip`: score local images with WinCLIP zero-shot (or WinCLIP+ with ``--reference``).

Prints one line per image: ``path<TAB>score``. With ``--masks DIR`` each anomaly map is written at the
image's resolution as a 16-bit PNG (``DIR/<image stem>.png``) and ``DIR/maps.jsonl`` records each map's
``map_min``/``map_max`` so the PNGs decode back to scores (see :mod:`adray.io.masks`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)"
    )
    parser.add_argument("--class-name", required=True, help="the object's name, e.g. bottle or metal_nut")
    parser.add_argument(
        "--reference",
        nargs="+",
        action="extend",
        default=[],
        metavar="IMG",
        help="normal reference images (files or folders) for k-shot WinCLIP+",
    )
    parser.add_argument("--masks", metavar="DIR", help="write anomaly maps as 16-bit PNGs to this folder")
    parser.add_argument(
        "--weights",
        default="pretrained",
        help="pretrained (the hub tag, cached), random (tests) or a weights file",
    )
    parser.add_argument("--model", default="ViT-B-16-plus-240", help="open_clip model name")
    parser.add_argument(
        "--pretrained-tag",
        default=None,
        help="open_clip pretrained tag (default: the model's own; laion400m_e31 for ViT-B-16-plus-240)",
    )
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--defect-type", action="append", default=[], help="defect-specific prompt state")


def run(args: argparse.Namespace) -> int:
    from adray.backbones.weights import WeightsUnavailableError
    from adray.detectors.winclip import create_winclip

    images = list(_image_files(args.paths))
    references = list(_image_files(args.reference))
    if not images:
        print(f"adray winclip: error: no images found under {args.paths}", file=sys.stderr)
        return 2
    try:
        detector = create_winclip(
            class_name=args.class_name,
            weights=args.weights,
            model_name=args.model,
            pretrained_tag=args.pretrained_tag,
            device=args.device,
            precision=args.precision,
            defect_types=args.defect_type,
            reference_images=[_read(p) for p in references] or None,
        )
    except (WeightsUnavailableError, ValueError) as e:
        print(f"adray winclip: error: {e}", file=sys.stderr)
        return 2
    if args.masks:
        os.makedirs(args.masks, exist_ok=True)
    mode = f"{detector.k_shot}-shot" if detector.k_shot else "zero-shot"
    precision = detector.effective_precision
    if precision != args.precision:  # auto's choice, or a fallback (logged once with the reason)
        precision += f" ({args.precision} requested)"
    print(
        f"# winclip {mode} class={args.class_name!r} precision={precision} version={detector.version}",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    for start in range(0, len(images), args.batch_size):
        chunk = images[start : start + args.batch_size]
        arrays = [_read(p) for p in chunk]
        batch = np.stack([detector.preprocess({"image": a})["image"] for a in arrays])
        scores, maps = detector.score({"image": batch}).numpy()
        for path, array, score, amap in zip(chunk, arrays, scores, maps):
            print(f"{path}\t{score:.6f}", flush=True)
            if args.masks:
                _write_map(args.masks, path, amap, array.shape[:2])
    print(f"# {len(images)} images in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


def _image_files(paths: list[str]) -> Iterator[str]:
    for path in paths:
        if os.path.isdir(path):
            for root, _, files in sorted(os.walk(path)):
                for name in sorted(files):
                    if name.lower().endswith(IMAGE_SUFFIXES):
                        yield os.path.join(root, name)
        elif os.path.isfile(path):
            yield path
        else:
            raise SystemExit(f"adray winclip: error: {path} is neither a file nor a folder")


def _read(path: str) -> np.ndarray:
    from adray.io.images import decode_image

    with open(path, "rb") as f:
        return decode_image(f.read())


def _write_map(folder: str, path: str, amap: np.ndarray, size: tuple[int, int]) -> None:
    from adray.io.masks import encode_map_png16, resize_map

    png, map_min, map_max = encode_map_png16(resize_map(amap, size))
    name = os.path.splitext(os.path.basename(path))[0] + ".png"
    with open(os.path.join(folder, name), "wb") as f:
        f.write(png)
    with open(os.path.join(folder, "maps.jsonl"), "a") as f:
        f.write(json.dumps({"image": path, "map": name, "map_min": map_min, "map_max": map_max}) + "\n")
