"""Reading items under faults: "does not exist" vs "could not read now", the retry, the row's status,
credentials out of everything stored or printed, and the --allow-prefix rule (issue 13 items 1, 9, 10)."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import fsspec
import pytest

from adray import storage
from adray.pipeline import decode
from adray.pipeline.backlog import RETRY_STATUSES

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.integration import s3_faults  # noqa: E402

FAST = {"attempts": 3, "base_delay": 0.01}


@pytest.fixture(scope="module")
def faulty():
    yield from s3_faults.serve()


@pytest.fixture
def store(faulty, monkeypatch):
    """A bucket with one object on the faulty server; botocore's own retries off (AWS_MAX_ATTEMPTS=1) so
    that every GET the server logs is one attempt of adray's retry layer."""
    yield faulty.bucket(monkeypatch, "faults", {"a.png": b"PNG-BYTES"}, AWS_MAX_ATTEMPTS="1")
    faulty.passing()


def _gets(faulty, bucket: str, key: str) -> list[str]:
    return [r[3] for r in faulty.requests("GET", key) if r[1] == bucket]


@pytest.mark.parametrize("fault", [403, 500, 503, "SlowDown", "reset"])
def test_a_read_that_keeps_failing_is_retried_then_unreadable_not_missing(faulty, store, fault):
    faulty.rule = lambda m, b, k: fault if (b, k, m) == (store, "a.png", "GET") else None
    with pytest.raises(storage.UnreadableError) as e:
        storage.read_object(f"s3://{store}/a.png", **FAST)
    assert len(_gets(faulty, store, "a.png")) >= FAST["attempts"]
    assert f"s3://{store}/a.png" in str(e.value)
    image, cloud, problem = decode.read_item(f"s3://{store}/a.png", None, (), 1)
    assert image is None and problem[0] == "read_error" and problem[0] in RETRY_STATUSES


@pytest.mark.parametrize("fault", [403, 500, 503, "SlowDown", "reset"])
def test_a_passing_fault_is_retried_and_the_object_read(faulty, store, fault):
    left = {"n": 2}

    def rule(m, b, k):
        if (b, k, m) == (store, "a.png", "GET") and left["n"] > 0:
            left["n"] -= 1
            return fault
        return None

    faulty.rule = rule
    assert storage.read_object(f"s3://{store}/a.png", **FAST) == b"PNG-BYTES"
    assert _gets(faulty, store, "a.png") == [str(fault), str(fault), "pass"]


@pytest.mark.parametrize("missing", ["nope.png", "404"])
def test_a_missing_object_is_not_found_at_once(faulty, store, missing):
    key = "a.png" if missing == "404" else missing
    faulty.rule = lambda m, b, k: 404 if missing == "404" and k == "a.png" else None
    with pytest.raises(FileNotFoundError):
        storage.read_object(f"s3://{store}/{key}", **FAST)
    tries = [r for r in faulty.requests(key=key) if r[1] == store]
    assert len(tries) <= 2 and len(_gets(faulty, store, key)) <= 1  # one GET (s3fs may HEAD first): no retry
    _, _, problem = decode.read_item(f"s3://{store}/{key}", None)
    assert problem[0] == "not_found" and problem[0] not in RETRY_STATUSES
    with pytest.raises(FileNotFoundError):  # a bucket that does not exist is missing too
        storage.read_object(f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/x.png", **FAST)


class _FlakyFS(fsspec.AbstractFileSystem):
    """An fsspec filesystem whose reads fail with a given exception a given number of times."""

    protocol = "flaky"
    failures: list[BaseException] = []
    calls = 0

    def cat_file(self, path, start=None, end=None, **kw):
        type(self).calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return b"DATA"


fsspec.register_implementation("flaky", _FlakyFS, clobber=True)


@pytest.mark.parametrize(
    "exc",
    [
        TimeoutError("read timed out"),
        ConnectionResetError(104, "Connection reset by peer"),
        OSError(5, "EIO"),
    ],
)
def test_timeouts_and_resets_are_retried(exc):
    _FlakyFS.calls, _FlakyFS.failures = 0, [exc, exc]
    assert storage.read_object("flaky://x/y", **FAST) == b"DATA"
    assert _FlakyFS.calls == 3
    _FlakyFS.calls, _FlakyFS.failures = 0, [exc] * 5
    t0 = time.perf_counter()
    _, _, problem = decode.read_item("flaky://x/y", None, (), 4)
    assert problem[0] == "read_error" and _FlakyFS.calls == 4
    assert time.perf_counter() - t0 > 0.5 * (0.5 + 1 + 2)  # backoff between the attempts (jitter >= 0.5)


def test_local_missing_file_and_unreadable_file(tmp_path):
    _, _, problem = decode.read_item(str(tmp_path / "absent.png"), None)
    assert problem == ("not_found", f"{tmp_path / 'absent.png'} does not exist")
    locked = tmp_path / "locked.png"
    locked.write_bytes(b"x")
    locked.chmod(0)
    try:
        if locked.read_bytes():  # root reads anything: nothing to test here
            pytest.skip("running as root")
    except PermissionError:
        _, _, problem = decode.read_item(str(locked), None, (), 2)
        assert problem[0] == "read_error" and "access refused" in problem[1]


# ------------------------------------------------------------------------------------------ secrets

SECRET_URL = "s3://AKIDEXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY@bucket/dir/a@b.png"


@pytest.mark.parametrize(
    "url, clean",
    [
        (SECRET_URL, "s3://bucket/dir/a@b.png"),
        ("s3://AKID@bucket/x.png", "s3://bucket/x.png"),
        ("S3A://u:p@bucket/x", "S3A://bucket/x"),
        ("https://u:p@host/x?X-Amz-Signature=abc&part=1", "https://host/x?X-Amz-Signature=***&part=1"),
        ("s3://bucket/a@b/c:d.png", "s3://bucket/a@b/c:d.png"),  # '@' in a key is not user info
        ("/data/u:p@x.png", "/data/u:p@x.png"),
        ("s3://bucket/token=1/x.png", "s3://bucket/token=1/x.png"),
    ],
)
def test_redact_url(url, clean):
    assert storage.redact_url(url) == clean


def test_redact_text_strips_user_info_of_every_url_in_it():
    text = f"could not read '{SECRET_URL}' (and s3://k2:s2@other/x): s3://plain/a@b"
    out = storage.redact_text(text)
    assert "wJalr" not in out and "AKIDEXAMPLE" not in out and "k2" not in out and "s2@" not in out
    assert "s3://bucket/dir/a@b.png" in out and "s3://other/x" in out and "s3://plain/a@b" in out


def test_credentials_in_an_s3_url_reach_the_filesystem_only(faulty, store, caplog):
    url = f"s3://userkey:user/secret@{store}/a.png"
    loc = storage.resolve(url)
    assert loc.path == f"{store}/a.png" and loc.url() == f"s3://{store}/a.png"
    assert loc.fs.key == "userkey" and loc.fs.secret == "user/secret"
    assert storage.read_object(url, **FAST) == b"PNG-BYTES"
    faulty.rule = lambda m, b, k: 503 if k == "a.png" else None
    with caplog.at_level("WARNING"), pytest.raises(storage.UnreadableError) as e:
        storage.read_object(url, **FAST)
    shown = str(e.value) + caplog.text
    assert "user/secret" not in shown and "userkey" not in shown and f"s3://{store}/a.png" in shown
    _, _, problem = decode.read_item(url, None, (), 2)
    assert "user/secret" not in problem[1] and "userkey" not in problem[1]
    with pytest.raises(FileNotFoundError) as e:
        faulty.rule = lambda m, b, k: None
        storage.read_object(f"s3://userkey:user/secret@{store}/missing.png", **FAST)
    assert "secret" not in str(e.value)


def test_config_json_keeps_names_not_secrets():
    from adray.pipeline.spec import ScoreConfig

    cfg = ScoreConfig(
        input="s3://K:S3CRET@bucket/manifest.parquet",
        output="s3://K:S3CRET@bucket/out",
        actor_env={"AWS_SECRET_ACCESS_KEY": "S3CRET"},
        allow_prefixes=["s3://K:S3CRET@bucket/images"],
    )
    doc = cfg.to_json()
    assert "S3CRET" not in str(doc)
    assert doc["actor_env"] == ["AWS_SECRET_ACCESS_KEY"] and doc["input"] == "s3://bucket/manifest.parquet"


# ------------------------------------------------------------------------------------------ allow-list


@pytest.mark.parametrize(
    "url, allowed",
    [
        ("s3://data/images/a.png", True),
        ("s3://data/images", True),
        ("S3://data/images/a.png", True),
        ("s3a://data/images/a.png", True),
        ("s3://k:s@data/images/a.png", True),
        ("s3://data/images2/a.png", False),
        ("s3://data/images/../secret/a.png", False),
        ("s3://data/other/../images/a.png", False),  # the written key is outside, whatever it reads
        ("s3://data2/images/a.png", False),
        ("/etc/shadow", False),
        ("file:///proc/self/environ", False),
    ],
)
def test_allow_prefix_on_object_stores(url, allowed):
    assert storage.is_under_prefix(url, "s3://data/images/") is allowed


def test_allow_prefix_on_local_paths_follows_dot_dot_and_symlinks(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "a.png").write_bytes(b"x")
    (root / "link.png").symlink_to("/etc/hostname")
    assert storage.is_under_prefix(str(root / "a.png"), str(root))
    assert storage.is_under_prefix(f"file://{root}/a.png", str(root))
    assert not storage.is_under_prefix(f"{root}/../images-not/a.png", str(root))
    assert not storage.is_under_prefix(f"{root}/../../../etc/shadow", str(root))
    assert not storage.is_under_prefix(str(root / "link.png"), str(root))


def test_refused_uri_is_a_row_that_names_the_rule_and_reads_nothing(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-CONTENT")
    allowed = (str(tmp_path / "images"),)
    image, cloud, problem = decode.read_item(str(secret), None, allowed)
    assert image is None and problem[0] == "not_allowed" and problem[0] in RETRY_STATUSES
    assert "--allow-prefix" in problem[1] and str(tmp_path / "images") in problem[1]
    assert "TOPSECRET" not in problem[1]
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"ok")
    _, _, problem = decode.read_item(str(tmp_path / "images" / "a.png"), str(secret), allowed)
    assert problem[0] == "not_allowed" and "point cloud" in problem[1]
    image, _, problem = decode.read_item(str(tmp_path / "images" / "a.png"), None, allowed)
    assert image == b"ok" and problem is None
