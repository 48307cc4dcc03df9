"""Compare M3DM modes on a (generated) MVTec 3D-AD layout: image AUROC on 3D-only, RGB-visible and all defects.

    .venv/bin/python jobs/benchmark.py m3dm-compare --data /tmp/m3dm-synth --generate --tiny
    .venv/bin/python -m adray.bench.m3dm_compare --data /tmp/m3dm-synth --generate --tiny   # standalone

(``python -m adray.train.m3dm_compare`` still runs this; it moved here from the training room.)

Builds one artifact per mode with :func:`adray.train.m3dm.build_m3dm` (Ray: its own local cluster unless
``--address`` or ``RAY_ADDRESS`` names one), scores every test item of the category with the loaded
detector and prints a table. ``--generate`` first writes the synthetic dataset (:func:`adray.synthetic.generate_mvtec_3d`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Annotated, Any

import numpy as np
from pydantic import ConfigDict, Field

from adray import storage
from adray.backbones.vit_features import ViTConfig
from adray.config import Config, Flag, add_flags, flag_values
from adray.detectors.m3dm.config import M3DMConfig, tiny_config
from adray.pipeline.cluster import add_address_argument, ensure_ray
from adray.pipeline.spec import WEIGHT_KEYWORDS
from adray.tables import text_table

MODES = {
    "rgb": ("rgb", False),
    "xyz": ("xyz", False),
    "rgb+xyz": ("rgb+xyz", False),
    "rgb+xyz+uff": ("rgb+xyz", True),
}
GROUPS = {"3d_only": lambda d: d.endswith("_3d_only"), "rgb_visible": lambda d: not d.endswith("_3d_only")}


def score_test_items(
    artifact_uri: str, data_uri: str, category: str, batch_size: int = 8
) -> list[dict[str, Any]]:
    """``[{item_id, defect_type, label, image_score}]`` for every test item (detector.score, no pipeline)."""
    from adray.catalog import open_manifest, readable_items
    from adray.detectors.base import load_detector
    from adray.train.m3dm import read_sample

    det = load_detector(artifact_uri)
    table = readable_items(open_manifest(data_uri, "auto", categories=[category])[0])
    rows = [r for r in table.to_pylist() if r["category"] == category and r["split"] == "test"]
    out: list[dict[str, Any]] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        prepared = [det.preprocess(read_sample(r["uri"], r["pc_uri"], det.config)) for r in chunk]
        batch = {k: np.stack([p[k] for p in prepared]) for k in prepared[0]}
        scores = det.score(batch).image_score.numpy()
        for r, s in zip(chunk, scores):
            out.append(
                {
                    "item_id": r["item_id"],
                    "defect_type": r["defect_type"],
                    "label": r["label"],
                    "image_score": float(s),
                }
            )
    return out


def auroc_by_group(scored: list[dict[str, Any]]) -> dict[str, float]:
    from adray.metrics import image_auroc

    good = [s["image_score"] for s in scored if s["label"] == 0]
    result = {}
    for name, keep in {**GROUPS, "all": lambda d: True}.items():
        bad = [s["image_score"] for s in scored if s["label"] == 1 and keep(str(s["defect_type"]))]
        if good and bad:
            result[name] = image_auroc(np.r_[np.zeros(len(good)), np.ones(len(bad))], np.r_[good, bad])
    return result


def mode_config(
    category: str,
    mode: str,
    fusion: bool,
    *,
    tiny: bool,
    weights: str,
    point_weights: str,
    uff_steps: int | None = None,
    seed: int = 0,
) -> M3DMConfig:
    """The build config of one compared mode: what ``adray build-m3dm`` builds with ``--mode``,
    ``--no-fusion`` (when not ``fusion``), ``--weights``, ``--point-weights``, ``--tiny`` and
    ``--uff-steps`` and its other flags at their defaults."""
    weights = storage.absolute_url(weights, keep=WEIGHT_KEYWORDS)  # read by Ray workers
    point_weights = storage.absolute_url(point_weights, keep=WEIGHT_KEYWORDS)
    if tiny:
        cfg = tiny_config(category, mode=mode, fusion=fusion, seed=seed)
        if weights != "pretrained":
            cfg = cfg.replace(vit=cfg.vit.replace(weights=weights))
    else:
        cfg = M3DMConfig(
            category=category,
            mode=mode,
            fusion=fusion,
            seed=seed,
            vit=ViTConfig(weights=weights, seed=seed),
            point_weights=point_weights,
            point_seed=seed,
        )
    if uff_steps:
        warmup = min(cfg.uff.warmup_steps, uff_steps // 3)
        cfg = cfg.replace(uff=cfg.uff.replace(steps=uff_steps, warmup_steps=warmup))
    return cfg


def compare_modes(
    data_uri: str,
    category: str,
    modes: list[str],
    work_uri: str,
    *,
    tiny: bool = True,
    workers: int = 2,
    uff_workers: int = 0,
    uff_steps: int | None = None,
    weights: str = "random",
    point_weights: str = "random",
) -> dict[str, dict[str, Any]]:
    """Build and score each mode; ``{mode: {"auroc": {...}, "version": ..., "build_s": ...}}``."""
    from adray.train.m3dm import build_m3dm

    results = {}
    for name in modes:
        mode, fusion = MODES[name]
        config = mode_config(
            category,
            mode,
            fusion,
            tiny=tiny,
            weights=weights,
            point_weights=point_weights,
            uff_steps=uff_steps,
        )
        out = os.path.join(work_uri, f"m3dm-{name.replace('+', '_')}")
        t0 = time.perf_counter()
        summary = build_m3dm(data_uri, out, config, workers=workers, uff_workers=uff_workers)
        build_s = time.perf_counter() - t0
        scored = score_test_items(out, data_uri, category)
        results[name] = {
            "auroc": auroc_by_group(scored),
            "version": summary.version,
            "build_s": build_s,
            "n_test": len(scored),
            "artifact": out,
        }
    return results


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Per mode: image AUROC on 3D-only, RGB-visible and all defects (nan: no such items), build seconds."""
    nan = float("nan")
    cells = [
        [
            name,
            *(f"{r['auroc'].get(g, nan):.3f}" for g in ("3d_only", "rgb_visible", "all")),
            f"{r['build_s']:.1f}",
        ]
        for name, r in results.items()
    ]
    return text_table(("mode", "3d_only", "rgb_visible", "all", "build_s"), cells, rule=False)


class M3dmCompareConfig(Config):
    """The flags of ``jobs/benchmark.py m3dm-compare`` (and of ``python -m adray.bench.m3dm_compare``);
    ``--address``: :func:`add_address_argument`."""

    model_config = ConfigDict(title="m3dm-compare configuration")

    data: Annotated[str | None, Flag("--data")] = Field(
        None,
        description="MVTec 3D-AD layout prefix (written first with --generate; default: a new temporary "
        "folder, generated)",
    )
    category: Annotated[str, Flag("--category")] = "cookie"
    modes: Annotated[str, Flag("--modes")] = ",".join(MODES)
    generate: Annotated[bool, Flag("--generate")] = Field(
        False, description="write the synthetic dataset to --data first"
    )
    image_size: Annotated[int, Flag("--image-size")] = 64
    n_train: Annotated[int, Flag("--n-train")] = 24
    n_test: Annotated[int, Flag("--n-test")] = Field(8, description="test items per defect type (and good)")
    seed: Annotated[int, Flag("--seed")] = 0
    tiny: Annotated[bool, Flag("--tiny")] = Field(False, description="CI-sized random backbones")
    workers: Annotated[int, Flag("--workers")] = 2
    uff_workers: Annotated[int, Flag("--uff-workers")] = 0
    uff_steps: Annotated[int | None, Flag("--uff-steps")] = None
    work: Annotated[str | None, Flag("--work")] = Field(
        None, description="where artifacts go (default: a temporary folder)"
    )
    address: str | None = None  # Ray cluster; flag: cluster.add_address_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``jobs/benchmark.py m3dm-compare`` (and of ``python -m adray.bench.m3dm_compare``)."""
    add_flags(parser, M3dmCompareConfig, [f for f in M3dmCompareConfig.model_fields if f != "address"])
    add_address_argument(parser)


def run(flags: argparse.Namespace) -> dict[str, Any]:
    """Generate (when asked or when ``--data`` is not given), build and score every mode; print the table.

    Returns the benchmark result ``{"name", "rows", "notes"}`` (one row per mode: AUROC per defect group)."""
    cfg = M3dmCompareConfig(**flag_values(M3dmCompareConfig, flags), address=flags.address)
    data, generate = cfg.data, cfg.generate
    if data is None:
        data, generate = tempfile.mkdtemp(prefix="m3dm-compare-data-"), True
    data = storage.absolute_url(data)  # read by Ray workers, whose working directory differs
    if generate:
        from adray.synthetic import generate_mvtec_3d

        generate_mvtec_3d(
            data,
            categories=(cfg.category,),
            image_size=cfg.image_size,
            n_train=cfg.n_train,
            n_validation=max(4, cfg.n_train // 4),
            n_test_good=cfg.n_test,
            n_test_per_defect=cfg.n_test,
            seed=cfg.seed,
        )
    ensure_ray(cfg.address, log_to_driver=False, configure_logging=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    work = storage.absolute_url(cfg.work) if cfg.work else tempfile.mkdtemp(prefix="m3dm-compare-")
    results = compare_modes(
        data,
        cfg.category,
        cfg.modes.split(","),
        work,
        tiny=cfg.tiny,
        workers=cfg.workers,
        uff_workers=cfg.uff_workers,
        uff_steps=cfg.uff_steps,
    )
    print(
        json.dumps(results, indent=2, default=str)
        if getattr(flags, "print_json", False)
        else format_table(results)
    )
    rows = [
        {"mode": m, **r["auroc"], "build_s": r["build_s"], "n_test": r["n_test"]} for m, r in results.items()
    ]
    return {
        "name": "m3dm-compare",
        "rows": rows,
        "notes": [f"category {cfg.category}, artifacts under {work}"],
    }


def main(argv: list[str] | None = None, prog: str = "python -m adray.bench.m3dm_compare") -> int:
    """Standalone command line: the same flags as ``jobs/benchmark.py m3dm-compare``."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_arguments(p)
    # jobs/benchmark.py gives every benchmark its own --json PATH; standalone, --json prints JSON
    p.add_argument("--json", dest="print_json", action="store_true", help="print JSON instead of a table")
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
