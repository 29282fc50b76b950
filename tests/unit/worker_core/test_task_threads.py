"""TaskThreads with limited items (supervisor/threads.py): a stepwise task's first step may block on
a database, so first steps run on at most `limit` of the step threads at once and the rest stay
free for resumed steps; a thread written off at the hard limit no longer counts. Every item is
handled exactly once whatever the mix, and a burst of limited items wakes no thread that could not
take one."""

from __future__ import annotations

import random
import threading

from tests.unit.worker_core.test_runner import wait_until
from utilitarian.supervisor.threads import TaskThreads


class First(str):
    """A limited item (a first step, in the step threads)."""


def pool_of(handle, threads=2, limit=1):
    return TaskThreads(handle, threads, name="step", limited=lambda item: type(item) is First, limit=limit)


def test_a_blocked_limited_item_holds_one_thread_and_the_other_serves_the_rest():
    release = threading.Event()
    started, done = [], []

    def handle(item):
        started.append(item)
        if item.startswith("stall"):
            release.wait(10)
        done.append(item)

    pool = pool_of(handle)
    try:
        pool.submit(First("stall 1"))  # a first step whose job lookup stalls
        wait_until(lambda: started == ["stall 1"])
        pool.submit(First("stall 2"))  # the next one, the same stalled database
        for i in range(20):
            pool.submit(f"resume {i}", first=True)  # steps of sessions under way
        wait_until(lambda: len(done) == 20)
        assert sorted(done) == sorted(f"resume {i}" for i in range(20))
        assert "stall 2" not in started  # it waits for the limit, not on the free thread
        assert len(pool.threads) == 2
        release.set()
        wait_until(lambda: len(done) == 22)
        assert done[-2:] == ["stall 1", "stall 2"]
    finally:
        release.set()
        pool.shutdown()


def test_a_burst_of_limited_items_runs_on_one_thread_and_wakes_no_other():
    order, busy, release = [], threading.Event(), threading.Event()

    def handle(item):
        if item == "slow":
            busy.set()
            release.wait(10)
        order.append(item)

    pool = pool_of(handle)
    try:
        for i in range(200):  # submitted faster than the thread takes them
            pool.submit(First(f"first {i}"))
        wait_until(lambda: len(order) == 200)
        pool.submit(First("slow"))
        busy.wait(5)
        for i in range(20):  # submitted while the one thread runs a limited item
            pool.submit(First(f"later {i}"))
        release.set()
        wait_until(lambda: len(order) == 221)
        assert order == [f"first {i}" for i in range(200)] + ["slow"] + [f"later {i}" for i in range(20)]
        assert len(pool.threads) == 1  # a second thread would only have parked again
    finally:
        release.set()
        pool.shutdown()


def test_writing_off_a_stuck_thread_frees_its_limit_and_a_thread_takes_its_place():
    stuck, release = threading.Event(), threading.Event()
    done = []

    def handle(item):
        if item == "stuck first":
            stuck.set()
            release.wait(10)
        elif item == "stuck resume":
            release.wait(10)
        done.append(item)

    pool = pool_of(handle)
    first, resume = First("stuck first"), "stuck resume"
    try:
        pool.submit(first)
        stuck.wait(5)
        pool.submit(resume, first=True)  # the second thread blocks too
        wait_until(lambda: len(pool.threads) == 2 and not pool._items)
        pool.submit(First("next first"))
        pool.submit("next resume", first=True)
        pool.write_off(resume)  # stuck past the hard limit: a third thread takes the resumption
        wait_until(lambda: done == ["next resume"])
        pool.write_off(first)  # its limit is free: the third thread, idle again, takes the next first step
        wait_until(lambda: done == ["next resume", "next first"])
        assert len(pool.threads) == 3
    finally:
        release.set()
        pool.shutdown()


def test_every_item_of_a_random_mix_is_handled_once_from_many_submitters():
    rng = random.Random(7)
    seen, lock = [], threading.Lock()
    running_limited, peak = [0], [0]

    def handle(item):
        if type(item) is First:
            with lock:
                running_limited[0] += 1
                peak[0] = max(peak[0], running_limited[0])
        if rng.random() < 0.05:
            threading.Event().wait(0.001)
        with lock:
            seen.append(item)
            if type(item) is First:
                running_limited[0] -= 1

    pool = pool_of(handle, threads=4, limit=2)
    items = [[First(f"f{s}-{i}") if (s + i) % 3 else f"r{s}-{i}" for i in range(2000)] for s in range(4)]

    def submitter(batch):
        for item in batch:
            pool.submit(item, first=type(item) is not First)

    try:
        threads = [threading.Thread(target=submitter, args=(batch,)) for batch in items]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_until(lambda: len(seen) == 8000)
        assert sorted(seen) == sorted(item for batch in items for item in batch)
        assert peak[0] <= 2
    finally:
        pool.shutdown()
