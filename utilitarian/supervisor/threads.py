"""A child's task threads: at most N threads fed from one deque, each started when a delivery
finds no thread to take it (a child that never gets busy never pays for its threads' stacks).
Leaner than concurrent.futures.ThreadPoolExecutor for this use: no Future per delivery and no
result to hand back (the runner settles each delivery itself); the executor's hand-over was about
a fifth of a no-op task's CPU (docs/benchmarks.md).

Wake-ups are what cost here (a futex call, a context switch and a GIL hand-over each), so a
thread is woken only when no awake thread will look at the deque anyway: a thread that finished
takes its next delivery straight from the deque, and a burst of short tasks runs on the one or two
threads already awake instead of waking all N. A thread that takes a delivery while more are
waiting and nobody else is awake wakes one more first, so a long task never holds the rest back.

`limited` items (a stepwise task's first step, which may block on a database) run on at most
`limit` threads at once, so the others stay free for the rest (resumed steps of tasks under way,
submitted `first`: an item behind a limited one at its limit waits with it).
A thread written off (`write_off`: its item passed the hard limit and it may never come back) no
longer counts against either bound."""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)
_STOP = object()
_NOTHING = object()


class TaskThreads:
    def __init__(self, handle: Callable[[Any], None], max_threads: int, *, name: str = "task",
                 limited: Callable[[Any], bool] | None = None, limit: int = 0):
        self._handle = handle
        self._max = max_threads
        self._name = name
        self._items: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._free = 0  # awake threads not running an item: each looks at the deque before it parks
        self._parked: list[threading.Lock] = []  # gates of sleeping threads (held; released to wake)
        self.threads: list[threading.Thread] = []
        self._limited = limited
        self._limit = max(1, limit)
        self._limited_running: set[int] = set()  # ids of the limited items threads run now

    def submit(self, item: Any, *, first: bool = False) -> None:
        """`first`: ahead of the items waiting (work under way before work not started)."""
        with self._lock:
            if first:
                self._items.appendleft(item)
            else:
                self._items.append(item)
            if self._free or self._head_waits():
                return  # an awake thread takes it, or one running a limited item will when done
            gate = self._wake_one()
        if gate is not None:
            gate.release()

    def write_off(self, item: Any) -> None:
        """The thread running `item` is lost (stuck past the hard limit): it counts no more, and
        one more thread may start in its place, so what is under way goes on."""
        with self._lock:
            self._limited_running.discard(id(item))
            self._max += 1
            gate = self._wake_for_waiting()
        if gate is not None:
            gate.release()

    def _wake_for_waiting(self):
        """Under the lock: a thread woken (or started) for items left waiting that no awake thread
        will take and that may start now; None otherwise."""
        if self._items and not self._free and not self._head_waits():
            return self._wake_one()
        return None

    def _head_waits(self) -> bool:
        """Under the lock: the next item is limited and its limit is reached."""
        return (self._limited is not None and len(self._limited_running) >= self._limit and bool(self._items)
                and self._limited(self._items[0]))

    def _wake_one(self):
        """Under the lock: a parked thread's gate to release, or a new thread started; the thread
        is counted awake from here. None when every thread is busy (the next free one takes it)."""
        if self._parked:
            self._free += 1
            return self._parked.pop()
        if len(self.threads) >= self._max:
            return None
        self._free += 1
        thread = threading.Thread(target=self._loop, name=f"{self._name}_{len(self.threads)}", daemon=True)
        self.threads.append(thread)
        thread.start()  # under the lock: the new thread blocks on it at once, then looks at the deque
        return None

    def _loop(self) -> None:
        gate = threading.Lock()
        gate.acquire()
        busy = False  # just ran an item: not counted free (a woken or new thread was, by its waker)
        held = 0  # id of the limited item just run (0: none)
        while True:
            wake = None
            with self._lock:
                if held:
                    self._limited_running.discard(held)
                    held = 0
                if not busy:
                    self._free -= 1
                if self._items and not self._head_waits():
                    item = self._items.popleft()
                    busy = True
                    if self._limited is not None and self._limited(item):
                        held = id(item)  # the item stays alive while held: its id is not reused
                        self._limited_running.add(held)
                    wake = self._wake_for_waiting()
                else:
                    # Nothing, or only limited items at their limit: a thread running one of
                    # those looks at the deque again when it is done.
                    self._parked.append(gate)
                    item = _NOTHING
                    busy = False
            if item is _NOTHING:
                gate.acquire()  # until a submit (or a sibling) counted this thread awake again
                continue
            if wake is not None:
                wake.release()
            if item is _STOP:
                return
            try:
                self._handle(item)
            except BaseException:  # the handler settles its own failures; this thread must live on
                log.exception("task thread: unexpected error; going on")

    def shutdown(self) -> None:
        """Stop the threads once the deque is empty; does not wait (a stuck task's thread is
        abandoned: the child exits with os._exit)."""
        with self._lock:
            self._items.extend(_STOP for _ in self.threads)
            gates, self._parked = self._parked, []
            self._free += len(gates)
        for gate in gates:
            gate.release()
