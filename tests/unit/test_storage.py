"""adray.storage on the local file system and on S3 (moto on loopback): I/O, listing, retries, errors."""

from __future__ import annotations

import logging
import os
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adray import storage
from adray.storage import StorageError

SECRET = "sUpErSeCrEt-value-1234"


@pytest.fixture(params=["local", "s3"])
def base_url(request, tmp_path):
    """A writable base URL on each backend."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket") + "/prefix"


@pytest.fixture
def no_sleep(monkeypatch):
    """Record retry back-off delays instead of sleeping (only inside adray.storage)."""
    delays: list[float] = []
    monkeypatch.setattr(storage, "time", types.SimpleNamespace(sleep=delays.append))
    return delays


def test_write_read_text_bytes_and_exists(base_url):
    url = storage.join_url(base_url, "a/b/c.bin")
    assert not storage.exists(url)
    storage.write_bytes(url, b"\x00\x01payload")
    assert storage.exists(url)
    assert storage.read_bytes(url) == b"\x00\x01payload"
    storage.write_text(storage.join_url(base_url, "t.txt"), "héllo")
    assert storage.read_text(storage.join_url(base_url, "t.txt")) == "héllo"


def test_missing_object_raises_file_not_found(base_url):
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join_url(base_url, "nope.bin"))


def test_overwrite_replaces_content_and_changes_the_content_token(base_url):
    url = storage.join_url(base_url, "x.bin")
    storage.write_bytes(url, b"first")
    token1 = storage.content_token(storage.info(url))
    storage.write_bytes(url, b"second, longer")
    assert storage.read_bytes(url) == b"second, longer"
    assert storage.content_token(storage.info(url)) != token1


def test_walk_files_streams_every_file_and_skips_hidden_and_system_files(base_url):
    for rel in ["cat/train/good/000.png", "cat/test/crack/001.png", "top.txt"]:
        storage.write_bytes(storage.join_url(base_url, rel), b"data-" + rel.encode())
    for rel in [".DS_Store", "cat/Thumbs.db", "cat/.hidden/x.png", "__MACOSX/cat/._000.png"]:
        storage.write_bytes(storage.join_url(base_url, rel), b"junk")
    found = dict(storage.walk_files(base_url))
    rels = sorted(u[len(storage.resolve(base_url).url()) + 1 :] for u in found)
    assert rels == ["cat/test/crack/001.png", "cat/train/good/000.png", "top.txt"]
    for url, meta in found.items():
        assert storage.read_bytes(url).startswith(b"data-")
        assert meta["size"] == len(storage.read_bytes(url))
        assert storage.content_token(meta)


def test_walk_files_is_lazy(base_url):
    storage.write_bytes(storage.join_url(base_url, "d/one.txt"), b"1")
    it = storage.walk_files(base_url)
    assert iter(it) is it  # a generator, not a materialised list
    assert next(it)[0].endswith("one.txt")


def test_local_write_is_atomic_when_the_rename_fails(tmp_path, monkeypatch):
    url = str(tmp_path / "d" / "f.bin")
    storage.write_bytes(url, b"old")

    def broken_replace(src, dst):
        raise PermissionError("disk says no")

    monkeypatch.setattr(storage.os, "replace", broken_replace)
    with pytest.raises(PermissionError):
        storage.write_bytes(url, b"new")
    monkeypatch.undo()
    assert storage.read_bytes(url) == b"old"
    assert os.listdir(tmp_path / "d") == ["f.bin"]  # no temp file left behind


def test_content_token_prefers_version_then_etag_then_size_mtime():
    assert storage.content_token({"VersionId": "v9", "ETag": '"abc"', "size": 3}) == "v:v9"
    assert storage.content_token({"ETag": '"abc"', "size": 3}) == "e:abc"
    assert storage.content_token({"size": 3, "mtime": 12.5}) == "s:3:12.5"


def test_s3_objects_carry_an_etag_token(s3_bucket):
    url = f"{s3_bucket}/k/obj.bin"
    storage.write_bytes(url, b"abc")
    ((listed_url, meta),) = list(storage.walk_files(f"{s3_bucket}/k"))
    assert listed_url == url
    assert storage.content_token(meta).startswith("e:")


def _flaky(fail_with: list[BaseException], result: bytes):
    calls = {"n": 0}

    def cat_file(path, *args, **kwargs):
        calls["n"] += 1
        if fail_with:
            raise fail_with.pop(0)
        return result

    return cat_file, calls


def test_transient_errors_are_retried_then_succeed(base_url, monkeypatch, no_sleep):
    url = storage.join_url(base_url, "r.bin")
    fs = storage.resolve(url, single_attempt=True).fs  # the client read_bytes uses (its retries are adray's)
    cat_file, calls = _flaky(
        [OSError("503 SlowDown: reduce your request rate"), ConnectionError("reset")], b"ok"
    )
    monkeypatch.setattr(fs, "cat_file", cat_file)
    assert storage.read_bytes(url) == b"ok"
    assert calls["n"] == 3
    assert len(no_sleep) == 2 and no_sleep[1] >= no_sleep[0] * 0.5 > 0


def test_retries_are_bounded(tmp_path, monkeypatch, no_sleep):
    url = str(tmp_path / "r.bin")
    fs = storage.resolve(url).fs
    cat_file, calls = _flaky([TimeoutError("timed out")] * 10, b"never")
    monkeypatch.setattr(fs, "cat_file", cat_file)
    with pytest.raises(TimeoutError):
        storage.read_bytes(url)
    assert calls["n"] == 4


@pytest.mark.parametrize(
    "error", [PermissionError("denied"), ValueError("bad request"), FileNotFoundError("gone")]
)
def test_non_transient_errors_are_not_retried(tmp_path, monkeypatch, no_sleep, error):
    url = str(tmp_path / "r.bin")
    fs = storage.resolve(url).fs
    cat_file, calls = _flaky([error], b"x")
    monkeypatch.setattr(fs, "cat_file", cat_file)
    with pytest.raises(type(error)):
        storage.read_bytes(url)
    assert calls["n"] == 1 and no_sleep == []


def test_pyarrow_filesystem_reads_and_writes_parquet(base_url):
    table = pa.table({"item_id": ["a", "b"], "score": [0.1, 0.9]})
    url = storage.join_url(base_url, "t/part.parquet")
    fs, path = storage.pyarrow_filesystem(url)
    if not url.startswith("s3://"):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).equals(table)
    # what pyarrow wrote, fsspec reads
    assert storage.read_bytes(url)[:4] == b"PAR1"


def test_pyarrow_filesystem_on_s3_is_native(s3_bucket):
    import pyarrow.fs as pafs

    fs, path = storage.pyarrow_filesystem(f"{s3_bucket}/x")
    assert isinstance(fs, pafs.S3FileSystem)
    assert path == f"{s3_bucket[5:]}/x"


def test_unknown_scheme_names_the_fix():
    with pytest.raises(StorageError) as e:
        storage.resolve("nosuchproto://bucket/key")
    msg = str(e.value)
    assert "'nosuchproto'" in msg and "s3://BUCKET/PREFIX" in msg and "install the fsspec package" in msg


@pytest.mark.parametrize("url", ["s3://", "s3:///key", "", None])
def test_malformed_urls_are_refused_clearly(url):
    with pytest.raises(StorageError):
        storage.resolve(url)


def test_missing_credentials_against_a_real_s3_server_name_the_fix(s3_bucket, monkeypatch):
    storage.write_bytes(f"{s3_bucket}/obj", b"x")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    storage._s3fs.cache_clear()
    try:
        with pytest.raises(StorageError) as e:
            storage.read_bytes(f"{s3_bucket}/obj")
    finally:
        storage._s3fs.cache_clear()
    assert "no credentials" in str(e.value) and "AWS_ACCESS_KEY_ID" in str(e.value)


def test_no_credentials_error_from_botocore_is_mapped(tmp_path, monkeypatch):
    from botocore.exceptions import NoCredentialsError

    url = str(tmp_path / "f")
    fs = storage.resolve(url).fs

    def no_creds(*a, **k):
        raise NoCredentialsError()

    monkeypatch.setattr(fs, "cat_file", no_creds)
    with pytest.raises(StorageError, match="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        storage.read_bytes(url)


def test_secrets_never_appear_in_errors_or_retry_logs(tmp_path, monkeypatch, no_sleep, caplog):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    url = str(tmp_path / "f")
    fs = storage.resolve(url).fs
    cat_file, _ = _flaky(
        [
            OSError(f"503 Service Unavailable for key {SECRET}"),
            PermissionError(f"SignatureDoesNotMatch: computed with secret {SECRET}"),
        ],
        b"",
    )
    monkeypatch.setattr(fs, "cat_file", cat_file)
    with caplog.at_level(logging.WARNING, logger="adray.storage"):
        with pytest.raises(StorageError) as e:
            storage.read_bytes(url)
    assert "***" in caplog.text and SECRET not in caplog.text
    assert "refused" in str(e.value) and SECRET not in str(e.value)

    def denied(*a, **k):
        raise OSError(f"AccessDenied: signature for {SECRET} does not match")

    monkeypatch.setattr(fs, "pipe_file", denied)
    monkeypatch.setattr(storage.os, "replace", denied)
    with pytest.raises(StorageError) as e:
        storage.write_bytes(url, b"x")
    assert "refused" in str(e.value) and SECRET not in str(e.value)
