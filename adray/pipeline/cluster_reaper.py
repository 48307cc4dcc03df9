"""Ends an embedded Ray cluster's processes once its driver has died (``kill -9`` included).

Run by :func:`adray.pipeline.cluster.start_reaper` as a script (``python -I cluster_reaper.py --pid PID
--session-dir DIR``), so it imports neither adray nor torch: it waits for the driver with a pidfd (no
polling, no wake-ups while the job runs; a 1 s poll where pidfds are missing), then terminates every
process of the current user that belongs to that Ray session: its command line names the session
directory, or it holds a file open under it (the agents rename themselves, but keep their logs open), plus
their descendants. SIGTERM first, SIGKILL after a grace period. Other Ray instances on the machine have
other session directories and are never touched (unlike ``ray stop``, which ends every Ray process).
"""

from __future__ import annotations

import argparse
import os
import select
import time

import psutil

GRACE_S = 5.0
#: keep looking for late processes (a worker the raylet was starting) this long after the driver died
SETTLE_S = 20.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pid", type=int, required=True, help="the driver whose death ends the cluster")
    parser.add_argument("--session-dir", required=True, help="the cluster's Ray session directory")
    args = parser.parse_args(argv)
    wait_for_exit(args.pid)
    ended = reap(args.session_dir)
    print(f"driver {args.pid} exited; ended {len(ended)} process(es) of {args.session_dir}: {ended}", flush=True)
    return 0


def wait_for_exit(pid: int) -> None:
    """Block until process ``pid`` has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # no pidfd (old kernel, not Linux)
        while psutil.pid_exists(pid):
            time.sleep(1.0)
        return
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not poller.poll():
            pass
    finally:
        os.close(fd)


def reap(session_dir: str) -> list[int]:
    """Terminate every process of ``session_dir`` (see the module docstring); returns the pids ended."""
    ended: list[int] = []
    deadline = time.monotonic() + SETTLE_S
    while True:
        procs = session_processes(session_dir)
        if not procs:
            if time.monotonic() >= deadline or ended:
                return ended
            time.sleep(1.0)
            continue
        for proc in procs:
            _signal(proc, "terminate")
        _, alive = psutil.wait_procs(procs, timeout=GRACE_S)
        for proc in alive:
            _signal(proc, "kill")
        psutil.wait_procs(alive, timeout=GRACE_S)
        ended += [p.pid for p in procs]


def session_processes(session_dir: str) -> list[psutil.Process]:
    """This user's processes that belong to the Ray session in ``session_dir``, with their descendants."""
    base = os.path.realpath(session_dir).rstrip("/")
    me, uid = os.getpid(), os.getuid()
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid", "uids", "cmdline"]):
        try:
            if proc.pid == me or proc.info["uids"] is None or proc.info["uids"].real != uid:
                continue
            if any(_names(arg, base) for arg in proc.info["cmdline"] or ()) or any(
                _names(f.path, base) for f in proc.open_files()
            ):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    if child.pid != me:
                        found[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return list(found.values())


def _names(text: str, base: str) -> bool:
    """Whether ``text`` contains the path ``base`` as a whole path (not ``session_1`` in ``session_12``)."""
    at = text.find(base)
    while at >= 0:
        end = at + len(base)
        if end == len(text) or text[end] in "/ ,;:'\"":
            return True
        at = text.find(base, at + 1)
    return False


def _signal(proc: psutil.Process, how: str) -> None:
    try:
        getattr(proc, how)()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


if __name__ == "__main__":
    raise SystemExit(main())
