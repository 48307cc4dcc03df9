"""`jobs/benchmark.py pipeline` end to end on the tiny model: both sides run, every item is scored."""

from __future__ import annotations

import argparse
import math

from adray.bench import pipeline as bench


def test_pipeline_benchmark_scores_every_item_and_reports_both_ratios(ray_session, tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(
        [
            "--model",
            bench.TINY,
            "--n",
            "3",
            "--image-size",
            "32",
            "--batch-size",
            "2",
            "--no-retain-memory",  # keep the test process's allocator as it is
            "--workdir",
            str(tmp_path / "bench"),
        ]
    )
    result = bench.run(args)
    rows = {r["mode"]: r for r in result["rows"] if r["mode"].startswith("bare")}
    assert set(rows) == {"bare loop (before)", "bare loop (after)"}
    assert all(r["items_per_s"] > 0 for r in rows.values())
    small, large = (r for r in result["rows"] if r["mode"] == "pipeline")
    assert (small["items"], small["rows_ok"]) == (3, 3)
    assert (large["items"], large["rows_ok"]) == (12, 12)
    assert 0 < small["ratio_vs_bare"] and 0 < large["ratio_vs_bare"]
    assert math.isfinite(large["actor_items_per_s"]) and large["actor_items_per_s"] > 0
    assert large["peak_rss_mb"] > 0
    assert "goal >= 0.85" in capsys.readouterr().out
