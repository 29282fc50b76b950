"""The wait loop (supervisor/waits.py) with real sockets: a wait ends exactly once (answer,
deadline, completion or cancel), an earlier deadline parked while the loop sleeps towards a later
one still ends on time, and a wait whose event completed already is not parked at all."""

from __future__ import annotations

import queue
import socket
import time

import pytest

from utilitarian import steps
from utilitarian.batching import _Slot
from utilitarian.supervisor.waits import WaitLoop


@pytest.fixture
def loop():
    resumed: queue.SimpleQueue = queue.SimpleQueue()
    waits = WaitLoop(lambda token, value: resumed.put((token, value)))
    waits.start()
    waits.resumed = resumed
    yield waits
    waits.stop()


def test_an_answer_a_deadline_and_a_completion_each_end_their_wait_once(loop):
    a, b = socket.socketpair()
    silent, _other = socket.socketpair()
    slot = _Slot("item")
    now = time.monotonic()
    assert loop.park("answer", steps.Readable(a.fileno(), now + 30)) is None
    assert loop.park("deadline", steps.Readable(silent.fileno(), now + 0.2)) is None
    assert loop.park("outbox", steps.Until(slot, now + 30)) is None
    b.send(b"x")
    slot.settle("done")
    got = {loop.resumed.get(timeout=10) for _ in range(3)}
    assert got == {("answer", True), ("deadline", False), ("outbox", True)}
    assert time.monotonic() - now >= 0.2 and loop.parked() == 0
    time.sleep(0.1)
    assert loop.resumed.empty()  # nothing ends twice
    for s in (a, b, silent, _other):
        s.close()


def test_an_earlier_deadline_wakes_a_loop_sleeping_towards_a_later_one(loop):
    a, _b = socket.socketpair()
    c, _d = socket.socketpair()
    loop.park("late", steps.Readable(a.fileno(), time.monotonic() + 60))
    time.sleep(0.1)  # the loop sleeps towards the 60 s deadline now
    began = time.monotonic()
    loop.park("early", steps.Readable(c.fileno(), began + 0.1))
    assert loop.resumed.get(timeout=10) == ("early", False)
    assert time.monotonic() - began < 5
    assert loop.cancel("late") and not loop.cancel("late") and loop.parked() == 0
    for s in (a, _b, c, _d):
        s.close()


def test_a_completed_event_or_a_passed_deadline_is_not_parked(loop):
    slot = _Slot("item")
    slot.settle(1)
    assert loop.park("done", steps.Until(slot, time.monotonic() + 30)) is True
    assert loop.park("late", steps.Until(_Slot("other"), time.monotonic() - 1)) is False
    assert loop.parked() == 0
    with pytest.raises(TypeError):
        loop.park("odd", "not a wait")


def test_a_stepwise_function_runs_to_its_end_when_driven_blocking():
    a, b = socket.socketpair()
    slot = _Slot("item")

    def task():
        answered = yield steps.Readable(a.fileno(), time.monotonic() + 0.1)
        completed = yield steps.Until(slot, time.monotonic() + 0.1)
        return answered, completed

    assert steps.drive(task()) == (False, False)  # nothing came: both deadlines passed
    b.send(b"x")
    slot.settle(None)
    assert steps.stepwise(task)() == (True, True)
    a.close()
    b.close()
