"""One retry layer per S3 call (issue 15 item 7c): a call that keeps failing is attempted the configured
number of times, not that number times botocore's times s3fs's. Loopback moto behind a fault layer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from adray import storage

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.integration import s3_faults  # noqa: E402

FAULTS = [503, "SlowDown", "reset"]  # before: 12, 60 and 12 GETs for read_object(attempts=3)


@pytest.fixture(scope="module")
def faulty():
    yield from s3_faults.serve()


@pytest.fixture
def bucket(faulty, monkeypatch):
    """A bucket holding ``a.png``; ``AWS_MAX_ATTEMPTS`` unset, so botocore's default (3) would multiply."""
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    yield faulty.bucket(monkeypatch, "retries", {"a.png": b"PNG-BYTES"})
    faulty.passing()


def _fail(faulty, bucket: str, fault, method: str = "GET", key: str = "a.png") -> None:
    faulty.rule = lambda m, b, k: fault if (m, b, k) == (method, bucket, key) else None


def _count(faulty, bucket: str, method: str = "GET", key: str = "a.png") -> int:
    return len([r for r in faulty.requests(method, key) if r[1] == bucket])


@pytest.mark.parametrize("fault", FAULTS)
def test_a_wrapped_read_is_adray_s_attempts_exactly(faulty, bucket, fault):
    _fail(faulty, bucket, fault)
    with pytest.raises(storage.UnreadableError):
        storage.read_object(f"s3://{bucket}/a.png", attempts=3, base_delay=0.01)
    assert _count(faulty, bucket) == 3


def test_small_object_reads_and_writes_are_with_retries_attempts_exactly(faulty, bucket, monkeypatch):
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)  # with_retries' backoff (4 attempts)
    _fail(faulty, bucket, 503)
    with pytest.raises(OSError):
        storage.read_bytes(f"s3://{bucket}/a.png")
    assert _count(faulty, bucket) == 4
    _fail(faulty, bucket, "SlowDown", method="PUT", key="b.json")
    with pytest.raises(OSError):
        storage.write_bytes(f"s3://{bucket}/b.json", b"{}")
    assert _count(faulty, bucket, "PUT", "b.json") == 4


@pytest.mark.parametrize("fault", FAULTS)
def test_a_call_adray_does_not_wrap_is_botocore_s_attempts_exactly(faulty, bucket, fault, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    _fail(faulty, bucket, fault)
    loc = storage.resolve(f"s3://{bucket}/a.png")
    with pytest.raises(OSError):
        loc.fs.cat_file(loc.path)
    assert _count(faulty, bucket) == 2  # s3fs's own loop (5 more per botocore try) is off


@pytest.mark.parametrize("attempts", [1, 2])
def test_pyarrow_s3_attempts_are_the_configured_number(faulty, bucket, attempts):
    _fail(faulty, bucket, "reset")
    fs, path = storage.pyarrow_filesystem(f"s3://{bucket}/a.png", attempts=attempts)
    with pytest.raises(OSError):
        fs.open_input_stream(path).read()
    assert _count(faulty, bucket) == attempts
