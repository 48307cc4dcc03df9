"""A loopback S3 server with faults the test controls per request: moto's S3 behind a WSGI layer.

``FaultyS3().start()`` serves moto on 127.0.0.1 (a port of its own, so a job's workers reach it through
``ADRAY_S3_ENDPOINT``) and consults ``rule(method, bucket, key)`` for every request: ``None`` passes it
to moto; ``403``, ``404``, ``500``, ``503`` or ``"SlowDown"`` answer with that S3 error; ``"reset"`` closes
the connection without an answer. Every request is logged as ``(method, bucket, key, what happened)``.
"""

from __future__ import annotations

import socket
import struct
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

_ERRORS = {
    403: ("403 Forbidden", "AccessDenied", "Access Denied"),
    404: ("404 Not Found", "NoSuchKey", "The specified key does not exist."),
    500: ("500 Internal Server Error", "InternalError", "We encountered an internal error."),
    503: ("503 Service Unavailable", "ServiceUnavailable", "Reduce your request rate."),
    "SlowDown": ("503 Slow Down", "SlowDown", "Please reduce your request rate."),
}

Rule = Callable[[str, str, str], Any]


def serve() -> Iterator[FaultyS3]:
    """A started server, stopped when the generator is closed: the body of a ``faulty`` fixture."""
    server = FaultyS3().start()
    yield server
    server.stop()


class FaultyS3:
    def __init__(self) -> None:
        self.rule: Rule = lambda method, bucket, key: None
        self.log: list[tuple[str, str, str, str]] = []
        self._lock = threading.Lock()

    def start(self) -> FaultyS3:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        self._moto = DomainDispatcherApplication(create_backend_app)
        self._server = make_server("127.0.0.1", 0, self._app, True, request_handler=MotoRequestHandler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()

    def passing(self) -> None:
        """Let every request through to moto again."""
        self.rule = lambda method, bucket, key: None

    def bucket(self, monkeypatch: Any, prefix: str, objects: dict[str, bytes], **env: str) -> str:
        """A fresh bucket ``<prefix>-<8 hex>`` holding ``objects``, every rule passing; adray's storage
        pointed here (``monkeypatch.setenv``: endpoint, dummy credentials, us-east-1, then ``env``)."""
        import boto3

        creds = {"ADRAY_S3_ENDPOINT": self.endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
        for k, v in {**creds, "AWS_REGION": "us-east-1", **env}.items():
            monkeypatch.setenv(k, v)
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.passing()
        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=name)
        for key, body in objects.items():
            client.put_object(Bucket=name, Key=key, Body=body)
        return name

    def requests(self, method: str | None = None, key: str | None = None) -> list[tuple[str, str, str, str]]:
        with self._lock:
            return [r for r in self.log if (method in (None, r[0])) and (key in (None, r[2]))]

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        method = environ["REQUEST_METHOD"]
        parts = unquote(environ.get("PATH_INFO", "")).lstrip("/").split("/", 1)
        bucket, key = parts[0], parts[1] if len(parts) > 1 else ""
        fault = self.rule(method, bucket, key)
        with self._lock:
            self.log.append((method, bucket, key, "pass" if fault is None else str(fault)))
        if fault is None:
            return self._moto(environ, start_response)
        if fault == "reset":
            sock = environ.get("werkzeug.socket")
            if sock is not None:  # RST instead of FIN: the client sees a connection reset
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            start_response("500 Internal Server Error", [("Content-Length", "0")])
            return [b""]
        status, code, message = _ERRORS[fault]
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
            f"<Key>{key}</Key><RequestId>fault</RequestId></Error>"
        ).encode()
        start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
        return [body] if method != "HEAD" else [b""]
