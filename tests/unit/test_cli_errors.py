"""Errors a person can act on: every command prints one line ``adray <cmd>: error: ...`` and exits 2 for an
expected user error (refused access, missing bucket, a fit the data cannot make, weights not cached);
anything else is a bug and keeps its traceback. Through the CLI: ``adray.cli.main`` or a subprocess."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from adray.cli import main
from adray.errors import UserError, one_line, user_error_types
from adray.synthetic import generate_mvtec_ad

ROOT = Path(__file__).resolve().parents[2]
_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message>'
    b"<RequestId>1</RequestId></Error>"
)


class _Deny(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint that answers 403 AccessDenied to every request."""

    def _deny(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        body = b"" if self.command == "HEAD" else _DENIED
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _deny

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def denying_s3(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Deny)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("ADRAY_S3_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    yield
    server.shutdown()


def _one_error_line(capsys, prog: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["catalog", "--input", "s3://locked/mvtec", "--output", "{tmp}/m.parquet"],
        ["query", "--output", "s3://locked/results", "select count(*) from results"],
    ],
)
def test_a_403_is_the_friendly_storage_error_with_status_2(denying_s3, tmp_path, capsys, argv):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    line = _one_error_line(capsys, f"adray {argv[0]}")
    assert "s3://locked/" in line and "was refused" in line and "credentials and bucket policy" in line


def test_a_missing_bucket_is_one_line_with_status_2(s3_server, tmp_path, capsys):
    out = str(tmp_path / "m.parquet")
    assert main(["catalog", "--input", "s3://no-such-bucket-13/mvtec", "--output", out]) == 2
    line = _one_error_line(capsys, "adray catalog")
    assert "s3://no-such-bucket-13/mvtec" in line


@pytest.fixture(scope="module")
def unmasked_dataset(tmp_path_factory) -> str:
    """MVTec layout with test anomalies but no ground_truth folder."""
    root = tmp_path_factory.mktemp("nomasks") / "mvtec"
    generate_mvtec_ad(
        str(root), categories=("bottle",), image_size=32, n_train=3, n_test_good=1, n_test_per_defect=1
    )
    shutil.rmtree(root / "bottle" / "ground_truth")
    return str(root)


def test_supervised_bgad_fit_without_masks_says_what_is_missing_and_how_to_proceed(
    unmasked_dataset, tmp_path, capsys, monkeypatch
):
    import adray.commands.fit_bgad as fit_cmd

    monkeypatch.setattr(fit_cmd, "ensure_ray", lambda address=None: None)  # the plan fails on the driver
    argv = ["fit-bgad", "--train", unmasked_dataset, "--category", "bottle", "--output", str(tmp_path / "a")]
    argv += ["--weights", "random", "--backbone", "test_efficientnet", "--num-anomalies", "4"]
    assert main(argv) == 2
    line = _one_error_line(capsys, "adray fit-bgad")
    assert "no test anomalies with ground-truth masks" in line
    assert "--num-anomalies 0" in line and "add masks" in line


def test_fit_bgad_with_uncached_pretrained_weights_stops_on_the_driver_before_ray(unmasked_dataset, tmp_path):
    """jobs/fit_bgad.py (the Ray job entry) with an empty, offline hub cache: exit 2, one line, no Ray."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", TORCH_HOME=str(tmp_path / "torch"))
    cmd = [sys.executable, str(ROOT / "jobs" / "fit_bgad.py"), "--train", unmasked_dataset]
    cmd += ["--category", "bottle", "--output", str(tmp_path / "a"), "--backbone", "resnet18"]
    cmd += ["--num-anomalies", "0", "--weights", "pretrained"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("jobs/fit_bgad.py: error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "could not load pretrained weights for 'resnet18'" in errors[0] and "--weights" in errors[0]
    assert "Ray" not in proc.stderr  # no cluster was started (its start-up logs name Ray)


def test_a_bug_keeps_its_traceback(monkeypatch):
    import adray.commands.query as query_cmd

    def boom(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(query_cmd, "run", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["query", "--output", "/nonexistent", "select 1"])


def test_user_errors_and_os_errors_read_as_one_line():
    assert UserError in user_error_types() and RuntimeError not in user_error_types()
    assert one_line(UserError("two\n  lines")) == "two lines"
    assert one_line(FileNotFoundError(2, "No such file or directory", "/data/x")) == (
        "not found: /data/x: No such file or directory"
    )
    assert one_line(PermissionError(13, "Forbidden")) == "access refused: Forbidden"


def test_score_with_impossible_flags_is_one_line_with_status_2(tmp_path, capsys):
    argv = ["score", "--input", str(tmp_path / "m.parquet"), "--output", str(tmp_path / "out")]
    assert main([*argv, "--batch-size", "0", "--run-id", "bad/id"]) == 2
    line = _one_error_line(capsys, "adray score")
    assert "invalid scoring configuration" in line and "--batch-size must be >= 1, got 0" in line
    assert "--run-id 'bad/id'" in line
