"""Group commit: one writer thread per process runs the commits of many task threads in one
transaction. A hundred threads each committing one small batch would otherwise queue on the write
lock one transaction at a time (and on every GIL hand-over inside each); together they cost one.

Each caller still returns only after its own work is committed (the task is acked after that). If
the shared transaction fails, each piece of work is retried alone, so one bad batch fails only its
own caller.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

log = logging.getLogger(__name__)

MAX_GROUP = 256  # pieces of work per transaction: bounds how long one transaction holds the lock


class GroupCommitter:
    def __init__(self, backend, *, timeout: float = 30.0, max_group: int = MAX_GROUP):
        self.backend = backend
        self.timeout = timeout
        self.max_group = max_group
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._closed = False

    def run(self, work: Callable[[Any], Any]) -> Any:
        """Run `work(tx)` inside a write transaction shared with other callers; its result."""
        self._ensure_thread()
        future: Future = Future()
        self._queue.put((work, future))
        # A stuck writer must not hold task threads forever: fail this caller, its task retries.
        from utilitarian.amr.store.backend import StoreError
        try:
            return future.result(self.timeout * 2)
        except FutureTimeout:
            raise StoreError(f"commit not done within {self.timeout * 2:g}s (database write lock busy?)") from None

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                if self._pid != os.getpid():
                    self._queue = queue.SimpleQueue()  # inherited through fork: the parent's work is not ours
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._loop, name="store-writer", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            group = [item]
            while len(group) < self.max_group:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this group
                    break
                group.append(more)
            try:
                self._commit_group(group)
            except Exception:  # the loop must survive anything; callers got their exceptions
                log.exception("store writer: unexpected error; continuing with the next commits")

    def _commit_group(self, group) -> None:
        live = [(work, future) for work, future in group if future.set_running_or_notify_cancel()]
        if not live:
            return
        if len(live) > 1:
            try:
                with self.backend.transaction(write=True) as tx:
                    results = [work(tx) for work, _ in live]
            except Exception as exc:  # retried one by one below, so only the culprit fails
                log.debug("group of %d commits failed (%s); committing them one by one", len(live), exc)
            else:
                for (_, future), result in zip(live, results):
                    future.set_result(result)
                return
        for work, future in live:
            try:
                with self.backend.transaction(write=True) as tx:
                    result = work(tx)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def close(self) -> None:
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(5.0)
