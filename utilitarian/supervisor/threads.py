"""A child's task threads: at most N threads fed from one queue, each started when a delivery
finds no idle one (a child that never gets busy never pays for its threads' stacks). Leaner than
concurrent.futures.ThreadPoolExecutor for this use: no Future per delivery and no result to hand
back (the runner settles each delivery itself); the executor's hand-over was about a fifth of a
no-op task's CPU (docs/benchmarks.md)."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)
_STOP = object()


class TaskThreads:
    def __init__(self, handle: Callable[[Any], None], max_threads: int, *, name: str = "task"):
        self._handle = handle
        self._max = max_threads
        self._name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads that finished an item and have not been counted on for a new one
        self.threads: list[threading.Thread] = []

    def submit(self, item: Any) -> None:
        self._queue.put(item)
        with self._lock:
            if self._idle:
                self._idle -= 1  # an idle thread takes it
                return
            if len(self.threads) >= self._max:
                return  # every thread is busy: the next free one takes it
            thread = threading.Thread(target=self._loop, name=f"{self._name}_{len(self.threads)}", daemon=True)
            self.threads.append(thread)
        thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self._handle(item)
            except BaseException:  # the handler settles its own failures; this thread must live on
                log.exception("task thread: unexpected error; going on")
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Stop the threads once the queue is empty; does not wait (a stuck task's thread is
        abandoned: the child exits with os._exit)."""
        for _ in self.threads:
            self._queue.put(_STOP)
