"""Work gathered from many threads into groups: callers hand an item to one per-process thread
and block until the group it went out with is done. Where a hundred task threads would each pay a
round trip (a transaction, a confirmed publish), the group pays one. Fork-aware: a child never
inherits its parent's thread or pending items."""

from __future__ import annotations

import logging
import os
import queue
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

log = logging.getLogger(__name__)


class Failed:
    """An item's outcome that is an exception: `handle_group` returns it for that item alone."""

    def __init__(self, error: BaseException):
        self.error = error


class Batcher:
    """`submit(item)` -> the item's result. `handle_group(items)` runs on the batcher's thread
    with whatever queued up since its last turn (never waiting to fill a group) and returns one
    outcome per item (a value or `Failed`); if it raises, every item of the group fails with it."""

    def __init__(self, handle_group: Callable[[list], list], *, name: str, max_group: int, timeout: float,
                 on_timeout: Callable[[], Exception]):
        self.handle_group = handle_group
        self.name = name
        self.max_group = max_group
        self.timeout = timeout
        self.on_timeout = on_timeout
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def submit(self, item: Any) -> Any:
        """The item's result. Raises `on_timeout()` when the item was not handled in time; it is
        then withdrawn, never handled later, if its group had not started. If its group had started,
        submit waits up to another `timeout` for that group's outcome; only when even that passes
        is the outcome unknown (the caller's task retries, so `handle_group`'s work must be
        idempotent, as every store write and commit message of the AMR pipeline is)."""
        self._ensure_thread()
        future: Future = Future()
        self._queue.put((item, future))
        try:
            # A stuck group must not hold task threads forever: fail this caller, its task retries.
            return future.result(self.timeout)
        except FutureTimeout:
            if future.cancel():
                # Still queued: its group skips it (set_running_or_notify_cancel), so the error
                # below is the whole truth. Before this, an item that timed out in the queue was
                # still committed (or published) by a later group (issue 11).
                raise self.on_timeout() from None
        except BaseException:  # an async exception (soft time limit) in this caller: withdraw too
            future.cancel()
            raise
        try:
            return future.result(self.timeout)
        except FutureTimeout:
            raise self.on_timeout() from None

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                if self._pid != os.getpid():
                    self._queue = queue.SimpleQueue()  # inherited through fork: the parent's items are not ours
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while len(group) < self.max_group:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this group
                    break
                group.append(more)
            live = [(item, future) for item, future in group if future.set_running_or_notify_cancel()]
            if live:
                self._settle(live)

    def _settle(self, live: list) -> None:
        try:
            outcomes = self.handle_group([item for item, _ in live])
        except Exception as exc:  # the whole group fails with it; the loop goes on
            outcomes = [Failed(exc)] * len(live)
        for (_, future), outcome in zip(live, outcomes):
            if isinstance(outcome, Failed):
                future.set_exception(outcome.error)
            else:
                future.set_result(outcome)

    def close(self) -> None:
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(5.0)
