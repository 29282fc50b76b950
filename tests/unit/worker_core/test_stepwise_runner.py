"""Stepwise tasks (utilitarian/steps.py) in the task runner, with a fake consumer and publisher and
real sockets (socketpairs) to wait on: a task waiting on no thread stays in flight and is settled
once when its generator ends; a wait that times out resumes it with False; the soft limit reaches a
parked task at once (thrown in as it resumes); the hard limit closes a parked task (its finally
blocks run) and settles it by policy without retiring the child; many parked tasks need few
threads. The same task called directly runs blocking (steps.drive). The broker path with a real
child: tests/integration/worker/test_stepwise_tasks.py."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from utilitarian import steps
from utilitarian.broker import redeliver
from utilitarian.broker.consumer import ACK
from utilitarian.tasks import RetryPolicy, SoftTimeLimitExceeded, task

from tests.unit.worker_core.test_runner import delivery_of, make_runner, settle_300_near_the_limit, spec, wait_until

_pairs: dict[str, tuple[socket.socket, socket.socket]] = {}


def pair(name: str) -> tuple[socket.socket, socket.socket]:
    _pairs[name] = socket.socketpair()
    return _pairs[name]


def pairs(prefix: str, n: int) -> list[str]:
    names = [f"{prefix}{i}" for i in range(n)]
    for name in names:
        pair(name)
    return names


@pytest.fixture(autouse=True)
def close_pairs():
    yield
    for a, b in _pairs.values():
        a.close()
        b.close()
    _pairs.clear()


def answer(name, timeout):
    """Wait for bytes on pair `name` (parked), then the outbox-like completion from a thread."""
    sock = _pairs[name][0]
    if not (yield steps.Readable(sock.fileno(), time.monotonic() + timeout)):
        return "timed out"
    return sock.recv(100, socket.MSG_DONTWAIT).decode()


def stepwise(func, name="t.steps", **kw):
    s = spec(name, func, **kw)
    import dataclasses

    return dataclasses.replace(s, func=steps.stepwise(func), steps=func)


def test_a_parked_task_stays_in_flight_and_is_settled_once_when_it_ends():
    a, b = pair("one")
    results = []

    def task_body(name, timeout):
        results.append((yield from answer(name, timeout)))

    runner, consumer, publisher = make_runner([stepwise(task_body)], threads=2)
    try:
        d = delivery_of("t.steps", ["one", 30.0])
        runner.submit(d)
        wait_until(lambda: runner.stepping.waits.parked() == 1)
        assert runner.in_flight() == 1 and not consumer.by_tag()
        b.send(b"hello")
        wait_until(lambda: consumer.by_tag().get(d.delivery_tag))
        wait_until(lambda: runner.in_flight() == 0)
        assert results == ["hello"] and consumer.by_tag()[d.delivery_tag] == [ACK] and not publisher.published
        assert runner.stats.total("done") == 1
    finally:
        runner.shutdown()


def test_a_wait_that_times_out_resumes_the_task_with_false():
    pair("silent")
    results = []

    def task_body(name, timeout):
        results.append((yield from answer(name, timeout)))

    runner, consumer, _ = make_runner([stepwise(task_body)], threads=2)
    try:
        d = delivery_of("t.steps", ["silent", 0.2])
        began = time.monotonic()
        runner.submit(d)
        wait_until(lambda: consumer.by_tag().get(d.delivery_tag))
        assert results == ["timed out"] and time.monotonic() - began >= 0.2
        wait_until(lambda: runner.in_flight() == 0)
    finally:
        runner.shutdown()


def test_the_soft_limit_reaches_a_parked_task_at_once_and_it_may_clean_up():
    pair("slow")
    outcome = []

    def polite(name):
        try:
            yield from answer(name, 30.0)
        except SoftTimeLimitExceeded:
            outcome.append("cleaned up")

    runner, consumer, publisher = make_runner([stepwise(polite, soft_time_limit=0.2)], threads=2)
    try:
        d = delivery_of("t.steps", ["slow"])
        began = time.monotonic()
        runner.submit(d)
        wait_until(lambda: consumer.by_tag().get(d.delivery_tag))
        assert outcome == ["cleaned up"] and time.monotonic() - began < 5.0  # not after the wait's 30 s
        assert consumer.by_tag()[d.delivery_tag] == [ACK] and not publisher.published
    finally:
        runner.shutdown()


def test_the_hard_limit_closes_a_parked_task_and_settles_it_by_policy_without_retiring_the_child():
    pair("stuck")
    closed = []
    hard_hits = []

    def stuck(name):
        try:
            yield from answer(name, 30.0)
        finally:
            closed.append(threading.current_thread().name)

    runner, consumer, publisher = make_runner([stepwise(stuck, time_limit=0.2)], threads=2)
    runner.on_hard_limit = hard_hits.append  # the child retires only when a thread is lost
    try:
        d = delivery_of("t.steps", ["stuck"])
        runner.submit(d)
        wait_until(lambda: consumer.by_tag().get(d.delivery_tag))
        wait_until(lambda: runner.in_flight() == 0)
        (out,) = publisher.published
        assert out.properties["headers"][redeliver.DEAD_REASON] == "hard_time_limit"
        assert closed == ["settler"] and hard_hits == []
        assert consumer.by_tag()[d.delivery_tag] == [ACK] and runner.finished == 1 and runner.abandoned == 0
        assert runner.stepping.waits.parked() == 0
    finally:
        runner.shutdown()


def test_a_task_that_raises_after_a_wait_is_settled_by_its_retry_policy():
    a, b = pair("bad")

    def fails(name):
        yield from answer(name, 30.0)
        raise ValueError("bad answer")

    runner, consumer, publisher = make_runner([stepwise(fails, retry=RetryPolicy(max_retries=2))], threads=2)
    try:
        d = delivery_of("t.steps", ["bad"])
        runner.submit(d)
        wait_until(lambda: runner.stepping.waits.parked() == 1)
        b.send(b"x")
        wait_until(lambda: consumer.by_tag().get(d.delivery_tag))
        (out,) = publisher.published  # a retry, published before the ack
        assert out.properties["headers"]["retries"] == 1 and consumer.by_tag()[d.delivery_tag] == [ACK]
        wait_until(lambda: runner.in_flight() == 0)
    finally:
        runner.shutdown()


def test_200_parked_tasks_run_on_few_threads_and_each_is_settled_once():
    names = [f"p{i}" for i in range(200)]
    for name in names:
        pair(name)

    def task_body(name, timeout):
        got = yield from answer(name, timeout)
        assert got == name

    runner, consumer, _ = make_runner([stepwise(task_body)], threads=100)
    try:
        deliveries = [delivery_of("t.steps", [name, 30.0]) for name in names]
        for d in deliveries:
            runner.submit(d)
        wait_until(lambda: runner.stepping.waits.parked() == 200)
        assert runner.in_flight() == 200
        for name in names:
            _pairs[name][1].send(name.encode())
        wait_until(lambda: len(consumer.by_tag()) == 200)
        wait_until(lambda: runner.in_flight() == 0)
        assert all(consumer.by_tag()[d.delivery_tag] == [ACK] for d in deliveries)
        assert runner.stats.total("done") == 200
        assert len(runner.stepping.threads.threads) <= 2  # resumed steps: never a thread per task
        assert not runner.executor.threads  # first steps too ran on the step threads: no task thread started
    finally:
        runner.shutdown()


def test_stepwise_and_plain_deliveries_each_start_on_their_own_threads():
    pair("w")
    seen = {}

    def task_body(name, timeout):
        seen["first step"] = threading.current_thread().name
        got = yield from answer(name, timeout)
        seen["resumed"] = threading.current_thread().name
        assert got == "x"

    def plain():
        seen["plain"] = threading.current_thread().name

    runner, consumer, _ = make_runner([stepwise(task_body), spec("t.plain", plain)], threads=4)
    try:
        d1, d2 = delivery_of("t.steps", ["w", 30.0]), delivery_of("t.plain", [])
        runner.submit(d1)
        runner.submit(d2)
        wait_until(lambda: runner.stepping.waits.parked() == 1 and "plain" in seen)
        _pairs["w"][1].send(b"x")
        wait_until(lambda: runner.in_flight() == 0)
        assert consumer.by_tag()[d1.delivery_tag] == [ACK] and consumer.by_tag()[d2.delivery_tag] == [ACK]
        assert seen["first step"].startswith("step_") and seen["resumed"].startswith("step_")
        assert seen["plain"].startswith("task_")
    finally:
        runner.shutdown()


def test_a_first_step_stuck_on_a_step_thread_is_settled_at_the_hard_limit_and_the_others_go_on():
    # A stepwise task's first step runs on a step thread: one that blocks (a stalled database in its
    # job lookup) is settled by policy at the hard limit and the child is told to retire, as for a
    # task thread; its thread is written off and the other first steps go on.
    release = threading.Event()
    hard_hits = []
    names = pairs("q", 20)

    def stuck_body():
        release.wait(30)
        yield steps.Until(_Done(), time.monotonic() + 30)

    def task_body(name, timeout):
        assert (yield from answer(name, timeout)) == name

    runner, consumer, publisher = make_runner([stepwise(stuck_body, "t.stuck", time_limit=0.3),
                                               stepwise(task_body)], threads=4)
    runner.on_hard_limit = hard_hits.append
    try:
        stuck = delivery_of("t.stuck")
        runner.submit(stuck)
        others = [delivery_of("t.steps", [name, 30.0]) for name in names]
        for d in others:
            runner.submit(d)
        wait_until(lambda: runner.stepping.waits.parked() == len(names))
        for name in names:
            _pairs[name][1].send(name.encode())
        wait_until(lambda: all(consumer.by_tag().get(d.delivery_tag) == [ACK] for d in others))
        wait_until(lambda: consumer.by_tag().get(stuck.delivery_tag))
        assert len(hard_hits) == 1
        (out,) = publisher.published
        assert out.properties["headers"][redeliver.DEAD_REASON] == "hard_time_limit"
        release.set()  # the thread comes back late: no second settle
        wait_until(lambda: runner.in_flight() == 0)
        assert consumer.by_tag()[stuck.delivery_tag] == [ACK]
    finally:
        release.set()
        runner.shutdown()


def test_first_steps_stalled_on_a_database_leave_a_step_thread_to_the_sessions_under_way():
    # Ten sessions are parked on their meters when the database stalls: every new first step
    # blocks in its job lookup. The sessions' answers still resume them (one step thread is kept
    # from first steps) and they are settled before the database comes back; the new ones then run.
    release = threading.Event()
    looked_up = []
    names = pairs("s", 10)

    def lookup_body(n):
        looked_up.append(n)
        release.wait(30)  # the stalled job lookup
        yield steps.Until(_Done(), time.monotonic() + 0.01)

    def task_body(name, timeout):
        assert (yield from answer(name, timeout)) == name

    runner, consumer, publisher = make_runner([stepwise(lookup_body, "t.lookup", time_limit=60),
                                               stepwise(task_body, time_limit=60)], threads=4)
    try:
        sessions = [delivery_of("t.steps", [name, 30.0]) for name in names]
        for d in sessions:
            runner.submit(d)
        wait_until(lambda: runner.stepping.waits.parked() == len(names))
        new = [delivery_of("t.lookup", [i]) for i in range(2)]
        for d in new:
            runner.submit(d)
        wait_until(lambda: looked_up == [0])
        for name in names:
            _pairs[name][1].send(name.encode())
        wait_until(lambda: all(consumer.by_tag().get(d.delivery_tag) == [ACK] for d in sessions), timeout=10)
        assert looked_up == [0]  # the second first step waits for the first, not on the last thread
        release.set()
        wait_until(lambda: all(consumer.by_tag().get(d.delivery_tag) for d in new))
        wait_until(lambda: runner.in_flight() == 0)
        assert sorted(looked_up) == [0, 1] and not publisher.published
    finally:
        release.set()
        runner.shutdown()


def test_a_resumed_step_runs_ahead_of_deliveries_not_started_yet():
    from utilitarian.supervisor.threads import TaskThreads

    order, gate = [], threading.Event()

    def handle(item):
        if item == "busy":
            gate.wait(10)
        order.append(item)

    pool = TaskThreads(handle, 1, name="step")
    try:
        pool.submit("busy")
        wait_until(lambda: pool.threads and not pool._items)  # the one thread holds "busy"
        pool.submit("delivery 1")
        pool.submit("delivery 2")
        pool.submit("resumption", first=True)
        gate.set()
        wait_until(lambda: len(order) == 4)
        assert order == ["busy", "resumption", "delivery 1", "delivery 2"]
    finally:
        pool.shutdown()


class _Done:
    """A steps.Until event completed by another thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.event = threading.Event()
        self.notify = None

    def wait(self, timeout):
        return self.event.wait(timeout)

    def subscribe(self, notify):
        with self.lock:
            if self.event.is_set():
                return False
            self.notify = notify
            return True

    def complete(self):
        with self.lock:
            self.event.set()
            notify, self.notify = self.notify, None
        if notify:
            notify()


def test_an_until_wait_ends_when_another_thread_completes_it_and_the_task_runs_directly_too():
    done = _Done()

    @task("t.until")
    def waits_for_done():
        return (yield steps.Until(done, time.monotonic() + 30.0))

    runner, consumer, _ = make_runner([waits_for_done.__task_spec__], threads=2)
    try:
        d = delivery_of("t.until")
        runner.submit(d)
        wait_until(lambda: runner.stepping.waits.parked() == 1)
        done.complete()
        wait_until(lambda: consumer.by_tag().get(d.delivery_tag))
        assert consumer.by_tag()[d.delivery_tag] == [ACK]
    finally:
        runner.shutdown()
    # Called directly: the same generator, driven blocking, returns its value
    assert waits_for_done() is True
    assert not inspect_is_generator(waits_for_done())


def inspect_is_generator(value) -> bool:
    import inspect

    return inspect.isgenerator(value)


def test_300_stepwise_tasks_ending_around_their_soft_limit_each_settle_once():
    # Steps that busy-wait (the limit raised in the step) between waits on an always-readable
    # socket (the limit thrown in as the task resumes): every hand-over between the two is crossed
    import random

    a, b = pair("ready")
    b.send(b"x")  # never read: every wait on `a` ends at once, through the wait loop
    rng = random.Random(11)

    def near_the_limit(seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            step_end = min(deadline, time.monotonic() + 0.003)
            while time.monotonic() < step_end:
                pass
            yield steps.Readable(a.fileno(), time.monotonic() + 5)

    runner, consumer, publisher = make_runner([stepwise(near_the_limit, soft_time_limit=0.02)], threads=4)
    try:
        settle_300_near_the_limit(runner, consumer, publisher, "t.steps", rng)
        assert runner.stepping.waits.parked() == 0
    finally:
        runner.shutdown()
