"""WinCLIP scoring speed: zero-shot and k-shot images/s beside a plain CLIP image forward on the same images.

``python jobs/benchmark.py winclip`` (defaults: ViT-B-16-plus-240 with seeded random weights, so nothing
is downloaded; a batch of 4 images at 240 px; 2 threads; fp32 and bf16). Each timing is the best of
``--repeats`` runs after one warm-up. bf16 rows also report the largest deviation of their image scores
and maps from the fp32 ones (fp32 is the reference) and whether it is within the documented tolerance
(``BF16_TOLERANCE``). The notes say what this CPU offers (:mod:`adray.cpu`, caps honoured) and which
precision ``auto`` chose; a precision this machine does not run natively (bf16 without AMX/AVX512_BF16)
is reported as falling back and not timed (a bf16 matmul there is ~100x slower than fp32). The machine's
load average is printed because shared machines make timings noisy.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Annotated

import numpy as np
import torch
from pydantic import ConfigDict, Field

from adray.backbones.open_clip import DEFAULT_MODEL
from adray.config import Config, Flag, add_flags, flag_values

#: anomalib 2.7 + open_clip 2.24, random weights, batch 4, 2 threads, this project's 2-core AMX Xeon (issue text)
ANOMALIB_IMAGES_PER_S = 0.26


class WinclipBenchConfig(Config):
    """The flags of ``jobs/benchmark.py winclip``."""

    model_config = ConfigDict(title="winclip benchmark configuration")

    model: Annotated[str, Flag("--model")] = Field(DEFAULT_MODEL, description="open_clip model name")
    weights: Annotated[str, Flag("--weights")] = Field(
        "random", description="random (default, no download), pretrained or a file"
    )
    batch_size: Annotated[int, Flag("--batch-size")] = 4
    shots: Annotated[int, Flag("--shots")] = Field(4, description="reference images for the k-shot rows")
    threads: Annotated[int, Flag("--threads")] = Field(2, description="torch CPU threads")
    repeats: Annotated[int, Flag("--repeats")] = Field(2, description="timed runs per row (best is reported)")
    precisions: Annotated[str, Flag("--precisions")] = Field(
        "fp32,bf16", description="comma-separated: fp32, bf16, fp16 (CUDA)"
    )
    device: Annotated[str | None, Flag("--device")] = Field(
        None, description="cpu or cuda (default: CUDA when available)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, WinclipBenchConfig, WinclipBenchConfig.model_fields)


def run(flags: argparse.Namespace) -> dict:
    from adray.backbones.open_clip import load_clip
    from adray.cpu import cpu_capabilities
    from adray.detectors.winclip import create_winclip
    from adray.detectors.winclip.model import effective_precision

    cfg = WinclipBenchConfig(**flag_values(WinclipBenchConfig, flags))
    torch.set_num_threads(cfg.threads)
    backbone = load_clip(cfg.model, cfg.weights, device=cfg.device)
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (cfg.batch_size + cfg.shots, 240, 240, 3), dtype=np.uint8)
    rows: list[dict] = []
    outputs: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    queries = references = None
    fallbacks: list[str] = []
    for precision in [p.strip() for p in cfg.precisions.split(",") if p.strip()]:
        runs, why = effective_precision(precision, backbone.device)
        if runs != precision and precision != "auto":
            rows.append({"mode": "winclip", "precision": precision, "runs": f"{runs} (fallback, not timed)"})
            fallbacks.append(f"{precision}: {why}")
            continue
        detector = create_winclip(
            class_name="bottle",
            weights=cfg.weights,
            model_name=cfg.model,
            device=cfg.device,
            precision=precision,
        )
        if queries is None:
            images = torch.from_numpy(np.stack([detector.preprocess({"image": im})["image"] for im in raw]))
            queries, references = images[: cfg.batch_size], list(raw[cfg.batch_size :])
            seconds, _ = _best(_encode_image, (backbone, queries), cfg.repeats, backbone.device)
            rows.append(_row("clip encode_image", "fp32", cfg.batch_size, seconds))
        seconds, outputs[("zero-shot", precision)] = _best(
            _score, (detector, queries), cfg.repeats, backbone.device
        )
        runs = detector.effective_precision
        rows.append(_row("winclip zero-shot", precision, cfg.batch_size, seconds, outputs, "zero-shot", runs))
        start = time.perf_counter()
        detector.set_reference_images(references)
        setup = time.perf_counter() - start
        mode = f"winclip {cfg.shots}-shot"
        seconds, outputs[(mode, precision)] = _best(_score, (detector, queries), cfg.repeats, backbone.device)
        rows.append(_row(mode, precision, cfg.batch_size, seconds, outputs, mode, runs))
        rows[-1]["reference setup s"] = round(setup, 2)
    caps = cpu_capabilities()
    auto = effective_precision("auto", backbone.device)[0]
    notes = _notes(cfg, backbone.device, rows, fallbacks, caps, auto)
    result = {"name": "winclip", "rows": rows, "notes": notes, "cpu": caps.as_dict(), "auto": auto}
    print(_table(result))
    return result


def _notes(
    cfg: WinclipBenchConfig, device: torch.device, rows: list[dict], fallbacks: list[str], caps, auto: str
) -> list[str]:
    """The run's settings, the CPU, what ``auto`` chose, the deviation columns' meaning, fallbacks, and
    (ViT-B on an AMX CPU) the ratio to anomalib's figure."""
    from adray.detectors.winclip.model import BF16_TOLERANCE

    zero_shot = {r["precision"]: r["images/s"] for r in rows if r["mode"] == "winclip zero-shot"}
    zero, bf16 = zero_shot.get("fp32"), zero_shot.get("bf16")
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    notes = [
        f"{cfg.model} weights={cfg.weights} batch={cfg.batch_size} threads={cfg.threads} "
        f"device={device}; best of {cfg.repeats} after a warm-up; load average {load}",
        f"CPU: {caps.summary()}",
        f"precision auto chose: {auto} "
        + ("(CUDA autocast)" if device.type == "cuda" else "(bf16 windows on AMX only, else fp32)"),
        "deviation columns: max |bf16 - fp32| over the batch's image scores / maps (fp32 is the reference); "
        f"tolerance {BF16_TOLERANCE['image_score']:g} / {BF16_TOLERANCE['anomaly_map']:g}",
        *(f"fallback {f}" for f in fallbacks),
    ]
    if zero and cfg.model == DEFAULT_MODEL and device.type == "cpu" and caps.amx_bf16:
        notes.append(
            f"anomalib 2.7 WinCLIP zero-shot on the AMX Xeon (issue text): {ANOMALIB_IMAGES_PER_S} "
            f"images/s; fp32 here: {zero / ANOMALIB_IMAGES_PER_S:.2f}x, bf16 here: "
            + (f"{bf16 / ANOMALIB_IMAGES_PER_S:.2f}x" if bf16 else "not run")
        )
    return notes


def _encode_image(backbone, images: torch.Tensor) -> None:
    with torch.inference_mode():
        backbone.model.encode_image(images.to(backbone.device))


def _score(detector, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    return detector.score(images).numpy()


def _best(fn: Callable, fn_args: tuple, repeats: int, device: torch.device) -> tuple[float, object]:
    """Best wall time of ``repeats`` runs after a warm-up (allocator, kernels, bf16 weight copy), and the output."""
    out = fn(*fn_args)
    best = float("inf")
    for _ in range(max(1, repeats)):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn(*fn_args)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


def _row(mode, precision, batch, seconds, outputs=None, key=None, runs=None) -> dict:
    from adray.detectors.winclip.model import BF16_TOLERANCE

    row = {
        "mode": mode,
        "precision": precision,
        "runs": runs or precision,
        "images/s": round(batch / seconds, 3),
        "s/batch": round(seconds, 3),
    }
    if outputs is not None and precision != "fp32" and (key, "fp32") in outputs:
        (scores, maps), (ref_scores, ref_maps) = outputs[(key, precision)], outputs[(key, "fp32")]
        row["max |d score|"] = float(np.abs(scores - ref_scores).max())
        row["max |d map|"] = float(np.abs(maps - ref_maps).max())
        row["within tolerance"] = (
            row["max |d score|"] <= BF16_TOLERANCE["image_score"]
            and row["max |d map|"] <= BF16_TOLERANCE["anomaly_map"]
        )
    return row


def _table(result: dict) -> str:
    from adray.bench.tables import format_rows

    return format_rows(result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args())
