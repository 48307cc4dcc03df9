"""One writer per run id: a lease object under the output root, renewed by a heartbeat while the run goes on.

``<output>/leases/<run_id>.json`` holds the owner (host, pid, a uuid per process and run), when it was
acquired and renewed, and when it expires. A run takes it before it writes anything and gives it back when
it commits or fails; a second writer of the same run id stops at once with :class:`LeaseHeldError` naming
the owner and the expiry. A lease whose holder died (kill -9, a lost host) expires after ``ttl_s`` and
can then be taken over. How the write is made atomic depends on the storage:

- local paths: read-check-write under an exclusive ``flock`` on ``leases/<run_id>.lock`` (serialises all
  writers on one host, and on NFS v4, where Linux maps ``flock`` to byte-range locks); no race window.
- S3 (s3fs): conditional PUTs. The first lease is created with ``If-None-Match: *`` (only one creator
  wins), renewals and takeovers of an expired lease with ``If-Match: <ETag read>`` (only one of two takers
  wins). A PUT whose answer was lost and retried is recognised by reading the lease back.
- other stores, or an S3-compatible store that refuses conditional PUTs (``NotImplemented``): write, then
  read back and compare. Two writers that both read "free" within the same few milliseconds can both
  write; the later write wins, and the earlier writer finds a stranger's lease at its next renewal (every
  ``heartbeat_s``) and stops before it commits (:class:`LeaseLostError`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from adray import storage
from adray.errors import UserError
from adray.pipeline.results_store import ResultsStore

log = logging.getLogger(__name__)

#: Seconds a lease lives without renewal (``ADRAY_RUN_LEASE_TTL_S`` overrides); a killed run's id is free
#: again after this long. The heartbeat renews every third of it.
DEFAULT_TTL_S = 60.0


class LeaseHeldError(UserError):
    """Another live writer holds the run id's lease."""


class LeaseLostError(UserError):
    """This run's lease expired and another writer took it; the run must not commit."""


def lease_url(output: str, run_id: str) -> str:
    """``<output>/leases/<run_id>.json`` (:meth:`ResultsStore.lease_url`)."""
    return ResultsStore(output).lease_url(run_id)


def default_ttl_s() -> float:
    return float(os.environ.get("ADRAY_RUN_LEASE_TTL_S", DEFAULT_TTL_S))


def _now() -> float:
    return time.time()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def describe(doc: dict[str, Any]) -> str:
    """``host <h> pid <p> (<uuid8>), expires <iso> (in N s)``."""
    o = doc.get("owner") or {}
    left = float(doc.get("expires_unix", 0)) - _now()
    when = f"in {left:.0f} s" if left > 0 else f"{-left:.0f} s ago"
    return (
        f"host {o.get('host')} pid {o.get('pid')} ({str(o.get('uuid', ''))[:8]}), "
        f"expires {doc.get('expires_at')} ({when})"
    )


def _is_precondition_failure(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return isinstance(exc, FileExistsError) or any(
        m in text for m in ("PreconditionFailed", "pre-condition", "precondition", "412")
    )


def _is_unsupported(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return any(m in text for m in ("NotImplemented", "501", "not supported"))


@dataclass
class RunLease:
    """The lease of one run id for one process. :meth:`acquire`, :meth:`renew`, :meth:`release`;
    :meth:`check` raises :class:`LeaseLostError` once a renewal found the lease taken."""

    output: str
    run_id: str
    ttl_s: float = field(default_factory=default_ttl_s)
    owner: dict[str, Any] = field(
        default_factory=lambda: {"host": socket.gethostname(), "pid": os.getpid(), "uuid": uuid.uuid4().hex}
    )
    acquired_at: float | None = None
    lost: str | None = None
    _etag: str | None = None
    _mode: str = ""  # "local", "conditional" or "readback"

    @property
    def url(self) -> str:
        return lease_url(self.output, self.run_id)

    def _doc(self) -> dict[str, Any]:
        now = _now()
        return {
            "run_id": self.run_id,
            "owner": self.owner,
            "acquired_at": _iso(self.acquired_at or now),
            "renewed_at": _iso(now),
            "expires_at": _iso(now + self.ttl_s),
            "expires_unix": now + self.ttl_s,
            "ttl_s": self.ttl_s,
        }

    def _mine(self, doc: dict[str, Any] | None) -> bool:
        return bool(doc) and (doc.get("owner") or {}).get("uuid") == self.owner["uuid"]

    # ------------------------------------------------------------------------------------- public

    def acquire(self) -> None:
        """Take the lease, or raise :class:`LeaseHeldError` naming the live owner and the expiry."""
        self.acquired_at = _now()
        self._write(taking=True)
        log.info("run %s: lease %s taken (expires in %.0f s)", self.run_id, self.url, self.ttl_s)

    def renew(self) -> None:
        """Push the expiry out by ``ttl_s``; raises :class:`LeaseLostError` if another writer holds it."""
        if self.lost:
            raise LeaseLostError(self.lost)
        try:
            self._write(taking=False)
        except LeaseHeldError as e:
            self.lost = (
                f"run {self.run_id}: the lease on this run id was lost ({e}); this writer stops without "
                "committing"
            )
            raise LeaseLostError(self.lost) from None

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if a renewal found the lease in other hands."""
        if self.lost:
            raise LeaseLostError(self.lost)

    def release(self) -> None:
        """Remove the lease if it is still this process's (never someone else's)."""
        loc = storage.resolve(self.url)
        try:
            if loc.protocol == "file":
                with self._locked(loc):
                    if self._mine(self._read_local(loc.path)):
                        os.unlink(loc.path)
            else:
                doc, _ = self._read_remote(loc)
                if self._mine(doc):
                    loc.fs.rm_file(loc.path)
        except Exception as e:  # a lease left behind only delays a rerun by ttl_s
            log.warning("run %s: could not release lease %s: %s", self.run_id, self.url, e)

    # ------------------------------------------------------------------------------------- local

    @contextlib.contextmanager
    def _locked(self, loc: storage.Location) -> Iterator[None]:
        import fcntl

        os.makedirs(os.path.dirname(loc.path), exist_ok=True)
        fd = os.open(loc.path[: -len(".json")] + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    @staticmethod
    def _read_local(path: str) -> dict[str, Any] | None:
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except ValueError:
            return {}  # a torn or foreign file: treated as expired

    def _refuse(self, doc: dict[str, Any]) -> None:
        raise LeaseHeldError(
            f"run id {self.run_id!r} is being written by another process ({describe(doc)}; lease "
            f"{storage.redact_url(self.url)}); wait for it to finish, use another --run-id, or re-run after "
            "the lease expires if that process is gone"
        )

    def _free_or_mine(self, doc: dict[str, Any] | None) -> bool:
        return not doc or self._mine(doc) or float(doc.get("expires_unix", 0)) <= _now()

    def _write(self, *, taking: bool) -> None:
        loc = storage.resolve(self.url)
        if loc.protocol == "file":
            self._mode = "local"
            with self._locked(loc):
                doc = self._read_local(loc.path)
                if not (self._mine(doc) if not taking else self._free_or_mine(doc)):
                    self._refuse(doc or {})
                if doc and not self._mine(doc) and taking:
                    log.warning("run %s: taking over an expired lease (%s)", self.run_id, describe(doc))
                storage.write_text(self.url, json.dumps(self._doc(), indent=1))
            return
        self._write_remote(loc, taking=taking)

    # ------------------------------------------------------------------------------------- remote

    def _read_remote(self, loc: storage.Location) -> tuple[dict[str, Any] | None, str | None]:
        try:
            meta = loc.fs.info(loc.path)
            raw = loc.fs.cat_file(loc.path)
        except FileNotFoundError:
            return None, None
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = {}
        etag = meta.get("ETag") or meta.get("etag")
        return doc, (str(etag) if etag else None)

    def _write_remote(self, loc: storage.Location, *, taking: bool) -> None:
        body = json.dumps(self._doc(), indent=1).encode()
        doc, etag = self._read_remote(loc)
        if not (self._mine(doc) if not taking else self._free_or_mine(doc)):
            self._refuse(doc or {})
        if doc and not self._mine(doc) and taking:
            log.warning("run %s: taking over an expired lease (%s)", self.run_id, describe(doc))
        if self._mode != "readback" and loc.protocol == "s3":
            try:
                if doc is None:
                    out = loc.fs.pipe_file(loc.path, body, mode="create")
                else:
                    out = loc.fs.pipe_file(loc.path, body, IfMatch=etag)
                self._mode = "conditional"
                self._etag = (out or {}).get("ETag") if isinstance(out, dict) else None
                return
            except Exception as e:
                if _is_precondition_failure(e):
                    now_doc, _ = self._read_remote(loc)
                    if self._mine(now_doc) and now_doc.get("renewed_at") == json.loads(body)["renewed_at"]:
                        return  # our PUT landed; its answer was lost and the retry met our own lease
                    self._refuse(now_doc or {})
                if not _is_unsupported(e):
                    raise
                log.warning("%s refuses conditional writes (%s); leases fall back to read-back", self.url, e)
        self._mode = "readback"
        loc.fs.pipe_file(loc.path, body)
        back, _ = self._read_remote(loc)
        if not self._mine(back):
            self._refuse(back or {})


@contextlib.contextmanager
def hold_run_lease(
    output: str, run_id: str, *, ttl_s: float | None = None, heartbeat_s: float | None = None
) -> Iterator[RunLease]:
    """Hold the lease of ``run_id`` under ``output`` for the body, renewed every ``heartbeat_s`` (default
    ``ttl_s / 3``) by a daemon thread, released on the way out whether the body succeeded or raised.

    Raises :class:`LeaseHeldError` at entry when a live writer holds it. The body should call
    :meth:`RunLease.check` before it commits (a stalled process may have lost the lease).
    """
    lease = RunLease(output, run_id, ttl_s=ttl_s if ttl_s is not None else default_ttl_s())
    lease.acquire()
    stop = threading.Event()
    interval = heartbeat_s if heartbeat_s is not None else lease.ttl_s / 3

    def beat() -> None:
        while not stop.wait(interval):
            try:
                lease.renew()
            except LeaseLostError as e:
                log.error("%s", e)
                return
            except Exception as e:  # a storage hiccup: try again next beat, the lease still has time
                log.warning("run %s: lease renewal failed: %s", run_id, e)

    thread = threading.Thread(target=beat, name=f"lease-{run_id}", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join(timeout=interval + 5)
        lease.release()
