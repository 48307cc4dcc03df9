"""Issue 13, done when: under a loopback S3 that answers 403 to every GET of the images for a window and
503/500 to ~10 % of all requests, a run plus one ``reinspect`` ends with every item ``ok`` and no duplicates.

Before: Ray Data's ``download()`` turned the 403s into empty bytes, every item became a committed
``not_found`` row, and re-inspection never scored them. The jobs run as real driver processes (their own
embedded Ray cluster) whose ``ADRAY_S3_ENDPOINT`` is the faulty server, so the decode workers read through it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from adray import catalog, storage
from adray.pipeline.query import list_result_files

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.integration import test_pipeline_support as sup  # noqa: E402
from tests.integration.s3_faults import FaultyS3  # noqa: E402

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
N_ITEMS = 8
PASS_BEFORE_WINDOW = 3  # image GETs served before the 403 window opens


class Faults:
    """403 on image GETs while the window is open (it opens after PASS_BEFORE_WINDOW image GETs);
    500 or 503 on ~10 % of every request, seeded, but never on more than MAX_STREAK requests in a row for
    one (method, key): a transient fault passes within the retry budget (read_attempts=3), which is what
    the run is tested against. Without the cap, the seeded draws put three 503s in a row on one HEAD
    whenever the request order lined up with them (the test then failed on its own fault model)."""

    MAX_STREAK = 2

    def __init__(self, data_bucket: str) -> None:
        self.data_bucket, self.window, self.flaky = data_bucket, False, False
        self.image_gets, self.rng, self.lock = 0, random.Random(13), threading.Lock()
        self.streak: dict[tuple[str, str, str], int] = {}

    def __call__(self, method: str, bucket: str, key: str):
        with self.lock:
            if method == "GET" and bucket == self.data_bucket and key.endswith(".png"):
                self.image_gets += 1
                if self.window and self.image_gets > PASS_BEFORE_WINDOW:
                    return 403
            request = (method, bucket, key)
            if self.flaky and self.rng.random() < 0.10 and self.streak.get(request, 0) < self.MAX_STREAK:
                self.streak[request] = self.streak.get(request, 0) + 1
                return self.rng.choice((500, 503))
            self.streak[request] = 0
        return None


#: One driver for both runs (one embedded Ray start): it scores, waits for a line on stdin, re-inspects.
DRIVER = """
import json, sys
from adray.pipeline import ScoreConfig, reinspect, score_archive
base = json.loads(sys.argv[1])
score_archive(ScoreConfig(**base, run_id="during-403"))
print("scored", flush=True)
sys.stdin.readline()
reinspect(ScoreConfig(**base, run_id="after-403"))
print("reinspected", flush=True)
"""


def _config(manifest: str, out: str) -> dict:
    return dict(
        input=manifest,
        output=out,
        detectors=["winclip"],
        weights="random",
        detector_options={"model_name": "adray-tiny-clip"},
        batch_size=4,
        rows_per_block=4,
        max_pixels=100 * 100,
        split="all",
        read_attempts=3,  # 0.5 + 1 s of backoff before read_error (default 5: 0.5 + 1 + 2 + 4 s)
    )


def _rows(out: str, run_id: str) -> pa.Table:
    tables = []
    for url, file_run in list_result_files(out):
        if file_run == run_id:
            loc = storage.resolve(url)
            with loc.fs.open(loc.path, "rb") as f:
                tables.append(pq.read_table(f, columns=["item_id", "detector_version", "status", "error"]))
    return pa.concat_tables(tables)


def test_403_window_and_5xx_end_with_every_item_ok_after_one_reinspect(monkeypatch, tmp_path):
    server = FaultyS3().start()
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
        creds = {
            "ADRAY_S3_ENDPOINT": server.endpoint,
            "AWS_ACCESS_KEY_ID": "fault-key",
            "AWS_SECRET_ACCESS_KEY": "fault-secret",
            "AWS_REGION": "us-east-1",
        }
        for k, v in creds.items():
            monkeypatch.setenv(k, v)
        env.update(creds, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
        import boto3

        data, results = (f"faults-{name}-{uuid.uuid4().hex[:6]}" for name in ("data", "out"))
        client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1")
        for bucket in (data, results):
            client.create_bucket(Bucket=bucket)
        rows = sup.write_good_items(f"s3://{data}", N_ITEMS)
        manifest = f"s3://{data}/manifest.parquet"
        catalog.write_manifest(sup.manifest_from_rows(rows), manifest)
        out = f"s3://{results}/out"

        faults = Faults(data)
        server.rule = faults
        faults.window = faults.flaky = True
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, json.dumps(_config(manifest, out))],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        lines = []
        for line in driver.stdout:  # until the first run has committed (or the driver ended)
            lines.append(line)
            if line.strip() == "scored":
                break
        assert driver.poll() is None, "".join(lines[-60:])
        faults.window = False
        first = _rows(out, "during-403")
        statuses = first["status"].to_pylist()
        print(json.dumps({s: statuses.count(s) for s in set(statuses)}))
        assert first.num_rows == N_ITEMS
        assert "not_found" not in statuses  # the bug: a refused read is not a missing object
        assert (
            set(statuses) == {"ok", "read_error"}
            and statuses.count("read_error") >= N_ITEMS - PASS_BEFORE_WINDOW
        )
        # each item in the window was refused (403) and retried; its message names the URL and the last
        # failure: access refused, or a 5xx that hit its last attempt's HEAD (the faults hit every request)
        errors = first.filter(pc.equal(first["status"], "read_error"))["error"].to_pylist()
        for err in errors:
            kind = err.split("attempts): ", 1)[-1]
            assert f"s3://{data}/" in err and kind.startswith(("access refused", "server error", "throttled"))
        assert any("access refused" in err for err in errors)
        assert len([r for r in server.requests("GET") if r[3] == "403"]) >= statuses.count("read_error")

        output, _ = driver.communicate("go\n", timeout=240)
        assert driver.returncode == 0 and "reinspected" in output, output[-4000:]
        second = _rows(out, "after-403")
        assert second.num_rows == statuses.count("read_error")  # only what could not be read is retried
        assert set(second["status"].to_pylist()) == {"ok"}
        both = pa.concat_tables([first, second])
        ok = both.filter(pc.equal(both["status"], "ok"))
        keys = list(zip(ok["item_id"].to_pylist(), ok["detector_version"].to_pylist()))
        assert len(keys) == len(set(keys)) == N_ITEMS  # every item ok exactly once
        for run in (first, second):
            keys = list(zip(run["item_id"].to_pylist(), run["detector_version"].to_pylist()))
            assert len(keys) == len(set(keys))
        assert sum(r[3] in ("500", "503") for r in server.requests()) > 0  # the 5xx faults did happen
        for run_id in ("during-403", "after-403"):
            record = json.loads(storage.read_text(f"{out}/runs/{run_id}.json"))
            assert record["status"] == "committed"
    finally:
        server.stop()
