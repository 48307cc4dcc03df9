"""`jobs/benchmark.py pipeline`: the Ray Data pipeline against the bare detector, and memory at N vs 4N items.

One run, same images, same detector (WinCLIP with random weights; by default the paper's
``ViT-B-16-plus-240`` at 240 px, ``--model adray-tiny-clip`` for a model so small that the pipeline's
per-item costs dominate):

- **bare loop**: read bytes, decode, preprocess, score in batches, in this process, ``torch`` on
  ``--threads`` threads, after loading the model and one untimed warm-up batch. It runs before and after the
  pipeline runs and the mean is the reference: the machine's speed drifts by 10-20 % over minutes here.
- **pipeline**: ``score_archive`` over a manifest of the same N items, then of 4N items, on a local Ray
  cluster started and warmed up (one untimed small run) before timing; the time includes actor start and
  model load per run, mask PNG writes and Parquet writes: what a user of a running cluster waits for.

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
import threading
import time
from dataclasses import replace
from typing import Any

import numpy as np

from adray import storage

TINY = "adray-tiny-clip"
PAPER_MODEL = "ViT-B-16-plus-240"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=4, help="items of the small run (the large one has 4N)")
    parser.add_argument("--image-size", type=int, default=240, help="side of the synthetic test images")
    parser.add_argument(
        "--model",
        default=PAPER_MODEL,
        help=f"open_clip model for WinCLIP, random weights (default {PAPER_MODEL}; {TINY} for a tiny one)",
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads for the bare loop and each actor"
    )
    parser.add_argument(
        "--no-retain-memory",
        dest="retain_memory",
        action="store_false",
        help="leave glibc's allocator at its defaults in the bare loop and the scoring actors",
    )
    parser.add_argument("--workdir", default="bench_out/pipeline", help="where images, results and masks go")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from adray.pipeline import ScoreConfig, score_archive

    work = os.path.abspath(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    manifests = _write_archive(work, args.n, args.image_size)
    options = {"model_name": args.model}
    bare = _BareLoop(options, args)
    bare_before = bare.items_per_s(manifests[0][1])

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=max(4, 2 * args.actors + 2), include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    # Warm-up (untimed): Ray starts worker processes and imports torch/open_clip once per process; a
    # long-running cluster has paid that already, so neither measured run should.
    warm = ScoreConfig(
        input=manifests[0][1],
        output=os.path.join(work, "out-warmup"),
        detectors=["winclip"],
        weights="random",
        detector_options=options,
        limit=min(args.n, args.batch_size),
        run_id="bench-warmup",
        retain_memory=args.retain_memory,
    )
    score_archive(warm)
    measured = ScoreConfig(
        input=manifests[0][1],
        output=work,
        detectors=["winclip"],
        weights="random",
        detector_options=options,
        batch_size=args.batch_size,
        actors=args.actors,
        num_cpus=args.threads,
        retain_memory=args.retain_memory,
    )
    runs: list[dict[str, Any]] = []
    for n, manifest in manifests:
        out = os.path.join(work, f"out-{n}")
        cfg = replace(measured, input=manifest, output=out, run_id=f"bench-{n}")
        with _PeakRss() as peak:
            t0 = time.perf_counter()
            summary = score_archive(cfg)
            wall = time.perf_counter() - t0
        runs.append(
            {
                "mode": "pipeline",
                "items": n,
                "wall_s": wall,
                "items_per_s": summary.total("scored_now") / wall,
                "actor_items_per_s": _actor_rate(out),
                "peak_rss_mb": peak.total_mb,
                "peak_workers_mb": peak.workers_mb,
                "rows_ok": summary.total("ok"),
            }
        )
    if started_ray:  # Ray's idle processes take ~0.1 core here; the bare loop runs without them
        ray.shutdown()
    bare_after = bare.items_per_s(manifests[0][1])
    bare_ips = (bare_before + bare_after) / 2
    rows: list[dict[str, Any]] = [
        {"mode": "bare loop (before)", "items": args.n, "items_per_s": bare_before, "wall_s": args.n / bare_before},
        {"mode": "bare loop (after)", "items": args.n, "items_per_s": bare_after, "wall_s": args.n / bare_after},
    ]
    for r in runs:
        r["ratio_vs_bare"] = r["items_per_s"] / bare_ips
        r["actor_ratio"] = r["actor_items_per_s"] / bare_ips
    rows += runs
    small, large = runs
    actor_env = measured.actor_env_vars()
    extra = large["wall_s"] - small["wall_s"]
    marginal = 3 * args.n / extra if extra > 0 else float("nan")
    large["marginal_items_per_s"] = marginal
    large["marginal_ratio"] = marginal / bare_ips
    notes = [
        f"WinCLIP {args.model} (random weights), {args.image_size}px PNGs, batch {args.batch_size}, "
        f"{args.actors} actor(s), torch threads {args.threads}, retain freed memory: {args.retain_memory}, "
        f"scoring actor env: {actor_env}",
        f"bare loop {bare_ips:.3g} items/s (mean of {bare_before:.3g} before and {bare_after:.3g} after the "
        "pipeline runs, each without a Ray cluster running when this benchmark started it)",
        f"throughput ratio pipeline/bare, end to end: {small['ratio_vs_bare']:.2f} at N={args.n}, "
        f"{large['ratio_vs_bare']:.2f} at 4N; marginal (3N extra items / extra wall time, which cancels "
        f"the per-run start-up): {marginal:.3g} items/s = {large['marginal_ratio']:.2f} of bare (goal >= 0.85)",
        f"inside the scoring actor (items / summed latency_ms) at 4N: {large['actor_items_per_s']:.3g} items/s "
        f"= {large['actor_ratio']:.2f} of bare",
        f"peak RSS driver+Ray: {small['peak_rss_mb']:.0f} MB at N, {large['peak_rss_mb']:.0f} MB at 4N "
        f"(x{large['peak_rss_mb'] / max(small['peak_rss_mb'], 1):.2f}; goal: flat)",
        "pipeline time includes actor start + model load, mask PNG and Parquet writes (after one untimed warm-up "
        "run that starts Ray's worker processes); bare loop excludes model load",
    ]
    result = {"name": "pipeline", "rows": rows, "notes": notes}
    _print(result)
    return result


def _actor_rate(output: str) -> float:
    """Items per second of model time inside the scoring actors: items / sum of per-item ``latency_ms``."""
    from adray.pipeline.query import connect

    con = connect(output)
    n, ms = con.execute("SELECT count(*), sum(latency_ms) FROM results WHERE status = 'ok'").fetchone()
    return float(n) / (float(ms) / 1000.0) if ms else float("nan")


def _write_archive(work: str, n: int, size: int) -> list[tuple[int, str]]:
    """4N random-texture PNGs and two manifests (first N, all 4N)."""
    import io

    import pyarrow as pa
    from PIL import Image

    from adray.catalog import item_id_for, normalise_manifest, write_manifest

    uris = []
    for i in range(4 * n):
        rng = np.random.default_rng(i)
        img = (rng.normal(128, 20, (size, size, 3)) + np.linspace(0, 40, size)[None, :, None]).clip(0, 255)
        buf = io.BytesIO()
        Image.fromarray(img.astype(np.uint8)).save(buf, format="PNG")
        uri = os.path.join(work, "archive", "tile", f"{i:05d}.png")
        storage.write_bytes(uri, buf.getvalue())
        uris.append(uri)
    out = []
    for count in (n, 4 * n):
        part = uris[:count]
        table = pa.table(
            {
                "item_id": [item_id_for(u) for u in part],
                "uri": part,
                "category": ["tile"] * count,
                "split": ["test"] * count,
            }
        )
        url = os.path.join(work, f"manifest-{count}.parquet")
        write_manifest(normalise_manifest(table, url), url)
        out.append((count, url))
    return out


class _BareLoop:
    """The detector in a plain loop in this process: model loaded and one batch run before any timing."""

    def __init__(self, options: dict[str, Any], args: argparse.Namespace) -> None:
        import torch

        from adray.detectors.base import create_detector

        if args.retain_memory:
            from adray.runtime import retain_freed_memory

            retain_freed_memory()
        torch.set_num_threads(args.threads)
        self.batch_size = args.batch_size
        self.det = create_detector("winclip", class_name="tile", weights="random", device="cpu", **options)
        self._warm = False

    def items_per_s(self, manifest: str) -> float:
        from adray.catalog import read_manifest

        uris = read_manifest(manifest)["uri"].to_pylist()
        if not self._warm:
            self._score(uris[: self.batch_size])
            self._warm = True
        t0 = time.perf_counter()
        for start in range(0, len(uris), self.batch_size):
            self._score(uris[start : start + self.batch_size])
        return len(uris) / (time.perf_counter() - t0)

    def _score(self, uris: list[str]) -> None:
        import torch

        from adray.io.images import decode_image

        pre = [self.det.preprocess({"image": decode_image(storage.read_bytes(u))}) for u in uris]
        batch = {k: torch.from_numpy(np.stack([p[k] for p in pre])) for k in pre[0]}
        with torch.inference_mode():
            self.det.score(batch).numpy()


class _PeakRss:
    """Sample the RSS of this process and its descendants every 0.2 s; keep the peaks (MB)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.total_mb = 0.0
        self.workers_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while True:
            total = workers = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    rss = p.memory_info().rss
                    total += rss
                    if p.name().startswith("ray::") or "default_worker.py" in " ".join(p.cmdline()[:3]):
                        workers += rss
                except psutil.Error:
                    continue
            self.total_mb = max(self.total_mb, total / 2**20)
            self.workers_mb = max(self.workers_mb, workers / 2**20)
            if self._stop.wait(self.interval):
                return


def _print(result: dict[str, Any]) -> None:
    cols = [
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
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    for note in result["notes"]:
        print(f"note: {note}")


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
