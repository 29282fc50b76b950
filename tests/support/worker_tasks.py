"""Tasks the worker tests run (imported by the worker children with `-I support.worker_tasks`).
Each records what happened in a sink file named by $UTIL_TEST_SINK: one line per run,
`<task id> <pid> <what>`, written with O_APPEND so lines from many processes never tear."""

from __future__ import annotations

import os
import socket
import threading
import time

from utilitarian import queues, steps
from utilitarian.tasks import Retry, task


def _sink(line: str) -> None:
    fd = os.open(os.environ["UTIL_TEST_SINK"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@task("test.record", queue=queues.DEFAULT, bind=True, max_retries=0)
def record(ctx, *args, **kwargs) -> None:
    _sink(f"{ctx.id} {os.getpid()} ran")


@task("test.sleep", queue=queues.DEFAULT, bind=True, max_retries=0)
def sleep(ctx, seconds: float = 1.0) -> None:
    _sink(f"{ctx.id} {os.getpid()} start")
    time.sleep(seconds)
    _sink(f"{ctx.id} {os.getpid()} ran")


@task("test.block_forever", queue=queues.DEFAULT, bind=True, max_retries=1, retry_backoff=0.2, retry_jitter=False,
      time_limit=2.0)
def block_forever(ctx) -> None:
    _sink(f"{ctx.id} {os.getpid()} start")
    threading.Event().wait()


@task("test.allocate", queue=queues.DEFAULT, bind=True, max_retries=0)
def allocate(ctx, mib: int = 300) -> None:
    # Kept alive in a module-level list: the child's RSS stays high until it is recycled.
    _HOLD.append(bytearray(mib * 1024 * 1024))
    _sink(f"{ctx.id} {os.getpid()} ran")


_HOLD: list = []


@task("test.flaky", queue=queues.DEFAULT, bind=True, max_retries=3, retry_backoff=0.2, retry_jitter=False)
def flaky(ctx, fail_times: int = 2) -> None:
    _sink(f"{ctx.id} {os.getpid()} attempt{ctx.retries}")
    if ctx.retries < fail_times:
        raise Retry("not yet")
    _sink(f"{ctx.id} {os.getpid()} ran")


def _gave_up(ctx, exc, args, kwargs) -> None:
    _sink(f"{ctx.id} {os.getpid()} gave_up{ctx.retries}")


@task("test.always_fails", queue=queues.DEFAULT, bind=True, max_retries=2, retry_backoff=0.1, retry_jitter=False,
      on_failure=_gave_up)
def always_fails(ctx) -> None:
    _sink(f"{ctx.id} {os.getpid()} attempt{ctx.retries}")
    raise ValueError("meter said no")


@task("test.hold_the_gil", queue=queues.DEFAULT, bind=True, max_retries=0)
def hold_the_gil(ctx, seconds: int = 3600) -> None:
    """Freeze the whole child: libc sleep() called through PyDLL keeps the GIL, so the pump
    thread cannot beat either (what a wedged C extension does)."""
    import ctypes

    _sink(f"{ctx.id} {os.getpid()} start")
    ctypes.PyDLL(None).sleep(int(seconds))


@task("test.steps_wait", queue=queues.DEFAULT, bind=True, max_retries=0)
def steps_wait(ctx, port: int, timeout: float = 5.0):
    """Stepwise (utilitarian/steps.py): ask the test's server on `port` and wait for its answer,
    parked on no thread, until `timeout`; the sink says `got` or `timed-out`, then `ran`."""
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(ctx.id.encode() + b"\n")
        _sink(f"{ctx.id} {os.getpid()} start")
        if (yield steps.Readable(sock.fileno(), time.monotonic() + timeout)):
            _sink(f"{ctx.id} {os.getpid()} got")
        else:
            _sink(f"{ctx.id} {os.getpid()} timed-out")
        _sink(f"{ctx.id} {os.getpid()} ran")
    finally:
        sock.close()
