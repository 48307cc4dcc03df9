"""`jobs/benchmark.py pipeline` end to end on the tiny model: both sides run, every item is scored."""

from __future__ import annotations

import argparse
import math

from adray.bench import pipeline as bench


def test_pipeline_benchmark_scores_every_item_and_reports_ratios_per_repeat(
    ray_session, tmp_path, capsys
) -> None:
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
            "--repeats",
            "1",
            "--no-retain-memory",  # keep the test process's allocator as it is
            "--workdir",
            str(tmp_path / "bench"),
        ]
    )
    result = bench.run(args)
    rows = result["rows"]
    bare = [r for r in rows if r["mode"].startswith("bare")]
    assert [r["mode"] for r in bare] == ["bare loop (before the pipeline runs)", "bare loop (after repeat 1)"]
    assert all(r["items"] == 12 and r["items_per_s"] > 0 for r in bare)
    small, large = (r for r in rows if r["mode"] == "pipeline")
    assert (small["items"], small["rows_ok"]) == (3, 3)
    assert (large["items"], large["rows_ok"]) == (12, 12)
    reference = (bare[0]["items_per_s"] + bare[1]["items_per_s"]) / 2
    assert math.isclose(large["ratio_vs_bare"], large["items_per_s"] / reference)
    assert math.isfinite(large["actor_items_per_s"]) and large["actor_items_per_s"] > 0
    assert large["peak_rss_mb"] > 0
    out = capsys.readouterr().out
    assert "goal >= 0.85" in out and "median" in out
