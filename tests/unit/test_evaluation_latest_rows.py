"""The evaluation's one query for "the latest committed row per key": :func:`adray.evaluation.join.latest_rows`
(newest ``scored_at``, then the larger ``run_id``; run, detector and extra filters), as
:func:`~adray.evaluation.join.load_results` and :func:`~adray.evaluation.strategies.load_strategy_results`
use it. The ``results`` view is a table here (committed files are :func:`adray.pipeline.query.connect`'s
business, tested with it)."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import pytest

from adray.evaluation import join

T0 = datetime(2026, 1, 1)
ROWS = [  # run_id, item_id, detector, strategy, image_score, minutes after T0
    ("r1", "a", "winclip", "zero-shot", 0.1, 0),
    ("r2", "a", "winclip", "k-shot", 0.2, 5),
    ("r3", "a", "winclip", None, 0.3, 5),  # same time as r2: the larger run id wins
    ("r1", "a", "bgad", None, 0.4, 0),
    ("r2", "b", "winclip", "k-shot", 0.5, 1),
]


@pytest.fixture
def root(monkeypatch) -> str:
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE results (run_id TEXT, item_id TEXT, detector TEXT, strategy TEXT, image_score DOUBLE,"
        " scored_at TIMESTAMP)"
    )
    con.executemany(
        "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?)",
        [(*r[:5], T0 + timedelta(minutes=r[5])) for r in ROWS],
    )
    monkeypatch.setattr(join, "connect", lambda results_root: con)
    return "memory://results"


def _scores(df) -> dict[tuple, float]:
    keys = [c for c in df.columns if c != "image_score"]
    return {tuple(r[k] for k in keys): r["image_score"] for r in df.to_dict("records")}


def test_the_newest_row_per_key_then_the_larger_run_id(root):
    cols = ("item_id", "detector", "image_score")
    df = join.latest_rows(root, cols, ("item_id", "detector"))
    assert _scores(df) == {("a", "winclip"): 0.3, ("a", "bgad"): 0.4, ("b", "winclip"): 0.5}


def test_run_detector_and_extra_filters_narrow_before_the_latest_is_picked(root):
    cols, keys = ("item_id", "strategy", "image_score"), ("item_id", "detector", "strategy")
    by_strategy = join.latest_rows(root, cols, keys, detectors=["winclip"], where=["strategy IS NOT NULL"])
    assert _scores(by_strategy) == {("a", "zero-shot"): 0.1, ("a", "k-shot"): 0.2, ("b", "k-shot"): 0.5}
    early = join.latest_rows(root, ("item_id", "detector", "image_score"), ("item_id",), run_ids=["r1", "r2"])
    assert _scores(early) == {("a", "winclip"): 0.2, ("b", "winclip"): 0.5}
    assert join.latest_rows(root, ("item_id",), ("item_id",), run_ids=["r9"]).empty
    assert (
        len(join.latest_rows(root, ("item_id",), ("item_id",), run_ids=[], detectors=[])) == 2
    )  # empty: all
