"""The scoring jobs' embedded Ray cluster starts with its quieter settings (a fresh process: the test
session already holds a cluster). Ray refuses to start on a system-config key it does not know, so this
also catches a key renamed by a Ray upgrade."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

SCRIPT = """
import json, ray
from adray.pipeline.runner import start_embedded_ray
context = start_embedded_ray(object_store_memory=100 * 2**20, log_to_driver=False)
print(json.dumps({"cpus": ray.cluster_resources().get("CPU"), "dashboard": context.dashboard_url}))
ray.shutdown()
"""


def test_embedded_cluster_starts_with_quiet_timers_and_no_dashboard() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["cpus"] >= 4  # never fewer than 4 logical CPUs (see start_embedded_ray)
    assert not facts["dashboard"]
