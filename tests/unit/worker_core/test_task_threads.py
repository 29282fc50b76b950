"""The task threads' hand-over (supervisor/threads.py): with `spare_after`, a delivery waits for a
busy thread until the watchdog finds it waited that long, then another thread is woken; nothing
waits for ever, and a burst of short tasks runs on the one thread already awake."""

from __future__ import annotations

import threading
import time

from utilitarian.supervisor.threads import TaskThreads


class Timers:
    """call_later for the tests: timers fire only when the test says so."""

    def __init__(self, works: bool = True):
        self.works = works
        self.due: list = []

    def call_later(self, delay, fn) -> bool:
        if self.works:
            self.due.append((delay, fn))
        return self.works

    def fire(self) -> None:
        due, self.due = self.due, []
        for _, fn in due:
            fn()


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.001)
    return condition()


def test_a_delivery_behind_a_long_task_gets_a_thread_once_it_waited_spare_after():
    # Given a thread running a task that blocks
    release = threading.Event()
    ran: list = []

    def handle(item):
        if item == "long":
            release.wait(10)
        ran.append(item)

    now = [100.0]
    timers = Timers()
    pool = TaskThreads(handle, 4, spare_after=0.002, call_later=timers.call_later, clock=lambda: now[0])
    pool.submit("long", now[0])
    assert wait_until(lambda: len(pool.threads) == 1 and pool._free == 0)
    # When another delivery arrives, no thread is woken for it, and the watchdog is armed once
    pool.submit("short", now[0])
    pool.submit("short2", now[0])
    assert len(pool.threads) == 1 and [d for d, _ in timers.due] == [0.002]
    # Then a check before spare_after wakes nobody and re-arms for the rest of the wait
    now[0] += 0.001
    timers.fire()
    assert len(pool.threads) == 1 and len(timers.due) == 1 and abs(timers.due[0][0] - 0.001) < 1e-9
    # and one at spare_after starts a thread, which runs both while the long task still blocks
    now[0] += 0.001
    timers.fire()
    assert wait_until(lambda: ran == ["short", "short2"])
    assert len(pool.threads) == 2
    release.set()
    assert wait_until(lambda: ran == ["short", "short2", "long"])
    pool.shutdown()


def test_without_a_timer_a_delivery_gets_a_thread_at_once():
    release = threading.Event()
    ran: list = []
    pool = TaskThreads(lambda item: (item == "long" and release.wait(10), ran.append(item)), 4,
                       spare_after=0.002, call_later=Timers(works=False).call_later)
    pool.submit("long", 1.0)
    assert wait_until(lambda: pool._free == 0 and len(pool.threads) == 1)
    pool.submit("short", 1.0)
    assert wait_until(lambda: ran == ["short"])
    release.set()
    pool.shutdown()


def test_a_burst_of_short_tasks_runs_on_the_thread_already_awake():
    ran: list = []
    timers = Timers()
    gate = threading.Event()
    pool = TaskThreads(lambda item: (gate.wait(10), ran.append(item)), 8, spare_after=0.002,
                       call_later=timers.call_later)
    for i in range(50):
        pool.submit(i, time.monotonic())
    gate.set()
    assert wait_until(lambda: len(ran) == 50)
    assert ran == list(range(50)) and len(pool.threads) == 1
    timers.fire()  # the watchdog finds nothing waiting: no thread started, nothing armed again
    assert len(pool.threads) == 1 and not timers.due
    pool.shutdown()


def test_a_lost_timer_is_made_up_for_by_the_periodic_check():
    # Given the watchdog armed on a connection that then closed (its timer never fires)
    release = threading.Event()
    ran: list = []
    timers = Timers()
    pool = TaskThreads(lambda item: (item == "long" and release.wait(10), ran.append(item)), 4,
                       spare_after=0.002, call_later=timers.call_later)
    pool.submit("long", 0.0)
    assert wait_until(lambda: pool._free == 0 and len(pool.threads) == 1)
    pool.submit("short", 0.0)
    timers.due.clear()
    pool.submit("short2", 0.0)
    assert not timers.due  # still counted as armed
    # When the pump's tick checks, the waiting deliveries get a thread
    pool.check(1.0)
    assert wait_until(lambda: ran == ["short", "short2"])
    release.set()
    pool.shutdown()


def test_without_spare_after_the_thread_that_takes_one_wakes_another_for_the_rest():
    release = threading.Event()
    ran: list = []
    pool = TaskThreads(lambda item: (item == "long" and release.wait(10), ran.append(item)), 4)
    pool.submit("long")
    pool.submit("short")
    assert wait_until(lambda: ran == ["short"])
    release.set()
    assert wait_until(lambda: ran == ["short", "long"])
    pool.shutdown()
