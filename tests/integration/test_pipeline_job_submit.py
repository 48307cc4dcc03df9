"""`ray job submit -- python jobs/score.py ...` against a local `ray start --head` (started from the venv so
that `python` in the entrypoint is the venv's), on the moto S3 server. The run id defaults to the Ray
submission id. Uses its own ports and temp dir: other Ray clusters may be running on this machine."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from adray import catalog, storage

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.integration import test_pipeline_support as sup  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _run(cmd: list[str], env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def ray_head(s3_server):
    gcs, dash, client, agent, agent_grpc, rt_agent, metrics, om, nm = _free_ports(9)
    temp = tempfile.mkdtemp(prefix="adray-rj-", dir="/tmp")
    env = dict(
        os.environ,
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        RAY_USAGE_STATS_ENABLED="0",
        # a busy shared CI box can take longer than the default 30 s to start the dashboard's modules
        RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT="240",
    )
    env.pop("RAY_ADDRESS", None)
    start = [
        str(BIN / "ray"), "start", "--head", "--num-cpus", "4", "--disable-usage-stats",
        "--port", str(gcs), "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
        "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
        "--runtime-env-agent-port", str(rt_agent), "--metrics-export-port", str(metrics),
        "--object-manager-port", str(om), "--node-manager-port", str(nm),
        "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--temp-dir", temp,
        "--object-store-memory", str(200 * 2**20),
    ]  # fmt: skip
    proc = _run(start, env, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dash}"
    try:
        yield env
    finally:
        _stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _stop_cluster(temp_dir: str) -> None:
    """Stop only this head's processes. `ray stop` kills every Ray process on the machine, which would take
    down the session's shared test cluster (and anyone else's) with it."""
    import psutil

    mine = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in arg for arg in proc.info["cmdline"] or ()):
                mine.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in mine:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(mine, timeout=15)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def test_score_job_through_ray_job_submit(ray_head, s3_bucket, s3_server):
    rows = sup.write_good_items(s3_bucket, 4) + sup.bad_items(s3_bucket)[:2]
    manifest = storage.join_url(s3_bucket, "manifest.parquet")
    catalog.write_manifest(sup.manifest_from_rows(rows), manifest)
    out = storage.join_url(s3_bucket, "out")
    submission = f"adray-job-{uuid.uuid4().hex[:8]}"
    env_vars = {
        k: os.environ[k]
        for k in ("ADRAY_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
    }
    cmd = [
        str(BIN / "ray"), "job", "submit", "--submission-id", submission, "--working-dir", ".",
        "--runtime-env-json", json.dumps({"env_vars": env_vars}),
        "--", "python", "jobs/score.py", "--input", manifest, "--output", out,
        "--detector", "greymad", "--plugin", sup.PLUGIN,
    ]  # fmt: skip
    proc = _run(cmd, ray_head, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "rows in 6 = rows out 6: OK" in log, log[-4000:]
    record = json.loads(storage.read_text(storage.join_url(out, "runs", f"{submission}.json")))
    assert record["run_id"] == submission and record["counts"]["out"] == 6
