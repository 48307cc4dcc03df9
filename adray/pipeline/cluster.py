"""The one place adray connects a driver to Ray: attach when told to, else start the job's own cluster.

- **Attach** when the job says where: ``--address`` (``auto`` = the most recent local ``ray start``, the
  old default), else ``RAY_ADDRESS`` (which ``ray job submit`` sets). An explicit ``--address`` wins over
  ``RAY_ADDRESS``; ``--address local`` forces an embedded cluster.
- **Otherwise start an embedded cluster** (``ray.init(address="local")``), even when other Ray instances
  run on the machine: a bare ``ray.init()`` would join the latest ``ray start`` (``ray_current_cluster``)
  and ``address="auto"`` any Ray head it finds, including another job's embedded cluster, so two
  overlapping jobs deadlocked and a job died with whichever process it had joined.
- An attached job's ``runtime_env`` carries what its workers need from the driver's environment
  (:mod:`adray.job_env`), merged with whatever ``ray job submit`` already gave; an embedded cluster's
  workers inherit the driver's environment anyway.
- An embedded cluster dies with its driver: Ray kills its GCS, raylet and monitors at once when the
  driver dies (parent-death signal) and the workers follow within seconds, but its dashboard and
  runtime-env agents poll for their raylet and lingered for minutes after a ``kill -9`` of the driver
  (measured with Ray 2.58). :mod:`adray.pipeline.cluster_reaper` ends every process of the session then.
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import uuid
from typing import Any

from adray import job_env

log = logging.getLogger(__name__)

#: Ray settings of the embedded local cluster: its timers report less often. Each of Ray's processes wakes on
#: its own timers; on a 2-core machine every wake-up preempts one of torch's threads in the scoring actor and
#: stalls the other at the next barrier. Idle, this cut Ray's CPU from 1.87 to 1.58 CPU-s per 30 s here
#: (README "Pipeline vs the bare detector"). A cluster the job attaches to keeps its own settings.
EMBEDDED_RAY_SYSTEM_CONFIG: dict[str, object] = {
    "raylet_report_resources_period_milliseconds": 1000,  # default 100; one node has nobody to tell
    "metrics_report_interval_ms": 60_000,  # default 10 s; no dashboard or Prometheus is watching
    "task_events_report_interval_ms": 5_000,  # default 1 s; the state API lags by up to 5 s
    "event_stats": False,  # per-handler event-loop statistics, for debugging Ray itself
}


#: ray.init options that apply when attaching too (the others shape an embedded cluster only)
_DRIVER_OPTIONS = ("log_to_driver", "configure_logging", "logging_level", "namespace")


def ensure_ray(address: str | None = None, **init_kwargs: Any) -> Any:
    """Connect this driver to Ray once: attach to ``address`` (or ``RAY_ADDRESS``), else start an embedded
    cluster (:func:`start_embedded_ray`, which takes ``init_kwargs``; when attaching only the driver-side
    options among them apply). A no-op when Ray is already initialised in this process (a test session, a
    caller that connected itself). Returns ``ray.init``'s context, or ``None`` when Ray was already up.
    Raises ``ConnectionError`` when the named cluster is not there."""
    import ray

    if ray.is_initialized():
        return None
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target in (None, "local"):
        return start_embedded_ray(**init_kwargs)
    runtime_env, secrets = job_runtime_env_and_secrets()
    log.info(
        "attaching to the Ray cluster at %s; job environment %s; secret (via the GCS key-value store): %s",
        target, _described(runtime_env), ", ".join(sorted(secrets)) or "none",
    )  # fmt: skip
    driver_options = {k: v for k, v in init_kwargs.items() if k in _DRIVER_OPTIONS}
    context = ray.init(address=target, runtime_env=runtime_env, **driver_options)
    if secrets:
        put_job_secrets(runtime_env["env_vars"][job_env.SECRETS_MARKER], secrets)
    return context


def start_embedded_ray(
    num_cpus: int | None = None, system_config: dict[str, object] | None = None, **init_kwargs: Any
) -> Any:
    """Start the job's own local Ray cluster: at least 4 logical CPUs (with as many as a 2-core machine has,
    Ray Data's download actor plus one scoring actor take every CPU and the read tasks wait forever, a
    deadlock seen here; see README "Design"), quieter timers (``system_config``, default
    :data:`EMBEDDED_RAY_SYSTEM_CONFIG`; ``{}`` for Ray's own) and no dashboard: it would die with the job.
    For a dashboard, ``ray start --head`` first and run the job with ``--address auto``. Never joins another
    Ray instance on the machine; its processes end when this driver ends, even on ``kill -9``
    (:mod:`adray.pipeline.cluster_reaper`). Returns ``ray.init``'s context."""
    import ray

    init_kwargs.setdefault("include_dashboard", False)
    # No job runtime_env here: this cluster's raylet is the driver's child, so its workers start with the
    # driver's environment already, and a runtime_env cost ~5 s more to the first task (2 busy cores).
    context = ray.init(
        address="local",
        num_cpus=num_cpus or embedded_num_cpus(),
        _system_config=dict(EMBEDDED_RAY_SYSTEM_CONFIG if system_config is None else system_config),
        **init_kwargs,
    )
    start_reaper(session_dir())
    return context


def embedded_num_cpus() -> int:
    return max(4, os.cpu_count() or 1)


def job_runtime_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The runtime_env this driver gives its job: ``{"env_vars": job_env.job_env_vars()}`` minus the names
    the job's own runtime_env (``ray job submit --runtime-env-json``) already sets; Ray merges the two
    (a name set in both would be refused as a conflict, and the driver's value came from there anyway).
    Secret values are not in it (:func:`job_runtime_env_and_secrets`)."""
    return job_runtime_env_and_secrets(environ)[0]


def job_runtime_env_and_secrets(environ: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """``(runtime_env, secrets)``: :func:`job_runtime_env` and the set secret-named variables taken out of it
    (:func:`adray.job_env.split_job_secrets`). Ray writes a runtime_env's values into the cluster's
    ``runtime_env_agent.log``; the secrets go to the GCS key-value store instead (:func:`put_job_secrets`)
    and the runtime_env carries only their key, ``ADRAY_JOB_SECRETS=adray/job-secrets/<random hex>``, new
    for each call: a worker of another job, whose runtime_env lacks it, never reads them."""
    env_vars = job_env.job_env_vars(os.environ if environ is None else environ)
    submitted = submitted_runtime_env()
    for name in submitted.get("env_vars") or {}:
        env_vars.pop(name, None)
    plain, secrets = job_env.split_job_secrets(env_vars)
    if secrets:
        plain[job_env.SECRETS_MARKER] = job_env.SECRETS_PREFIX + uuid.uuid4().hex
    return {"env_vars": plain}, secrets


def put_job_secrets(key: str, secrets: dict[str, str]) -> None:
    """Store ``secrets`` (name -> value) under ``key`` in the connected cluster's GCS key-value store, for
    the job's workers (:func:`adray.job_env.apply_job_secrets`), and delete them when this driver exits
    (``atexit``; a driver killed outright leaves them there until the cluster stops)."""
    import json

    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(key, json.dumps(secrets), overwrite=True, namespace=job_env.SECRETS_NAMESPACE)
    atexit.register(_delete_job_secrets, key)


def _delete_job_secrets(key: str) -> None:
    from ray.experimental import internal_kv

    try:
        if internal_kv._internal_kv_initialized():
            internal_kv._internal_kv_del(key, namespace=job_env.SECRETS_NAMESPACE)
    except Exception as e:  # noqa: BLE001 - the cluster may be gone already
        log.debug("could not delete the job's secrets from the key-value store: %s", type(e).__name__)


def submitted_runtime_env() -> dict[str, Any]:
    """The runtime_env ``ray job submit`` gave this driver's job ({} outside one)."""
    from adray.pipeline.spec import submitted_job_config

    runtime_env = submitted_job_config().get("runtime_env")
    return dict(runtime_env) if isinstance(runtime_env, dict) else {}


def session_dir() -> str:
    """The session directory of the cluster this driver is connected to (``/tmp/ray/session_...``)."""
    import ray

    return ray._private.worker._global_node.get_session_dir_path()


def start_reaper(session: str, driver_pid: int | None = None) -> subprocess.Popen:
    """Start the process that ends every process of ``session`` once ``driver_pid`` (default: this
    process) has died, however it died. It runs in its own session, so a signal to the driver's process
    group does not take it down first; its log is ``<session>/logs/adray-cluster-reaper.log``."""
    cmd = [
        sys.executable,
        "-I",  # a plain script: imports neither adray nor torch, and not the modules beside it
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster_reaper.py"),
        "--pid",
        str(driver_pid or os.getpid()),
        "--session-dir",
        session,
    ]
    log_path = os.path.join(session, "logs", "adray-cluster-reaper.log")
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _described(runtime_env: dict[str, Any]) -> str:
    return job_env.describe(runtime_env.get("env_vars", {}))


def add_address_argument(parser: Any) -> None:
    """The ``--address`` flag every Ray job takes (an argparse parser or argument group)."""
    parser.add_argument(
        "--address",
        default=None,
        metavar="ADDRESS",
        help="Ray cluster to attach to: auto (the latest local `ray start`), HOST:PORT or ray://HOST:PORT; "
        "default: RAY_ADDRESS when set (as under `ray job submit`), else the job starts its own embedded "
        "cluster, even when other Ray instances run on this machine",
    )
