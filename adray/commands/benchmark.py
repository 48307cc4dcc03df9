"""`adray benchmark NAME` / `python jobs/benchmark.py NAME`: the project's speed figures.

Each benchmark lives in ``adray.bench.<module>`` with ``add_arguments(parser)`` and ``run(args) -> dict``
(``{"name": ..., "rows": [{...}], "notes": [...]}``). ``all`` runs every benchmark with its defaults and
prints one table; ``--json PATH`` also writes the results as JSON (local path or storage URL).
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import time
from typing import Annotated

from pydantic import ConfigDict, Field

from adray import storage
from adray.bench.tables import format_rows
from adray.config import Config, Flag, add_flags, flag_values

#: benchmark name -> module under adray.bench
BENCHMARKS: dict[str, str] = {
    "winclip": "winclip",
    "pipeline": "pipeline",
    "bgad-fit": "bgad_fit",
    "m3dm": "m3dm",
    "gpu": "gpu",  # CUDA paths + throughput; reports "no CUDA device" on CPU machines
    "bgad-compare": "bgad_compare",  # supervised vs unsupervised BGAD (quality, not speed)
    "m3dm-compare": "m3dm_compare",  # M3DM modes on 3D-only / RGB-visible defects (quality, not speed)
}
#: comparisons of methods: run by name only, not by ``all`` (minutes each, and not speed figures)
NOT_IN_ALL = frozenset({"bgad-compare", "m3dm-compare"})


class BenchmarkConfig(Config):
    """The flags ``adray benchmark`` adds itself: ``--json`` to every benchmark, ``--skip`` to ``all``
    (each benchmark's own flags are its module's config fields)."""

    model_config = ConfigDict(title="benchmark configuration")

    json_path: Annotated[str | None, Flag("--json", dest="json")] = Field(
        None, description="also write the results as JSON to this path/URL"
    )
    skip: Annotated[str, Flag("--skip")] = Field("", description="comma-separated benchmarks to leave out")


def _module(name: str):
    return importlib.import_module(f"adray.bench.{BENCHMARKS[name]}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="NAME", required=True)
    for name in BENCHMARKS:
        p = sub.add_parser(name, help=f"the {name} benchmark")
        try:
            _module(name).add_arguments(p)
        except ImportError as e:  # a benchmark whose room has not landed yet
            p.set_defaults(_unavailable=str(e))
        add_flags(p, BenchmarkConfig, ("json_path",))
    p = sub.add_parser("all", help="run every benchmark with its defaults and print one table")
    add_flags(p, BenchmarkConfig, ("json_path", "skip"))


def _defaults(name: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    _module(name).add_arguments(p)
    return p.parse_args([])


def environment() -> dict[str, str]:
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": str(torch.get_num_threads()),
    }
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
    else:
        env["device"] = f"cpu ({platform.processor() or platform.machine()})"
    return env


def combined(results: list[dict]) -> dict:
    """All benchmarks as one long table: benchmark, what (the row's text fields), metric, value."""
    rows = []
    for res in results:
        for r in res.get("rows", []):
            label = " ".join(
                str(v) for v in r.values() if not isinstance(v, (int, float)) or isinstance(v, bool)
            )
            for k, v in r.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    rows.append({"benchmark": res.get("name"), "what": label, "metric": k, "value": v})
    return {"name": "all benchmarks", "rows": rows, "notes": []}


def run(args: argparse.Namespace) -> int:
    own = BenchmarkConfig(**flag_values(BenchmarkConfig, args))
    results = []
    if args.benchmark == "all":
        skip = {s.strip() for s in own.skip.split(",") if s.strip()}
        for name in BENCHMARKS:
            if name in skip or name in NOT_IN_ALL:
                continue
            t0 = time.perf_counter()
            res = _module(name).run(_defaults(name))
            res.setdefault("notes", []).append(f"wall time {time.perf_counter() - t0:.1f}s")
            results.append(res)
        print("\n\n".join(format_rows(r) for r in results))
        print("\n" + format_rows(combined(results)))
    else:
        if getattr(args, "_unavailable", None):
            raise SystemExit(f"benchmark {args.benchmark!r} is unavailable here: {args._unavailable}")
        results.append(_module(args.benchmark).run(args))
    env = environment()
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    if own.json_path:
        storage.write_text(
            own.json_path, json.dumps({"environment": env, "results": results}, indent=2, default=str)
        )
    return 0
