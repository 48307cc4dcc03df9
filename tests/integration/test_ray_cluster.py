"""Jobs beside other Ray instances on one host: each job starts its own embedded cluster unless told to attach,
an embedded cluster ends with its driver (``kill -9`` included), an attached job's workers use the job's store
and credentials (not the cluster's), and relative paths mean the driver's directory.

Jobs run as real driver processes (``python jobs/score.py``) with the ``greymad`` test detector; clusters the
tests start get their own ports and temp dirs and are stopped by those, never with ``ray stop``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adray import catalog, storage

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.integration import test_pipeline_support as sup  # noqa: E402
from tests.integration.test_pipeline_job_submit import _free_ports, _stop_cluster  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: variables of the test session that must not reach the jobs or clusters started here
_SCRUB = ("RAY_ADDRESS", "ADRAY_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update(PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0", AWS_REGION="us-east-1", **extra)
    return env


def _score(cwd: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "jobs" / "score.py"), "--detector", "greymad", "--plugin", sup.PLUGIN]
    cmd += ["--batch-size", "2", "--rows-per-block", "2", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 420) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _archive(root: Path, n: int) -> str:
    manifest = str(root / "manifest.parquet")
    catalog.write_manifest(sup.manifest_from_rows(sup.write_good_items(str(root), n)), manifest)
    return manifest


def _session_processes(session: str) -> list[int]:
    """Live processes whose command line or open files name the session directory."""
    import psutil

    pids = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(session in a for a in proc.info["cmdline"] or ()) or any(
                f.path.startswith(session + "/") for f in proc.open_files()
            ):
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return pids


# ----------------------------------------------------------------------------------- embedded clusters

DRIVER = """
import json, time, ray
from adray.pipeline.cluster import ensure_ray, session_dir
ensure_ray(log_to_driver=False, object_store_memory=80 * 2**20)
@ray.remote
class Holder:
    def ready(self):
        return True
holder = Holder.remote()
ray.get(holder.ready.remote())
print(json.dumps({"session": session_dir()}), flush=True)
time.sleep(900)
"""


def test_embedded_cluster_ends_with_its_driver_on_kill_9(ray_session) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        session = json.loads(proc.stdout.readline())["session"]
        before = _session_processes(session)
        assert len(before) >= 4, before  # GCS, raylet, agents, the actor at least
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline, left = time.monotonic() + 60, before
    while left and time.monotonic() < deadline:
        time.sleep(1)
        left = [p for p in _session_processes(session) if p != proc.pid]
    assert not left, f"processes of {session} still running 60 s after the driver died: {left}"
    assert ray_session.get(ray_session.remote(lambda: 41 + 1).remote()) == 42  # the session's own cluster


UNRELATED = """
import time, ray
ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20)
print("up", flush=True)
time.sleep(900)
"""


def test_overlapping_jobs_finish_beside_an_unrelated_instance_that_exits_mid_run(tmp_path) -> None:
    unrelated = subprocess.Popen(
        [sys.executable, "-c", UNRELATED], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert unrelated.stdout.readline().strip() == "up"  # a notebook's cluster: `address="auto"` joined it
        manifest = _archive(tmp_path / "data", 6)
        jobs = [
            _score(REPO, _env(), "--input", manifest, "--output", str(tmp_path / f"out{i}"), "--run-id", f"job-{i}")
            for i in (1, 2)
        ]
        first = []
        for line in jobs[0].stdout:  # the first job is scoring: the unrelated instance goes away now
            first.append(line)
            if "scoring 6 items" in line:
                break
        unrelated.send_signal(signal.SIGKILL)
        logs = ["".join(first) + _finish(jobs[0]), _finish(jobs[1])]
    finally:
        unrelated.kill()
        for job in locals().get("jobs", []):
            job.kill()
    for i, log in enumerate(logs, start=1):
        assert "Started a local Ray instance" in log, log[-3000:]
        assert "rows in 6 = rows out 6: OK" in log, log[-3000:]
        record = json.loads(storage.read_text(str(tmp_path / f"out{i}" / "runs" / f"job-{i}.json")))
        assert record["status"] == "committed" and record["counts"]["out"] == 6


# ------------------------------------------------------------------------------------ attached jobs

MOTO = """
import sys, threading
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

log_path, seen, lock = sys.argv[1], set(), threading.Lock()

def app(environ, start_response, inner=DomainDispatcherApplication(create_backend_app)):
    auth = environ.get("HTTP_AUTHORIZATION", "")
    key = auth.split("Credential=", 1)[1].split("/", 1)[0] if "Credential=" in auth else "-"
    with lock:
        if key not in seen:
            seen.add(key)
            with open(log_path, "a") as f:
                f.write(key + "\\n")
    return inner(environ, start_response)

server = make_server("127.0.0.1", 0, app, True, request_handler=MotoRequestHandler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class Store:
    """A separate moto S3 server process that records the access key id of every request."""

    def __init__(self, root: Path, name: str, key: str) -> None:
        self.keys_log, self.key = root / f"{name}-keys.txt", key
        self.proc = subprocess.Popen(
            [sys.executable, "-c", MOTO, str(self.keys_log)], stdout=subprocess.PIPE, text=True, env=_env()
        )
        self.endpoint = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.key, aws_secret_access_key=f"{self.key}-secret",
        )  # fmt: skip

    def env(self) -> dict[str, str]:
        return {"ADRAY_S3_ENDPOINT": self.endpoint, "AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": f"{self.key}-secret"}

    def keys(self) -> set[str]:
        return set(self.keys_log.read_text().split()) if self.keys_log.exists() else set()

    def objects(self, bucket: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture(scope="module")
def shared_cluster():
    """A `ray start --head` from its own directory, with a third store and credentials in its environment."""
    root = Path(tempfile.mkdtemp(prefix="adray-shared-"))
    cluster_dir = root / "cluster-cwd"
    cluster_dir.mkdir()
    stores = {name: Store(root, name, f"key-{name}") for name in ("a", "b", "cluster")}
    gcs, client, agent, agent_grpc, rt_agent, metrics, om, nm = _free_ports(8)
    temp = tempfile.mkdtemp(prefix="adray-sh-", dir="/tmp")
    start = [
        str(BIN / "ray"), "start", "--head", "--num-cpus", "6", "--disable-usage-stats", "--port", str(gcs),
        "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
        "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(rt_agent),
        "--metrics-export-port", str(metrics), "--object-manager-port", str(om), "--node-manager-port", str(nm),
        "--include-dashboard", "false", "--temp-dir", temp, "--object-store-memory", str(200 * 2**20),
    ]  # fmt: skip
    env = _env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **stores["cluster"].env())
    proc = subprocess.run(start, env=env, cwd=cluster_dir, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    try:
        yield {"address": f"127.0.0.1:{gcs}", "cwd": cluster_dir, "stores": stores, "root": root, "temp": temp}
    finally:
        _stop_cluster(temp)
        for store in stores.values():
            store.proc.kill()
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


def test_attached_jobs_write_to_their_own_store_with_their_own_credentials(shared_cluster) -> None:
    stores, address = shared_cluster["stores"], shared_cluster["address"]
    manifest = _archive(shared_cluster["root"] / "data", 4)
    for name in ("a", "b"):
        stores[name].client().create_bucket(Bucket="results")  # the same bucket name in both stores
    jobs = {
        name: _score(
            shared_cluster["root"], _env(**stores[name].env()), "--address", address,
            "--input", manifest, "--output", "s3://results/adray", "--run-id", f"job-{name}",
        )  # fmt: skip
        for name in ("a", "b")
    }
    logs = {name: _finish(job) for name, job in jobs.items()}
    for name, other in (("a", "b"), ("b", "a")):
        assert "attaching to the Ray cluster at" in logs[name] and "Started a local Ray instance" not in logs[name]
        keys = stores[name].objects("results")
        assert f"adray/runs/job-{name}.json" in keys and f"adray/runs/job-{other}.json" not in keys
        assert sum(k.startswith("adray/masks/") for k in keys) == 4
        assert sum(k.endswith(".parquet") for k in keys) >= 1
        assert stores[name].keys() == {stores[name].key}, stores[name].keys()
    assert stores["cluster"].keys() == set()  # the cluster's own store and credentials were never used
    # the jobs' secret keys reached their workers through the GCS key-value store, not Ray's logs or files
    secrets = {f"{stores[name].key}-secret".encode() for name in ("a", "b")}
    leaked = [
        str(path) for path in Path(shared_cluster["temp"]).rglob("*")
        if path.is_file() and not path.is_symlink() and any(s in path.read_bytes() for s in secrets)
    ]  # fmt: skip
    assert not leaked, f"secret values written under the cluster's session directory: {leaked}"


def test_attached_job_with_relative_paths_writes_under_the_driver_directory(shared_cluster) -> None:
    from adray.synthetic import generate_mvtec_ad

    driver_dir = shared_cluster["root"] / "driver-cwd"
    generate_mvtec_ad(
        str(driver_dir / "archive"), categories=("bottle",), image_size=32, n_train=1, n_test_good=2,
        n_test_per_defect=1, defects=("scratch", "hole"),
    )  # fmt: skip
    table, _ = catalog.build_manifest(str(driver_dir / "archive"))
    relative = {
        c: [os.path.relpath(v, driver_dir) if v else v for v in table[c].to_pylist()] for c in ("uri", "gt_mask_uri")
    }
    table = table.drop_columns(["item_id", "uri", "gt_mask_uri"])
    table = table.append_column("uri", pa.array(relative["uri"])).append_column(
        "gt_mask_uri", pa.array(relative["gt_mask_uri"], pa.string())
    )
    catalog.write_manifest(table, str(driver_dir / "manifest.csv"))
    env = _env(**shared_cluster["stores"]["a"].env())
    args = ("--address", shared_cluster["address"], "--input", "manifest.csv", "--output", "out", "--run-id", "rel")
    _finish(_score(driver_dir, env, *args))

    assert not (shared_cluster["cwd"] / "out").exists()  # nothing under the cluster's working directory
    results = pq.read_table(str(driver_dir / "out" / "results")).to_pylist()
    assert len(results) == 4
    for row in results:
        assert row["uri"].startswith(str(driver_dir / "archive") + "/")
        assert row["mask_uri"].startswith(str(driver_dir / "out" / "masks") + "/")
        assert os.path.exists(row["mask_uri"])
    evaluate = [sys.executable, str(REPO / "jobs" / "evaluate.py"), "--results", "out", "--input", "manifest.csv"]
    proc = subprocess.run(
        [*evaluate, "--report", "report", "--dataset", "none"],
        cwd=driver_dir, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((driver_dir / "report" / "metrics.json").read_text())
    assert json.dumps(metrics).count("greymad") >= 1
