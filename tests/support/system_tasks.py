"""Tasks the system tests run inside the nspawn machine (tests/system): imported by the test
profile's worker through `[workers.test] imports = ["system_tasks"]` with this directory on
PYTHONPATH. Each run appends `<task id> <pid> start|done` to $UTIL_SYSTEM_SINK, a file in the
unit's state directory, with O_APPEND so lines from several children never tear."""

from __future__ import annotations

import os
import time

from utilitarian import queues
from utilitarian.tasks import task


def _sink(line: str) -> None:
    fd = os.open(os.environ["UTIL_SYSTEM_SINK"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@task("system.sleep", queue=queues.AMR_QUARTERLY, bind=True, max_retries=0)
def sleep(ctx, seconds: float = 1.0) -> None:
    """Hold a task thread for `seconds`, recording its start and its end."""
    _sink(f"{ctx.id} {os.getpid()} start")
    time.sleep(float(seconds))
    _sink(f"{ctx.id} {os.getpid()} done")


@task("system.open_device", queue=queues.AMR_HOURLY, bind=True, max_retries=0)
def open_device(ctx, path: str) -> None:
    """Open a device node as a serial meter driver would, recording `open:<path>:ok|<errno name>`:
    shows what the unit's device policy lets the worker reach."""
    import errno

    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        outcome = errno.errorcode.get(exc.errno, str(exc.errno))
    else:
        os.close(fd)
        outcome = "ok"
    _sink(f"{ctx.id} {os.getpid()} open:{path}:{outcome}")
