"""adray.runtime.retain_freed_memory: large blocks come from the heap and stay there after free."""

from __future__ import annotations

import subprocess
import sys

import pytest

# mallinfo2 (glibc >= 2.33): how many bytes live in separate mmaps now, and how many free bytes the heap keeps.
SCRIPT = """
import ctypes, sys
import numpy as np
from adray.runtime import retain_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
took = (retain_freed_memory() and retain_freed_memory()) if sys.argv[1] == "retain" else None  # twice: idempotent
a = np.ones(16 * 2**20, dtype=np.float32)  # 64 MiB: above glibc's largest dynamic mmap threshold
mapped_while_alive = libc.mallinfo2().hblkhd
del a
kept_after_free = libc.mallinfo2().fordblks
print(took, mapped_while_alive, kept_after_free)
"""
MIB = 2**20


def _run(mode: str) -> tuple[str, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    return out[0], int(out[1]), int(out[2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt/mallinfo2")
def test_large_blocks_come_from_the_heap_and_stay_there_after_free() -> None:
    took, mapped, kept = _run("retain")
    _, mapped_default, kept_default = _run("default")
    assert took == "True"
    assert mapped_default >= 64 * MIB and kept_default < 64 * MIB  # default: own mmap, unmapped on free
    assert mapped < 64 * MIB and kept >= 64 * MIB  # retained: heap block, kept for the next batch

