"""Tasks the cluster and quorum tests run (`-I support.cluster_tasks`): each run appends one JSON
line to $UTIL_TEST_SINK with the task id, when it ran, its ETA and what it received."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import time

from utilitarian import queues
from utilitarian.tasks import task


def _jsonable(value):
    if isinstance(value, (dt.datetime, dt.date)):
        return {"type": type(value).__name__, "value": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"type": "Decimal", "value": str(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


@task("cluster_test.record", queue=queues.DEFAULT, bind=True, max_retries=0)
def record(ctx, *args, **kwargs) -> None:
    line = json.dumps({"id": ctx.id, "at": time.time(), "queue": ctx.queue,
                       "eta": ctx.eta.isoformat() if ctx.eta else None,
                       "args": _jsonable(args), "kwargs": _jsonable(kwargs)})
    fd = os.open(os.environ["UTIL_TEST_SINK"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def runs(path) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


@task("cluster_test.die", queue=queues.DEFAULT, max_retries=0)
def die() -> None:
    """Poison: kills the child that runs it, every time."""
    os._exit(1)
