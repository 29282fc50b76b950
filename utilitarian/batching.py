"""Work gathered from many threads into groups: callers hand an item to one per-process thread
and block until the group it went out with is done (a stepwise task yields a steps.Until instead,
which the batcher's thread completes). Where a hundred task threads would each pay a
round trip (a transaction, a confirmed publish), the group pays one. Fork-aware: a child never
inherits its parent's thread or pending items."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any, Callable

from utilitarian import steps

log = logging.getLogger(__name__)


class Failed:
    """An item's outcome that is an exception: `handle_group` returns it for that item alone."""

    def __init__(self, error: BaseException):
        self.error = error


class _Slot:
    """One submitted item and its outcome. Cheaper than a Future, which a hundred task threads
    paid for on every job (a Condition over an RLock, a waiter lock, a lock hand-over each way):
    the submitter waits on one lock that the batcher's thread releases once the outcome is set."""

    __slots__ = ("item", "_claim", "_done", "_value", "_error", "_meet", "_notify", "_settled")

    def __init__(self, item: Any):
        self.item = item
        self._claim = [True]  # popped once (list.pop is atomic): by the group starting, or by a withdrawal
        self._done = threading.Lock()
        self._done.acquire()
        self._value: Any = None
        self._error: BaseException | None = None
        # A stepwise submitter's callback (steps.Until) and the lock that makes "settled already?"
        # and "who calls it?" one decision.
        self._meet = threading.Lock()
        self._notify: Callable[[], None] | None = None
        self._settled = False

    def start(self) -> bool:
        """The batcher thread takes the item into a group; False if it was withdrawn first."""
        return self._take()

    def withdraw(self) -> bool:
        """The submitter gives up; False if its group started first (its outcome will still come)."""
        return self._take()

    def _take(self) -> bool:
        try:
            self._claim.pop()
            return True
        except IndexError:
            return False

    def settle(self, value: Any = None, error: BaseException | None = None) -> None:
        self._value, self._error = value, error
        with self._meet:
            notify, self._notify, self._settled = self._notify, None, True
        self._done.release()
        if notify is not None:
            notify()

    def wait(self, timeout: float) -> bool:
        return self._done.acquire(timeout=timeout)

    def subscribe(self, notify: Callable[[], None]) -> bool:
        """Call `notify()` once the outcome is set (from the batcher's thread); False, and no call,
        when it is set already."""
        with self._meet:
            if self._settled:
                return False
            self._notify = notify
            return True

    def outcome(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


def gather_wait(last_group: int, queued: int, *, gather_to: int, most: float) -> float:
    """How long the batcher's thread waits for more items before handling the `queued` ones.
    No wait (0) while the last group was a lone item (an idle process hands each item on at once) or
    `gather_to` are queued already; else up to `most` seconds, which the submitters cut short
    once `gather_to` are queued. Items that keep coming are what makes a group worth waiting for:
    a group's fixed cost (a transaction's BEGIN and COMMIT) is then shared by more of them."""
    if most <= 0 or last_group < 2 or queued >= gather_to:
        return 0.0
    return most


class Batcher:
    """`submit(item)` -> the item's result. `handle_group(items)` runs on the batcher's thread
    with whatever queued up since its last turn and returns one outcome per item (a value or
    `Failed`); if it raises, every item of the group fails with it. With `gather` > 0 the thread
    waits up to that many seconds for a group of `gather_to` while items keep coming (see
    `gather_wait`); by default it never waits to fill a group."""

    def __init__(self, handle_group: Callable[[list], list], *, name: str, max_group: int, timeout: float,
                 on_timeout: Callable[[], Exception], gather: float = 0.0, gather_to: int = 1):
        self.handle_group = handle_group
        self.name = name
        self.max_group = max_group
        self.timeout = timeout
        self.on_timeout = on_timeout
        self.gather = gather
        self.gather_to = min(max(1, gather_to), max_group)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # While the thread gathers: how many queued items end its wait early (0: not gathering),
        # and the event a submitter sets when that many are queued. One wake-up per group, not
        # one per item.
        self._want = 0
        self._enough = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def submit(self, item: Any) -> Any:
        """The item's result. Raises `on_timeout()` when the item was not handled in time; it is
        then withdrawn, never handled later, if its group had not started. If its group had started,
        submit waits up to another `timeout` for that group's outcome; only when even that passes
        is the outcome unknown (the caller's task retries, so `handle_group`'s work must be
        idempotent, as every store write and commit message of the AMR pipeline is)."""
        return steps.drive(self.submit_steps(item))

    def submit_steps(self, item: Any) -> steps.Steps:
        """`submit` for a stepwise task: yields its waits (steps.Until) instead of blocking."""
        self._ensure_thread()
        slot = _Slot(item)
        self._queue.put(slot)
        want = self._want
        if want and self._queue.qsize() >= want:
            self._enough.set()
        try:
            # A stuck group must not hold task threads forever: fail this caller, its task retries.
            finished = yield steps.Until(slot, time.monotonic() + self.timeout)
        except BaseException:  # an async exception (soft time limit) in this caller: withdraw too
            slot.withdraw()
            raise
        if not finished:
            if slot.withdraw():
                # Still queued: its group skips it, so the error below is the whole truth. Before
                # this, an item that timed out in the queue was still committed (or published) by
                # a later group (issue 11).
                raise self.on_timeout() from None
            if not (yield steps.Until(slot, time.monotonic() + self.timeout)):
                raise self.on_timeout() from None
        return slot.outcome()

    def _ensure_thread(self) -> None:
        thread = self._thread
        if thread is not None and self._pid == os.getpid() and thread.is_alive():
            return  # every submit asks: no shared lock for the answer that is nearly always yes
        with self._lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                if self._pid != os.getpid():
                    self._queue = queue.SimpleQueue()  # inherited through fork: the parent's items are not ours
                    self._want, self._enough = 0, threading.Event()
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        last = 0
        while True:
            first = self._queue.get()
            if first is None:
                return
            wait = gather_wait(last, 1 + self._queue.qsize(), gather_to=self.gather_to, most=self.gather)
            if wait:
                self._gather(wait)
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
            last = len(group)
            live = [slot for slot in group if slot.start()]
            if live:
                self._settle(live)

    def _gather(self, wait: float) -> None:
        """Wait up to `wait` seconds until `gather_to` items (the one taken included) are queued."""
        self._enough.clear()
        self._want = self.gather_to - 1
        try:
            if self._queue.qsize() < self._want:  # an item put before `_want` was set did not ask
                self._enough.wait(wait)
        finally:
            self._want = 0

    def _settle(self, live: list[_Slot]) -> None:
        try:
            outcomes = self.handle_group([slot.item for slot in live])
        except Exception as exc:  # the whole group fails with it; the loop goes on
            outcomes = [Failed(exc)] * len(live)
        for slot, outcome in zip(live, outcomes):
            if isinstance(outcome, Failed):
                slot.settle(error=outcome.error)
            else:
                slot.settle(outcome)

    def close(self) -> None:
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(5.0)
