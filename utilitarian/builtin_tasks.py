"""Small tasks every worker has: health checks an operator can send with `utilitarian call`."""

from __future__ import annotations

import time

from utilitarian import queues
from utilitarian.tasks import task


@task("utilitarian.ping", queue=queues.DEFAULT, max_retries=0)
def ping() -> str:
    """Answer "pong": proves a worker consumes the queue it was sent to."""
    return "pong"


@task("utilitarian.sleep", queue=queues.DEFAULT, max_retries=0)
def sleep(seconds: float = 1.0) -> float:
    """Hold a thread for `seconds`: for checking drain and time limits on a live system."""
    time.sleep(float(seconds))
    return float(seconds)
