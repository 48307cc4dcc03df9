"""`jobs/benchmark.py pipeline`: the Ray Data pipeline against the bare detector, and memory at N vs 4N items.

Same images, same detector (WinCLIP with random weights; by default the paper's ``ViT-B-16-plus-240`` at
240 px, ``--model adray-tiny-clip`` for a model so small that the pipeline's per-item costs dominate), in
``--repeats`` rounds of:

- **bare loop**: read bytes, decode, preprocess, score in batches, in this process, ``torch`` on
  ``--threads`` threads, over the 4N items, after loading the model and one untimed warm-up batch. It runs
  before the first round and after each, with no Ray cluster up (when this benchmark starts Ray); a round's
  reference is the mean of the bare loops on either side of it: the machine's speed drifts by 10-20 % over
  minutes here.
- **pipeline**: ``score_archive`` over a manifest of N items, then of 4N items, on the embedded local Ray
  cluster a scoring job starts (``adray.pipeline.runner.start_embedded_ray``), warmed up by one untimed small
  run; the time includes actor start and model load per run, mask PNG writes and Parquet writes: what a
  user of a running cluster waits for.

Both sides use the same allocator setting (``adray.runtime.retain_freed_memory``; ``--no-retain-memory``
turns it off on both). Throughput ratio = pipeline items/s / bare items/s, end to end per run and
*marginal*: the 3N extra items over the extra wall time of the 4N run, which cancels the per-run start-up
(actor start + model load) and is the rate a long backlog run sustains. ``actor_items_per_s`` is the rate
inside the scoring actor alone (items / summed ``latency_ms``), which separates the model's speed in the
actor from the orchestration around it.

Peak memory: a sampler thread adds up the RSS of this driver process and all its descendants (the embedded
Ray cluster: GCS, raylet, workers and actors) every 0.2 s while a pipeline run executes; it reports the peak
of that sum and of Ray workers alone. Shared pages (the object store) count once per process that maps
them, so the sum overstates; compare N to 4N.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import ConfigDict, Field

from adray.backbones.open_clip import DEFAULT_MODEL, TINY_CLIP
from adray.bench.pipeline_harness import (
    _actor_rate,
    _BareLoop,
    _PeakRss,
    _wait_for_scoring_actors_to_exit,
    _write_archive,
)
from adray.config import Config, Flag, add_flags, flag_values
from adray.job_env import describe
from adray.pipeline.cluster import add_address_argument, ensure_ray
from adray.tables import text_table

if TYPE_CHECKING:
    from adray.pipeline import ScoreConfig

TINY = TINY_CLIP
PAPER_MODEL = DEFAULT_MODEL


class PipelineBenchConfig(Config):
    """The flags of ``jobs/benchmark.py pipeline`` (``--address``: :func:`add_address_argument`)."""

    model_config = ConfigDict(title="pipeline benchmark configuration")

    n: Annotated[int, Flag("--n")] = Field(4, description="items of the small run (the large one has 4N)")
    image_size: Annotated[int, Flag("--image-size")] = Field(
        240, description="side of the synthetic test images"
    )
    model: Annotated[str, Flag("--model")] = Field(
        PAPER_MODEL,
        description=f"open_clip model for WinCLIP, random weights (default {PAPER_MODEL}; {TINY} for a tiny one)",
    )
    batch_size: Annotated[int, Flag("--batch-size")] = 4
    actors: Annotated[int, Flag("--actors")] = 1
    threads: Annotated[int, Flag("--threads")] = Field(
        2, description="torch threads for the bare loop and each actor"
    )
    retain_memory: Annotated[bool, Flag("--no-retain-memory", negate=True)] = Field(
        True, description="leave glibc's allocator at its defaults in the bare loop and the scoring actors"
    )
    repeats: Annotated[int, Flag("--repeats")] = Field(
        3,
        ge=1,
        description="repeat (bare loop, pipeline N, pipeline 4N) this many times and report the median ratio: "
        "a 2-core VM's speed drifts by 10-20 %% over minutes",
    )
    ray_default_timers: Annotated[bool, Flag("--ray-default-timers")] = Field(
        False,
        description="start the embedded cluster with Ray's default report timers instead of the scoring jobs' "
        "quieter ones (adray.pipeline.runner.EMBEDDED_RAY_SYSTEM_CONFIG), to measure what they change",
    )
    workdir: Annotated[str, Flag("--workdir")] = Field(
        "bench_out/pipeline", description="where images, results and masks go"
    )
    address: str | None = None  # Ray cluster; flag: cluster.add_address_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, PipelineBenchConfig, [f for f in PipelineBenchConfig.model_fields if f != "address"])
    add_address_argument(parser)  # attached: the cluster stays up, and the bare loop runs beside it


def run(flags: argparse.Namespace) -> dict[str, Any]:
    import ray

    from adray.pipeline import ScoreConfig

    cfg = PipelineBenchConfig(**flag_values(PipelineBenchConfig, flags), address=flags.address)
    work = os.path.abspath(cfg.workdir)
    shutil.rmtree(work, ignore_errors=True)
    manifests = _write_archive(work, cfg.n, cfg.image_size)
    options = {"model_name": cfg.model}
    measured = ScoreConfig(
        input=manifests[0][1],
        output=work,
        detectors=["winclip"],
        weights="random",
        detector_options=options,
        batch_size=cfg.batch_size,
        actors=cfg.actors,
        num_cpus=cfg.threads,
        retain_memory=cfg.retain_memory,
    )
    bare = _BareLoop(options, retain_memory=cfg.retain_memory, threads=cfg.threads, batch_size=cfg.batch_size)
    if cfg.address:
        ensure_ray(cfg.address, log_to_driver=False)
    own_ray = not ray.is_initialized()  # else: attached by the caller, and the bare loop runs beside it
    rows: list[dict[str, Any]] = []
    repeats: list[dict[str, Any]] = []
    bare_ips = bare.items_per_s(manifests[1][1])
    rows.append(_bare_row(0, 4 * cfg.n, bare_ips))
    for rep in range(1, cfg.repeats + 1):
        small, large = _pipeline_pair(measured, manifests, work, rep, own_ray, cfg)
        bare_next = bare.items_per_s(manifests[1][1])
        rows.append(small)
        rows.append(large)
        rows.append(_bare_row(rep, 4 * cfg.n, bare_next))
        reference = (bare_ips + bare_next) / 2  # the bare loop on either side of this repeat
        for r in (small, large):
            r["ratio_vs_bare"] = r["items_per_s"] / reference
            r["actor_ratio"] = r["actor_items_per_s"] / reference
        extra = large["wall_s"] - small["wall_s"]
        large["marginal_items_per_s"] = marginal = 3 * cfg.n / extra if extra > 0 else float("nan")
        large["marginal_ratio"] = marginal / reference
        repeats.append({"small": small, "large": large})
        bare_ips = bare_next
    bare_rates = [r["items_per_s"] for r in rows if r["mode"].startswith("bare")]
    result = {"name": "pipeline", "rows": rows, "notes": _notes(cfg, measured, repeats, bare_rates)}
    _print(result)
    return result


def _pipeline_pair(
    measured: ScoreConfig,
    manifests: list[tuple[int, str]],
    work: str,
    rep: int,
    own_ray: bool,
    cfg: PipelineBenchConfig,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One repeat: the embedded cluster up and warm, the N run, the 4N run, the cluster down again."""
    import ray

    from adray.pipeline import score_archive
    from adray.pipeline.runner import start_embedded_ray

    if own_ray:  # what `jobs/score.py` starts when no cluster is running
        timers = {} if cfg.ray_default_timers else None
        start_embedded_ray(num_cpus=max(4, 2 * cfg.actors + 2), system_config=timers, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    # Warm-up (untimed): Ray starts worker processes and imports torch/open_clip once per process; a
    # long-running cluster has paid that already, so neither measured run should.
    warm = measured.replace(
        output=os.path.join(work, f"out-warmup-{rep}"),
        limit=min(cfg.n, cfg.batch_size),
        actors=1,
        run_id=f"bench-warmup-{rep}",
    )
    score_archive(warm)
    runs = []
    for n, manifest in manifests:
        _wait_for_scoring_actors_to_exit()  # the last run's actor frees its model while exiting
        out = os.path.join(work, f"out-{rep}-{n}")
        cfg = measured.replace(input=manifest, output=out, run_id=f"bench-{rep}-{n}")
        with _PeakRss() as peak:
            t0 = time.perf_counter()
            summary = score_archive(cfg)
            wall = time.perf_counter() - t0
        runs.append(
            {
                "mode": "pipeline",
                "repeat": rep,
                "items": n,
                "wall_s": wall,
                "items_per_s": summary.total("scored_now") / wall,
                "actor_items_per_s": _actor_rate(out),
                "peak_rss_mb": peak.total_mb,
                "peak_workers_mb": peak.workers_mb,
                "rows_ok": summary.total("ok"),
            }
        )
    if own_ray:  # Ray's idle processes slow a plain loop by ~15 % here; the bare loop runs without them
        ray.shutdown()
    return runs[0], runs[1]


def _bare_row(rep: int, items: int, items_per_s: float) -> dict[str, Any]:
    when = "before the pipeline runs" if rep == 0 else f"after repeat {rep}"
    return {
        "mode": f"bare loop ({when})",
        "repeat": rep,
        "items": items,
        "items_per_s": items_per_s,
        "wall_s": items / items_per_s,
    }


def _notes(
    cfg: PipelineBenchConfig, measured: ScoreConfig, repeats: list[dict[str, Any]], bare_rates: list[float]
) -> list[str]:
    marginal = [r["large"]["marginal_ratio"] for r in repeats]
    in_actor = [r["large"]["actor_ratio"] for r in repeats]
    end_to_end = [r["large"]["ratio_vs_bare"] for r in repeats]
    small_rss = max(r["small"]["peak_rss_mb"] for r in repeats)
    large_rss = max(r["large"]["peak_rss_mb"] for r in repeats)
    listed = ", ".join
    return [
        f"WinCLIP {cfg.model} (random weights), {cfg.image_size}px PNGs, batch {cfg.batch_size}, "
        f"{cfg.actors} actor(s), torch threads {cfg.threads}, retain freed memory: {cfg.retain_memory}, "
        f"scoring actor env: {describe(measured.actor_env_vars())}, Ray timers: "
        f"{'default' if cfg.ray_default_timers else 'quiet (EMBEDDED_RAY_SYSTEM_CONFIG)'}",
        f"{len(repeats)} repeat(s) of: bare loop over the 4N items, then the pipeline on N={cfg.n} and 4N items; "
        "each repeat's reference is the mean of the bare loops on either side of it",
        f"bare loop items/s: {listed(f'{r:.3g}' for r in bare_rates)}",
        f"throughput ratio pipeline/bare, marginal (3N extra items / extra wall time, which cancels the per-run "
        f"start-up) per repeat: {listed(f'{m:.2f}' for m in marginal)}; median {_median(marginal):.2f} "
        "(goal >= 0.85)",
        f"inside the scoring actor (items / summed latency_ms) at 4N per repeat: "
        f"{listed(f'{m:.2f}' for m in in_actor)} of bare; median {_median(in_actor):.2f}",
        f"end to end at 4N (incl. actor start + model load) per repeat: {listed(f'{m:.2f}' for m in end_to_end)}",
        f"peak RSS driver+Ray (max over repeats): {small_rss:.0f} MB at N, {large_rss:.0f} MB at 4N "
        f"(x{large_rss / max(small_rss, 1):.2f}; goal: flat)",
        "pipeline time includes actor start + model load, mask PNG and Parquet writes (after one untimed warm-up "
        "run per repeat that starts Ray's worker processes); bare loop excludes model load",
    ]


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def _print(result: dict[str, Any]) -> None:
    cols = [
        "repeat",
        "mode",
        "items",
        "wall_s",
        "items_per_s",
        "ratio_vs_bare",
        "marginal_items_per_s",
        "marginal_ratio",
        "actor_items_per_s",
    ]
    cols += ["peak_rss_mb", "peak_workers_mb", "rows_ok"]
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in result["rows"]]
    print(text_table(cols, cells, rule=False))
    for note in result["notes"]:
        print(f"note: {note}")


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
