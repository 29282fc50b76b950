"""The Celery twin of bench_tasks: same task names, same work (one byte appended per task)."""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery("bench", broker=os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(task_serializer="json", accept_content=["json"], worker_hijack_root_logger=False,
                broker_connection_retry_on_startup=True, worker_send_task_events=False)
_fd = None


def _bump() -> None:
    global _fd
    if _fd is None or _fd[0] != os.getpid():
        _fd = (os.getpid(), os.open(os.environ["BENCH_COUNTER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    os.write(_fd[1], b"x")


@app.task(name="bench.noop")
def noop() -> None:
    _bump()


@app.task(name="bench.sleep")
def sleep(seconds: float = 0.1) -> None:
    time.sleep(seconds)
    _bump()
