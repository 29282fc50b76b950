"""The settler thread: jobs run off the caller's thread, timers at their time (or at once when
flushed), a failing job does not stop the next, and the tick reports when it wants to run."""

from __future__ import annotations

import threading
import time

from utilitarian.supervisor.settler import Settler


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_jobs_run_on_the_settler_thread_in_order_and_survive_a_failure():
    settler = Settler(name="settler-test")
    settler.start()
    seen = []
    try:
        settler.call(lambda: seen.append(threading.current_thread().name))
        settler.call(lambda: 1 / 0)  # logged, not fatal
        settler.call(lambda: seen.append("after the failure"))
        wait_until(lambda: len(seen) == 2)
        assert seen == ["settler-test", "after the failure"]
    finally:
        settler.stop()


def test_timers_wait_for_their_time_unless_flushed():
    settler = Settler()
    settler.start()
    fired = []
    try:
        start = time.monotonic()
        settler.call_at(start + 0.3, lambda: fired.append(time.monotonic() - start))
        settler.call_at(start + 60.0, lambda: fired.append("flushed"))
        wait_until(lambda: len(fired) == 1)
        assert fired[0] >= 0.29
        assert settler.pending() == 1
        settler.flush_timers()  # a drain does not wait for backoffs
        wait_until(lambda: len(fired) == 2)
        assert fired[1] == "flushed" and settler.pending() == 0
        settler.call_at(time.monotonic() + 60.0, lambda: fired.append("added while draining"))
        wait_until(lambda: len(fired) == 3)
    finally:
        settler.stop()


def test_tick_may_ask_for_an_earlier_turn_than_its_interval():
    ticks = []

    def tick(now):
        ticks.append(now)
        return now + 0.05 if len(ticks) < 3 else None  # a soft limit due soon, twice

    settler = Settler(tick, interval=5.0)
    settler.start()
    try:
        wait_until(lambda: len(ticks) >= 3)
        # without the request the second and third tick would come 5 s apart
        assert ticks[2] - ticks[0] < 2.5
        time.sleep(0.2)
        assert len(ticks) == 3  # then back to the interval
    finally:
        settler.stop()
