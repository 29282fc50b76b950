"""Tasks for the master fault suite (imported by worker children with `-I support.master_fault_tasks`).
They end their own process the way a broken consumer or library would, so the master's exit-code
rules are exercised by real exit codes; each writes to the sink of support.worker_tasks."""

from __future__ import annotations

import os

from support.worker_tasks import _sink
from utilitarian import queues
from utilitarian.tasks import task


@task("test.exit_once", queue=queues.DEFAULT, bind=True, max_retries=0)
def exit_once(ctx, code: int, flag: str) -> None:
    """The first delivery ends its child with `code` (what a child whose consumer gave up does);
    the redelivery finds the flag file and runs normally."""
    try:
        fd = os.open(flag, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        _sink(f"{ctx.id} {os.getpid()} ran")
        return
    os.close(fd)
    _sink(f"{ctx.id} {os.getpid()} start")
    os._exit(code)
