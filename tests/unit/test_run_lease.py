"""Run ids have one writer: the lease under ``<output>/leases/`` refuses a second writer at once (naming the
owner and expiry), can be taken over once expired, is renewed by a heartbeat, and is released when the run
commits or fails; ``adray runs repair`` turns a results folder with duplicate rows into one that commits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adray import storage
from adray.catalog import CatalogError
from adray.cli import main
from adray.pipeline import lease as lease_module
from adray.pipeline import runner
from adray.pipeline.graph import DetectorPass
from adray.pipeline.lease import LeaseHeldError, LeaseLostError, RunLease, hold_run_lease, lease_url
from adray.pipeline.summary import DetectorCounts

ROOT = Path(__file__).resolve().parents[2]

_HOLDER = """
import sys, time
from adray.pipeline.lease import hold_run_lease
with hold_run_lease(sys.argv[1], sys.argv[2], ttl_s=30):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def test_a_second_process_is_refused_at_once_while_the_first_holds_the_lease(tmp_path, capsys):
    out = str(tmp_path / "out")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, out, "run-a", "60"], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        assert main(["runs", "repair", "--output", out, "run-a"]) == 2
        assert time.monotonic() - t0 < 10  # at once, not after the lease's 30 s
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("adray runs: error: run id 'run-a' is being written")
        assert f"pid {holder.pid}" in err[0] and "expires 20" in err[0]
        with pytest.raises(LeaseHeldError):
            RunLease(out, "run-a").acquire()
        RunLease(out, "run-b").acquire()  # another run id is free
    finally:
        holder.kill()
        holder.wait()


def test_an_expired_lease_is_taken_over_and_its_old_holder_cannot_renew_or_release_it(tmp_path):
    out = str(tmp_path / "out")
    first = RunLease(out, "r1", ttl_s=0.5)
    first.acquire()
    with pytest.raises(LeaseHeldError):
        RunLease(out, "r1", ttl_s=0.5).acquire()
    time.sleep(0.7)
    second = RunLease(out, "r1", ttl_s=30)
    second.acquire()  # expired: taken over
    with pytest.raises(LeaseLostError):
        first.renew()
    with pytest.raises(LeaseLostError):
        first.check()
    first.release()  # not its lease any more: left alone
    assert storage.exists(lease_url(out, "r1"))
    second.release()
    assert not storage.exists(lease_url(out, "r1"))


def test_the_heartbeat_keeps_a_short_lease_alive_and_the_lease_goes_on_exit_or_error(tmp_path):
    out = str(tmp_path / "out")
    with hold_run_lease(out, "r1", ttl_s=0.6, heartbeat_s=0.1):
        time.sleep(1.2)  # twice the ttl: only renewals keep it
        with pytest.raises(LeaseHeldError):
            RunLease(out, "r1").acquire()
    assert not storage.exists(lease_url(out, "r1"))
    with pytest.raises(RuntimeError, match="boom"):
        with hold_run_lease(out, "r1"):
            assert storage.exists(lease_url(out, "r1"))
            raise RuntimeError("boom")
    assert not storage.exists(lease_url(out, "r1"))


def test_score_archive_holds_the_lease_and_releases_it_on_commit_and_on_failure(tmp_path, monkeypatch):
    from adray.pipeline.spec import ScoreConfig

    out = str(tmp_path / "out")
    seen = []

    def committed(config, run_id, lease):
        seen.append(storage.exists(lease_url(out, run_id)))
        return "summary"

    monkeypatch.setattr(runner, "_score_archive", committed)
    config = ScoreConfig(input=str(tmp_path / "m.parquet"), output=out, detectors=["winclip"], run_id="r1")
    assert runner.score_archive(config) == "summary" and seen == [True]
    assert not storage.exists(lease_url(out, "r1"))
    monkeypatch.undo()
    # a real failure inside the run (the manifest does not exist) releases it too
    config = ScoreConfig(input=str(tmp_path / "m.parquet"), output=out, detectors=["winclip"], run_id="r2")
    with pytest.raises(CatalogError, match="does not exist"):
        runner.score_archive(config)
    assert not storage.exists(lease_url(out, "r2"))
    # and a live writer's run id is refused before anything is read or written
    with hold_run_lease(out, "r3"):
        config = ScoreConfig(input=str(tmp_path / "x.parquet"), output=out, run_id="r3", detectors=["x"])
        with pytest.raises(LeaseHeldError):
            runner.score_archive(config)


def test_s3_leases_use_conditional_writes(s3_bucket, monkeypatch):
    # a fake clock: expiry is decided by the lease's own clock, so a slow (loaded) machine cannot expire the
    # first lease before the refusal is checked
    now = [1_000_000.0]
    monkeypatch.setattr(lease_module, "_now", lambda: now[0])
    out = f"{s3_bucket}/out"
    first = RunLease(out, "r1", ttl_s=0.5)
    first.acquire()
    assert first._mode == "conditional"
    with pytest.raises(LeaseHeldError, match="is being written by another process"):
        RunLease(out, "r1").acquire()
    first.renew()
    now[0] += 0.7  # past the renewed expiry
    second = RunLease(out, "r1", ttl_s=30)
    second.acquire()
    with pytest.raises(LeaseHeldError):
        RunLease(out, "r1").acquire()
    with pytest.raises(LeaseLostError):
        first.renew()
    first.release()
    assert storage.exists(lease_url(out, "r1"))
    second.release()
    assert not storage.exists(lease_url(out, "r1"))


# ------------------------------------------------------------------------------------------ repair


def _results_file(out: str, run_id: str, tag: str, rows: list[tuple[str, str]]) -> str:
    """A result file as a writer of ``run_id`` leaves it: ``(item_id, status)`` rows, detector winclip."""
    name = f"{run_id}.{tag}_000000.parquet"
    url = storage.join_url(out, "results", "detector=winclip", "date=2026-01-01", name)
    table = pa.table(
        {
            "item_id": [i for i, _ in rows],
            "detector_version": ["winclip-v1"] * len(rows),
            "status": [s for _, s in rows],
            "is_anomalous": [False] * len(rows),
            "score": [float(n) for n in range(len(rows))],
        }
    )
    with storage.open_atomic(url) as f:
        pq.write_table(table, f)
    return url


def _check(out: str, run_id: str, n_items: int) -> None:
    passes = [DetectorPass(spec=None, name="winclip", needs_xyz=False, work=pa.table({"item_id": []}))]
    counts = [DetectorCounts(name="winclip", versions=["winclip-v1"], rows_in=n_items)]
    runner._check_and_count(out, run_id, passes, counts)


def test_repair_keeps_one_row_per_item_and_version_and_the_run_then_checks_out(tmp_path, capsys):
    out = str(tmp_path / "out")
    # two writers of run r1 overlapped on items 2 and 3; the second failed item 2 where the first scored it
    a = _results_file(out, "r1", "aaaa", [("i0", "ok"), ("i1", "ok"), ("i2", "ok"), ("i3", "ok")])
    b = _results_file(out, "r1", "bbbb", [("i2", "error"), ("i3", "ok"), ("i4", "ok"), ("i5", "ok")])
    c = _results_file(out, "r1", "cccc", [("i4", "ok")])  # wholly duplicate: removed
    other = _results_file(out, "r0", "zzzz", [("i0", "ok")])  # another run: untouched
    with pytest.raises(runner.RunCheckError) as info:
        _check(out, "r1", 6)
    assert "3 duplicate rows" in str(info.value)
    assert f"adray runs repair --output {out} r1" in str(info.value)
    assert "Re-run with the same --run-id to resume" not in str(info.value)

    assert main(["runs", "repair", "--output", out, "r1", "--dry-run"]) == 0
    assert "would drop 3 duplicate rows" in capsys.readouterr().out
    assert storage.exists(c)

    assert main(["runs", "repair", "--output", out, "r1"]) == 0
    assert "dropped 3 duplicate rows (1 files rewritten, 1 removed)" in capsys.readouterr().out
    assert not storage.exists(c) and storage.exists(a) and storage.exists(other)
    rows_b = pq.read_table(b).to_pydict()
    assert rows_b["item_id"] == ["i4", "i5"]  # i2 kept from a (ok beats error), i3 from a (first file)
    assert pq.read_table(a).num_rows == 4 and pq.read_table(other).num_rows == 1
    _check(out, "r1", 6)  # no duplicates, rows out == items in: the re-run commits
    assert not storage.exists(lease_url(out, "r1"))
    assert main(["runs", "repair", "--output", out, "r1"]) == 0  # idempotent
    assert "dropped 0 duplicate rows" in capsys.readouterr().out


def test_a_run_missing_rows_only_is_told_to_resume(tmp_path):
    out = str(tmp_path / "out")
    _results_file(out, "r1", "aaaa", [("i0", "ok")])
    with pytest.raises(runner.RunCheckError, match="Re-run with the same --run-id to resume") as info:
        _check(out, "r1", 2)
    assert "runs repair" not in str(info.value)


def test_runs_lease_shows_the_holder(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["runs", "lease", "--output", out, "r1"]) == 0
    assert "no lease" in capsys.readouterr().out
    with hold_run_lease(out, "r1"):
        assert main(["runs", "lease", "--output", out, "r1"]) == 0
        assert f"pid {os.getpid()}" in capsys.readouterr().out
