"""Tasks the fault suite runs (imported by worker children with `-I support.fault_tasks`). Like
support.worker_tasks, each records what happened in $UTIL_TEST_SINK (`<task id> <pid> <what>`,
O_APPEND so lines from many processes never tear). "ran" is written first thing, long before a
limit can fire: a line written later could itself be cut short by the soft limit."""

from __future__ import annotations

import os
import sqlite3
import time

from utilitarian import queues
from utilitarian.tasks import SoftTimeLimitExceeded, task

from support.worker_tasks import _sink


@task("fault.near_soft", queue=queues.DEFAULT, bind=True, max_retries=0, soft_time_limit=0.05)
def near_soft(ctx, seconds: float) -> None:
    """Ends around its 0.05 s soft limit: before it, at it, or interrupted by it (and cleans up).
    A limit meant for another task (the one this thread ran before) surfaces as soon as this one
    starts: recorded as "early". Less than half the limit, not "a hair under it": the runner
    stamps a task's start before its first line runs, and a thread preempted in between (a GIL
    switch interval is 5 ms; several under CI load) sees its own limit early by its own clock."""
    started = time.monotonic()
    _sink(f"{ctx.id} {os.getpid()} ran")
    try:
        while time.monotonic() < started + seconds:
            time.sleep(0.005)
    except SoftTimeLimitExceeded:
        _sink(f"{ctx.id} {os.getpid()} {'early' if time.monotonic() - started < 0.025 else 'soft'}")


@task("fault.system_exit", queue=queues.DEFAULT, bind=True, max_retries=2)
def system_exit(ctx, code: int = 3) -> None:
    _sink(f"{ctx.id} {os.getpid()} ran")
    raise SystemExit(code)


_STORE = {}


def _store():
    """One store backend per process, on the file named by $UTIL_TEST_DB (the AMR store's own
    SQLite backend: its flock, write lock and pooled connections are what the test watches)."""
    from utilitarian.amr.store.backend import open_backend

    backend = _STORE.get(os.getpid())
    if backend is None:
        backend = _STORE[os.getpid()] = open_backend(f"sqlite:///{os.environ['UTIL_TEST_DB']}", timeout=30.0)
    return backend


@task("fault.store_writer", queue=queues.DEFAULT, bind=True, max_retries=0, soft_time_limit=0.3)
def store_writer(ctx) -> None:
    """Writes rows in short transactions until its soft limit stops it."""
    _sink(f"{ctx.id} {os.getpid()} ran")
    backend = _store()
    try:
        while True:
            with backend.transaction(write=True) as tx:
                tx.execute("INSERT INTO writes (task, pid) VALUES (?, ?)", (ctx.id, os.getpid()))
    except SoftTimeLimitExceeded:
        pass


def create_store(path: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS writes (task TEXT, pid INTEGER)")
    conn.commit()
    conn.close()


def _slow_hook(ctx, exc, args, kwargs) -> None:
    # Like the AMR hook waiting on the commit outbox and a confirmed publish.
    _sink(f"{ctx.id} {os.getpid()} hook-start")
    time.sleep(float(os.environ.get("UTIL_TEST_HOOK_SECONDS", "6")))
    _sink(f"{ctx.id} {os.getpid()} hook-end")


@task("fault.hang_slow_hook", queue=queues.DEFAULT, bind=True, max_retries=0, time_limit=1.0, on_failure=_slow_hook)
def hang_slow_hook(ctx) -> None:
    _sink(f"{ctx.id} {os.getpid()} start")
    while True:
        time.sleep(0.05)
