"""A worker child caps glibc's malloc arenas (supervisor/child.py limit_malloc_arenas): counted
from glibc's own malloc_stats() in a fresh process whose threads allocate at the same time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import ctypes, sys, threading
from utilitarian.supervisor.child import limit_malloc_arenas
if sys.argv[1] == "limit":
    assert limit_malloc_arenas(2)
start = threading.Barrier(8)
def churn():
    start.wait()
    for _ in range(3000):
        blocks = [bytearray(700) for _ in range(50)]  # above pymalloc's 512 bytes: glibc malloc
        del blocks
threads = [threading.Thread(target=churn) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


def arenas(mode: str, env: dict) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return sum(1 for line in out.stderr.splitlines() if line.startswith("Arena "))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_a_child_allocates_from_at_most_two_arenas():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    # Given eight threads allocating at once: unlimited, glibc spreads them over several arenas
    # (the control, so the limit below is what changed the count); limited, over two at most.
    assert arenas("free", env) > 2
    assert 1 <= arenas("limit", env) <= 2


def test_an_operators_malloc_arena_max_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    from utilitarian.supervisor.child import limit_malloc_arenas

    assert limit_malloc_arenas() is False
