"""Shared fixtures: a real S3 server on loopback (moto), one local Ray cluster per session, tiny torch.

- ``s3_server``: session-scoped ``ThreadedMotoServer`` on 127.0.0.1; sets ``ADRAY_S3_ENDPOINT`` and dummy
  AWS credentials so every adray storage call (s3fs and pyarrow) reaches it.
- ``s3_bucket``: a fresh bucket per test; returns ``"s3://<bucket>"``.
- ``ray_session``: ``ray.init(num_cpus=4, object_store_memory=200MB)`` once per session (logical CPUs above
  the physical 2 on purpose: download + actors + read tasks deadlock with num_cpus=2).
"""

from __future__ import annotations

import os
import uuid

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in _S3_ENV}
    os.environ.update(
        {
            "ADRAY_S3_ENDPOINT": endpoint,
            "AWS_ACCESS_KEY_ID": "testing-key",
            "AWS_SECRET_ACCESS_KEY": "testing-secret",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    os.environ.pop("AWS_SESSION_TOKEN", None)
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


_S3_ENV = (
    "ADRAY_S3_ENDPOINT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


@pytest.fixture
def s3_bucket(s3_server):
    import boto3

    name = f"adray-test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_session(s3_server):
    # Depends on s3_server so that Ray's workers inherit the S3 endpoint and credentials at ray.init().
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=4,
            object_store_memory=200 * 2**20,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
