"""`make demo` / `adray demo`: the whole product on a laptop, in one command.

1. writes a small synthetic MVTec-AD-layout archive (typed defects, pixel masks) to ``OUTPUT/archive``;
2. builds its manifest (``OUTPUT/manifest.parquet``) and prints the catalog summary;
3. scores the test split with WinCLIP zero-shot through the Ray Data pipeline on an embedded local Ray
   cluster: Parquet results, 16-bit anomaly-map PNGs and a run record under ``OUTPUT/scores``;
4. prints the run summary and the answer of a DuckDB query over the committed results.

WinCLIP uses pretrained OpenCLIP weights when they are in the local cache (``--weights auto``), else
random weights, and says which: random-weight scores exercise every code path but mean nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Annotated

from pydantic import ConfigDict, Field

from adray import storage
from adray.config import Config, Flag, add_flags, flag_values
from adray.pipeline.cluster import add_address_argument
from adray.synthetic import DEFAULT_IMAGE_SIZE, SynthConfig, generate_mvtec_ad

log = logging.getLogger(__name__)

DEMO_QUERY = """
SELECT category,
       count(*)                                  AS items,
       round(avg(image_score), 4)                AS mean_score,
       round(max(image_score), 4)                AS max_score,
       sum(CASE WHEN label = 1 THEN 1 ELSE 0 END) AS labelled_defects,
       sum(CASE WHEN status <> 'ok' THEN 1 ELSE 0 END) AS errors
FROM latest_scores
GROUP BY category
ORDER BY category
"""


#: the demo archive's counts per category (its categories, size and seed come from the flags)
DEMO_ARCHIVE = SynthConfig(n_train=4, n_test_good=4, n_test_per_defect=2)
#: WinCLIP's scoring batch in the demo
DEMO_BATCH_SIZE = 4


class DemoConfig(Config):
    """The flags of ``adray demo`` (``--address``: :func:`adray.pipeline.cluster.add_address_argument`)."""

    model_config = ConfigDict(title="demo configuration")

    output: Annotated[str, Flag("--output")] = Field(
        "demo_out", description="where the demo writes (local path or s3://...)"
    )
    weights: Annotated[str, Flag("--weights")] = Field(
        "auto", description="auto (pretrained if cached, else random), pretrained, random, or a weights file"
    )
    model: Annotated[str, Flag("--model")] = Field(
        "auto",
        description="open_clip model for WinCLIP; auto = ViT-B-16-plus-240 when its pretrained weights are "
        "cached, else the tiny random config adray-tiny-clip (same code paths, seconds instead of minutes "
        "on a CPU)",
    )
    categories: Annotated[str, Flag("--categories")] = Field(
        "bottle,carpet", description="synthetic categories to generate"
    )
    size: Annotated[int, Flag("--size")] = Field(
        DEFAULT_IMAGE_SIZE["mvtec"], description="synthetic image size in pixels"
    )
    seed: Annotated[int, Flag("--seed")] = Field(
        DEMO_ARCHIVE.seed, description="seed of the synthetic archive"
    )
    run_id: Annotated[str | None, Flag("--run-id")] = Field(
        None, description="pin the run id (default: from the time)"
    )
    address: str | None = None  # Ray cluster; flag: cluster.add_address_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, DemoConfig, ("output", "weights", "model", "categories", "size", "seed", "run_id"))
    add_address_argument(parser)


def resolve_demo_model(weights: str, model: str) -> tuple[str, str, str]:
    """``(weights, model, note)``. ``auto`` weights: pretrained when they load from the local cache, else
    random; ``auto`` model: ViT-B-16-plus-240 with pretrained weights, the tiny config with random ones."""
    # Never reach for the network in a demo; huggingface_hub reads this when it is first imported.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from adray.backbones.open_clip import DEFAULT_MODEL, DEFAULT_TAG, TINY_CLIP, load_clip
    from adray.backbones.weights import WeightsUnavailableError

    full = DEFAULT_MODEL if model == "auto" else model
    if weights != "auto":
        return weights, full, f"{full}, --weights {weights}"
    if full != TINY_CLIP:
        try:
            load_clip(full, "pretrained", DEFAULT_TAG, device="cpu")
            return "pretrained", full, f"{full} with pretrained weights ({DEFAULT_TAG}) from the local cache"
        except WeightsUnavailableError:
            pass
    chosen = TINY_CLIP if model == "auto" else full
    return (
        "random",
        chosen,
        (
            f"no pretrained OpenCLIP weights in the local cache, so WinCLIP runs {chosen} with RANDOM weights: "
            "every stage is real, the scores mean nothing (README 'Offline weights' says how to stage them)"
        ),
    )


def run(args: argparse.Namespace) -> int:
    from adray.catalog import catalog_to
    from adray.pipeline import ScoreConfig, score_archive
    from adray.pipeline.query import connect, format_result

    cfg = DemoConfig(**flag_values(DemoConfig, args), address=args.address)
    t0 = time.perf_counter()
    archive = storage.join_url(cfg.output, "archive")
    manifest = storage.join_url(cfg.output, "manifest.parquet")
    scores = storage.join_url(cfg.output, "scores")
    categories = tuple(c.strip() for c in cfg.categories.split(",") if c.strip())

    print(f"[1/4] generating a synthetic MVTec AD archive in {archive}")
    synth = generate_mvtec_ad(
        archive, DEMO_ARCHIVE, categories=categories, image_size=cfg.size, seed=cfg.seed
    )
    print(synth.to_text())

    print(f"\n[2/4] building the manifest {manifest}")
    report = catalog_to(archive, manifest)
    print(report.summary())

    weights, model, note = resolve_demo_model(cfg.weights, cfg.model)
    print(f"\n[3/4] scoring the test split with WinCLIP zero-shot on Ray: {note}")
    plugins = ["adray.backbones.open_clip:register_tiny_clip"] if model.startswith("adray-tiny") else []
    config = ScoreConfig(
        input=manifest,
        output=scores,
        detectors=["winclip"],
        weights=weights,
        run_id=cfg.run_id,
        detector_options={"model_name": model},
        batch_size=DEMO_BATCH_SIZE,
        plugins=plugins,
        address=cfg.address,
    )
    summary = score_archive(config)
    print(summary.format_table())

    print(f"\n[4/4] DuckDB over the committed results in {scores}:{DEMO_QUERY}")
    con = connect(scores)
    print(format_result(con.sql(DEMO_QUERY)))
    print(
        f"\ndemo finished in {time.perf_counter() - t0:.1f}s. Try:\n"
        f'  .venv/bin/adray query --output {scores} "SELECT item_id, image_score, mask_uri FROM '
        'latest_scores ORDER BY image_score DESC LIMIT 5"'
    )
    return 0
