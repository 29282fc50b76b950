"""The commit outbox: what the poll threads of one process hand to the commit queues, gathered into
batch messages. One flusher thread publishes whatever has queued up since its last publish (no
waiting to fill a batch: an idle system sends one job's results at once, a busy one sends hundreds
per message), so the broker, the commit workers and the database see a few large commits instead of
one per poll. Each poll returns only after its own results are confirmed by the broker.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from utilitarian import queues

log = logging.getLogger(__name__)

SAVE_READINGS = "commits.save_meter_readings"
SAVE_EVENTS = "commits.save_meter_system_events"
RECORD_RUN = "commits.record_task_run"
MAX_READINGS_PER_MESSAGE = 2000  # keeps each commit a short transaction and each message small
MAX_JOBS_PER_FLUSH = 500


class CommitOutbox:
    def __init__(self, app, *, timeout: float = 60.0):
        self.app = app
        self.timeout = timeout
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def send(self, *, readings: list, events: list, run: dict) -> None:
        """Publish one job's results (in a batch with others); raises what the publish raised."""
        self._ensure_thread()
        future: Future = Future()
        self._queue.put((readings, events, run, future))
        try:
            future.result(self.timeout)
        except FutureTimeout:
            from utilitarian.errors import PublishError

            raise PublishError(f"commit batch not confirmed within {self.timeout:g}s") from None

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                if self._pid != os.getpid():
                    self._queue = queue.SimpleQueue()
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._loop, name="commit-outbox", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            group = [item]
            while len(group) < MAX_JOBS_PER_FLUSH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                group.append(more)
            try:
                self.app.send_tasks(batch_calls(group))
            except Exception as exc:  # every job of the batch raises it and is retried by its policy
                for *_, future in group:
                    future.set_exception(exc)
            else:
                for *_, future in group:
                    future.set_result(None)

    def close(self) -> None:
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(5.0)


def batch_calls(group) -> list:
    """The commit messages for a group of (readings, events, run, future)."""
    from utilitarian.app import TaskCall

    readings = [r for item in group for r in item[0]]
    events = [e for item in group for e in item[1]]
    runs = [item[2] for item in group]
    calls = [TaskCall(SAVE_READINGS, kwargs={"readings": readings[i:i + MAX_READINGS_PER_MESSAGE]},
                      queue=queues.COMMITS_READINGS)
             for i in range(0, len(readings), MAX_READINGS_PER_MESSAGE)]
    if events:
        calls.append(TaskCall(SAVE_EVENTS, kwargs={"events": events}, queue=queues.COMMITS_EVENTS))
    calls.append(TaskCall(RECORD_RUN, kwargs={"runs": runs}, queue=queues.COMMITS))
    return calls


def outbox_of(app) -> CommitOutbox:
    return app.resource("amr.commit_outbox", lambda a: CommitOutbox(a))
