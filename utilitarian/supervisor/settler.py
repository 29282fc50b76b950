"""The settler: one thread per child for work that must stay off the pump thread (which owns the
pika connection and only makes pika calls): the time-limit check, hooks and follow-up publishes
of abandoned deliveries (an AMR `on_failure` hook may wait a minute on the commit outbox), and
delayed requeues of deliveries whose follow-up publish failed."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)


class Settler:
    """`call(fn)` runs soon, `call_at(when, fn)` at a monotonic time (or at `flush_timers()`);
    `tick(now)` runs every `interval` and returns the next time it wants to run (or None).
    Jobs run one at a time: a slow hook delays the next time-limit check, never an ack."""

    def __init__(self, tick: Callable[[float], float | None] | None = None, *, interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic, name: str = "settler"):
        self.tick = tick
        self.interval = interval
        self.clock = clock
        self.name = name
        self._cond = threading.Condition()
        self._jobs: list = []  # FIFO of callables
        self._timers: list = []  # heap of (when, seq, callable)
        self._seq = itertools.count()
        self._stopping = False
        self._flush = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], None]) -> None:
        with self._cond:
            self._jobs.append(fn)
            self._cond.notify()

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._timers, (when, next(self._seq), fn))
            self._cond.notify()

    def flush_timers(self) -> None:
        """Run every timer now, and from now on every timer at once (a drain does not wait
        for backoffs, including those of deliveries still being handled)."""
        with self._cond:
            self._flush = True
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._jobs) + len(self._timers)

    def stop(self, timeout: float = 1.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _loop(self) -> None:
        next_tick = self.clock()
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = self.clock()
                jobs, self._jobs = self._jobs, []
                while self._timers and (self._flush or self._timers[0][0] <= now):
                    jobs.append(heapq.heappop(self._timers)[2])
                if not jobs and now < next_tick:
                    wake = next_tick if not self._timers else min(next_tick, self._timers[0][0])
                    self._cond.wait(max(0.0, wake - now))
                    continue
            for fn in jobs:
                self._run(fn)
            now = self.clock()
            if self.tick is not None and now >= next_tick:
                wanted = self._run(lambda: self.tick(now))
                next_tick = now + self.interval
                if isinstance(wanted, (int, float)):
                    next_tick = max(now, min(next_tick, wanted))

    def _run(self, fn: Callable[[], object]) -> object:
        try:
            return fn()
        except Exception:  # one failed job must not stop the next (the loop logs and goes on)
            log.exception("settler job failed; going on")
            return None
