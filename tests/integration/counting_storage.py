"""Test support (no tests here): a storage scheme that counts its reads, for every process of a run.

``countfile:///ROOT/data/...`` reads local files like ``file://`` and appends one line per whole-object
read (``cat_file``, what :func:`adray.storage.read_object` calls) to ``ROOT/reads.log``: decode tasks run in
Ray worker processes, so the count has to live outside the test's process. Ray workers import this module
as a plugin (``plugins=[PLUGIN]``); the decode stage imports a run's plugins before it reads anything.
"""

from __future__ import annotations

import os
from collections import Counter

import fsspec
from fsspec.implementations.local import LocalFileSystem

PLUGIN = "tests.integration.counting_storage"
SCHEME = "countfile"
LOG_NAME = "reads.log"


class CountingFileSystem(LocalFileSystem):
    protocol = (SCHEME,)

    def cat_file(self, path, start=None, end=None, **kwargs):
        path = self._strip_protocol(path)
        data = super().cat_file(path, start=start, end=end, **kwargs)
        root = path.split("/data/", 1)[0]
        fd = os.open(os.path.join(root, LOG_NAME), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (path + "\n").encode())  # one small O_APPEND write: whole lines across processes
        finally:
            os.close(fd)
        return data

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith(f"{SCHEME}://"):
            path = path[len(SCHEME) + 3 :]
        return super()._strip_protocol(path)


def reads(root: str) -> Counter:
    """``{local path: number of whole-object reads}`` logged under ``root``."""
    log = os.path.join(root, LOG_NAME)
    if not os.path.exists(log):
        return Counter()
    with open(log) as f:
        return Counter(line.strip() for line in f if line.strip())


fsspec.register_implementation(SCHEME, CountingFileSystem, clobber=True)
