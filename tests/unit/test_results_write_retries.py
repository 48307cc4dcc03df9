"""The results writer's one retry layer (Ray Data's datasink filesystem) retries every transient S3
answer: Ray's default messages leave out pyarrow's 500/502/504, and one HeadObject 500 on ``results/``
failed a whole reinspect (tests/integration/test_pipeline_read_faults.py)."""

from __future__ import annotations

import pytest

from adray import storage
from adray.pipeline.graph import write_results

ray_data = pytest.importorskip("ray.data")


class _Dataset:
    def __init__(self) -> None:
        self.calls: list[dict] = []

    def write_parquet(self, path, **kwargs) -> None:
        # the datasink reads the context when it is built, inside write_parquet
        self.calls.append(
            {"path": path, "retried": list(ray_data.DataContext.get_current().retried_io_errors)}
        )


def test_the_writer_retries_500_502_504_and_keeps_rays_own(tmp_path):
    context = ray_data.DataContext.get_current()
    before = list(context.retried_io_errors)
    try:
        ds = _Dataset()
        write_results(ds, str(tmp_path), "run-1")
        write_results(ds, str(tmp_path), "run-2")  # twice: nothing added twice
        retried = ds.calls[-1]["retried"]
        for status in (500, 502, 503, 504):
            assert f"AWS Error UNKNOWN (HTTP status {status})" in retried
        assert set(before) <= set(retried) and set(storage.PYARROW_TRANSIENT_MESSAGES) <= set(retried)
        assert len(retried) == len(set(retried)) and ds.calls[0]["retried"] == retried
        assert ds.calls[0]["path"].endswith("results")
    finally:
        context.retried_io_errors = before


def test_the_added_messages_are_what_storage_calls_transient():
    for message in storage.PYARROW_TRANSIENT_MESSAGES:
        assert storage.is_transient(
            OSError(f"When getting information for key 'k': {message} during HeadObject")
        )


@pytest.mark.parametrize(
    "exc,kind",
    [
        (OSError(16, "Service Unavailable"), "server error 503"),  # s3fs: the reason phrase only
        (OSError(121, "Internal Server Error"), "server error 500"),
        (OSError("AWS Error UNKNOWN (HTTP status 502) during GetObject"), "server error 502"),
        (PermissionError("Forbidden"), "access refused"),
        (RuntimeError("Service Unavailable"), "server error 503"),  # the phrase alone, no errno: retried too
        (OSError("AWS Error SLOW_DOWN during GetObject: Reduce your request rate"), "throttled"),
    ],
)
def test_read_failures_name_their_kind_not_the_servers_prose(exc, kind):
    assert storage.read_failure(exc).startswith(kind)
    assert storage.is_transient(exc) == (kind != "access refused")
