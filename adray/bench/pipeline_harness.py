"""The measuring parts of ``jobs/benchmark.py pipeline`` (:mod:`adray.bench.pipeline`): the synthetic
archive and its N / 4N manifests, the bare detector loop, the peak-RSS sampler over this process and its
Ray descendants, the scoring actors' own rate, and the wait for a finished pool's actors to exit.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

from adray import storage


def _wait_for_scoring_actors_to_exit(timeout_s: float = 60.0) -> None:
    """Ray Data lets a finished pool's actors go asynchronously; a ViT-B actor takes seconds to exit.
    Gives up quietly after ``timeout_s``: the next run then starts beside an exiting actor."""
    import psutil

    deadline = time.monotonic() + timeout_s
    me = psutil.Process()
    while time.monotonic() < deadline:
        alive = []
        for p in me.children(recursive=True):
            try:
                if "ScoringActor" in " ".join(p.cmdline()[:1]):
                    alive.append(p)
            except psutil.Error:
                continue
        if not alive:
            return
        time.sleep(0.2)


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

    def __init__(
        self, options: dict[str, Any], *, retain_memory: bool, threads: int, batch_size: int
    ) -> None:
        import torch

        from adray.detectors.base import create_detector

        if retain_memory:
            from adray.runtime import retain_freed_memory

            retain_freed_memory()
        torch.set_num_threads(threads)
        self.batch_size = batch_size
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

        from adray.io.samples import read_sample

        pre = [self.det.preprocess(read_sample({"uri": u}).raise_for_status().inputs()) for u in uris]
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
