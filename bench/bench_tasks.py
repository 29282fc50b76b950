"""Benchmark tasks for utilitarian workers (`-I bench_tasks` with bench/ on PYTHONPATH): each
appends one byte to $BENCH_COUNTER, the same work the Celery twin in celery_bench_app does."""

from __future__ import annotations

import os
import time

from utilitarian import queues
from utilitarian.tasks import task

_fd = None


def _bump() -> None:
    global _fd
    if _fd is None or _fd[0] != os.getpid():
        _fd = (os.getpid(), os.open(os.environ["BENCH_COUNTER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    os.write(_fd[1], b"x")


@task("bench.noop", queue=queues.DEFAULT, max_retries=0)
def noop() -> None:
    _bump()


@task("bench.sleep", queue=queues.DEFAULT, max_retries=0)
def sleep(seconds: float = 0.1) -> None:
    time.sleep(seconds)
    _bump()
