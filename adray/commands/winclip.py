"""`adray winclip`: score local images with WinCLIP zero-shot (or WinCLIP+ with ``--reference``).

Prints one line per image: ``path<TAB>score``. With ``--masks DIR`` each anomaly map is written at the
image's resolution as a 16-bit PNG that mirrors the image's path relative to the inputs' common
folder (``DIR/good/000.png``, ``DIR/crack/000.png``), and ``DIR/maps.jsonl`` records each map's
``map_min``/``map_max`` so the PNGs decode back to scores (see :mod:`adray.io.masks`). An unreadable
image is named on stderr and skipped; the others are scored, and the command then exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Annotated, Any

import numpy as np
from pydantic import ConfigDict, Field

from adray.backbones.open_clip import DEFAULT_MODEL, DEFAULT_TAG
from adray.config import Config, Flag, add_flags, flag_values
from adray.detectors.winclip.config import WinClipConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class WinClipCommandOptions(Config):
    """The flags of ``adray winclip`` that are no WinCLIP setting (those are :class:`WinClipConfig`'s
    ``--class-name``, ``--precision`` and ``--defect-type``): the open_clip backbone, the device and the
    images per batch. A bad value raises a one-line ConfigError."""

    model_config = ConfigDict(title="winclip options")

    weights: Annotated[str, Flag("--weights")] = Field(
        "pretrained", description="pretrained (the hub tag, cached), random (tests) or a weights file"
    )
    model_name: Annotated[str, Flag("--model", dest="model")] = Field(
        DEFAULT_MODEL, description="open_clip model name"
    )
    pretrained_tag: Annotated[str | None, Flag("--pretrained-tag")] = Field(
        None,
        description=f"open_clip pretrained tag (default: the model's own; {DEFAULT_TAG} for {DEFAULT_MODEL})",
    )
    device: Annotated[str | None, Flag("--device")] = Field(
        None, description="cpu, cuda, cuda:1 (default: CUDA when available)"
    )
    batch_size: Annotated[int, Flag("--batch-size")] = Field(8, ge=1)

    def backbone_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`adray.detectors.winclip.create_winclip` these options set."""
        return self.model_dump(exclude={"batch_size"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags: WinCLIP settings generated from :class:`WinClipConfig`'s fields, the rest from
    :class:`WinClipCommandOptions`' (defaults, types and help stated once, on the fields)."""
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)"
    )
    add_flags(parser, WinClipConfig, ("class_name",))
    parser.add_argument(
        "--reference",
        nargs="+",
        action="extend",
        default=[],
        metavar="IMG",
        help="normal reference images (files or folders) for k-shot WinCLIP+",
    )
    parser.add_argument("--masks", metavar="DIR", help="write anomaly maps as 16-bit PNGs to this folder")
    add_flags(parser, WinClipCommandOptions, ("weights", "model_name", "pretrained_tag"))
    add_flags(parser, WinClipConfig, ("precision",))
    add_flags(parser, WinClipCommandOptions, ("device", "batch_size"))
    defect_types = list(WinClipConfig.model_fields["defect_types"].default)  # repeatable: appended to
    parser.add_argument(
        "--defect-type", action="append", default=defect_types, help="defect-specific prompt state"
    )


def run(args: argparse.Namespace) -> int:
    from adray.errors import UserError

    options = WinClipCommandOptions(**flag_values(WinClipCommandOptions, args))
    images = list(_image_files(args.paths))
    references = list(_image_files(args.reference))
    if not images:
        raise UserError(f"no images found under {args.paths}")
    detector = _build_detector(args, options, references)
    names = map_names(images, args.paths) if args.masks else {}
    index = None
    if args.masks:
        os.makedirs(args.masks, exist_ok=True)
        index = open(os.path.join(args.masks, "maps.jsonl"), "w")  # this run's maps only
    mode = f"{detector.k_shot}-shot" if detector.k_shot else "zero-shot"
    precision = detector.effective_precision
    if precision != args.precision:  # auto's choice, or a fallback (logged once with the reason)
        precision += f" ({args.precision} requested)"
    print(
        f"# winclip {mode} class={args.class_name!r} precision={precision} version={detector.version}",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    unreadable: list[str] = []
    try:
        for start in range(0, len(images), options.batch_size):
            batch = images[start : start + options.batch_size]
            unreadable += _score_paths(detector, batch, args.masks, names, index)
    finally:
        if index is not None:
            index.close()
    scored = len(images) - len(unreadable)
    print(f"# {scored} images in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    if unreadable:
        print(
            f"adray winclip: error: {len(unreadable)} of {len(images)} images could not be read "
            f"(named above); the other {scored} were scored",
            file=sys.stderr,
        )
        return 2
    return 0


def _build_detector(args: argparse.Namespace, options: WinClipCommandOptions, references: list[str]) -> Any:
    """The WinCLIP detector the flags ask for, with the reference images read (few-shot) or none
    (zero-shot). Raises ``UserError`` for an unreadable reference image, unavailable weights or a bad
    option."""
    from adray.backbones.weights import WeightsUnavailableError
    from adray.detectors.winclip import create_winclip
    from adray.errors import UserError

    reference_arrays = []
    for path in references:
        try:
            reference_arrays.append(_read(path))
        except Exception as e:  # any decode failure of a file the user named is theirs to fix
            raise UserError(f"cannot read reference image {path}: {_why(e)}") from None
    try:
        return create_winclip(
            **flag_values(WinClipConfig, args),  # class_name, precision
            **options.backbone_kwargs(),
            defect_types=args.defect_type,
            reference_images=reference_arrays or None,
        )
    except (WeightsUnavailableError, ValueError) as e:
        raise UserError(str(e)) from None


def _score_paths(
    detector: Any, paths: list[str], masks: str | None, names: dict[str, str], index
) -> list[str]:
    """Score one batch of image files: print ``path<TAB>score`` per image, write its map under ``masks``
    (when given); returns the paths that could not be read (each named on stderr, the others scored)."""
    chunk, arrays, inputs, unreadable = [], [], [], []
    for path in paths:
        try:
            array = _read(path)
            inputs.append(detector.preprocess({"image": array})["image"])
        except Exception as e:  # one unreadable image must not stop the others
            print(f"adray winclip: error: cannot read {path}: {_why(e)}", file=sys.stderr)
            unreadable.append(path)
            continue
        chunk.append(path)
        arrays.append(array)
    if not chunk:
        return unreadable
    scores, maps = detector.score({"image": np.stack(inputs)}).numpy()
    for path, array, score, amap in zip(chunk, arrays, scores, maps):
        print(f"{path}\t{score:.6f}", flush=True)
        if masks:
            _write_map(masks, names[path], path, amap, array.shape[:2], index)
    return unreadable


def map_names(images: list[str], roots: list[str]) -> dict[str, str]:
    """The map PNG of each image, relative to the ``--masks`` folder: the image's path relative to the
    common folder of the inputs, with ``.png`` for its suffix (``good/000.png``, ``crack/000.png``), or with
    ``.png`` appended to the full name where two images differ only in suffix (``a/0.jpg.png``)."""
    folders = [os.path.abspath(r if os.path.isdir(r) else os.path.dirname(r) or ".") for r in roots]
    base = os.path.commonpath(folders) if folders else os.getcwd()
    rel = {p: os.path.relpath(os.path.abspath(p), base) for p in images}
    stems = [os.path.splitext(r)[0] for r in rel.values()]
    out = {}
    for path, r in rel.items():
        stem = os.path.splitext(r)[0]
        out[path] = (stem if stems.count(stem) == 1 else r) + ".png"
    return out


def _why(exc: BaseException) -> str:
    """What went wrong reading an image, on one line (type and message, never the file's bytes)."""
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _image_files(paths: list[str]) -> Iterator[str]:
    from adray.errors import UserError

    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    if name.lower().endswith(IMAGE_SUFFIXES):
                        yield os.path.join(root, name)
        elif os.path.isfile(path):
            yield path
        else:
            raise UserError(f"{path} is neither a file nor a folder")


def _read(path: str) -> np.ndarray:
    from adray.io.samples import read_sample

    return read_sample({"uri": path}).raise_for_status().image


def _write_map(folder: str, name: str, path: str, amap: np.ndarray, size: tuple[int, int], index) -> None:
    from adray.io.masks import encode_map_png16, resize_map

    png, map_min, map_max = encode_map_png16(resize_map(amap, size))
    target = os.path.join(folder, name)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "wb") as f:
        f.write(png)
    index.write(json.dumps({"image": path, "map": name, "map_min": map_min, "map_max": map_max}) + "\n")
