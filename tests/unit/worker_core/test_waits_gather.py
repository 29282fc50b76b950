"""The wait loop's gathering pause (supervisor/waits.py, GATHER_SECONDS): after a turn that resumed
a few tasks, while enough sockets still wait, answers that arrive during the pause are resumed together
in one turn; a lone wait is resumed at once; no deadline is passed for the pause (not one that was
parked before it, not an earlier one parked during it, not an Ask's time to send); stopping the loop
ends the pause. Real sockets; the pause is made long (2 s) so its effect is plain on a loaded machine."""

from __future__ import annotations

import queue
import socket
import time

import pytest

from utilitarian import steps
from utilitarian.supervisor.waits import GATHER_WAITS, WaitLoop

PAUSE = 2.0


@pytest.fixture
def loop():
    resumed: queue.SimpleQueue = queue.SimpleQueue()
    waits = WaitLoop(lambda token, value: resumed.put((token, value, time.monotonic())), gather=PAUSE)
    waits.start()
    waits.resumed = resumed
    yield waits
    waits.stop()


@pytest.fixture
def pairs():
    made = [socket.socketpair() for _ in range(2 * GATHER_WAITS + 4)]
    yield made
    for a, b in made:
        a.close()
        b.close()


def park_all(loop, pairs, deadline: float) -> None:
    for n, (a, _b) in enumerate(pairs):
        assert loop.park(n, steps.Readable(a.fileno(), deadline)) is None


def test_answers_that_arrive_during_the_pause_are_resumed_together_after_it(loop, pairs):
    park_all(loop, pairs, time.monotonic() + 60)
    sent = time.monotonic()
    pairs[0][1].send(b"x")
    token, value, first = loop.resumed.get(timeout=10)
    # The first answer after a quiet spell is resumed at once, not after a pause
    assert (token, value) == (0, True) and first - sent < PAUSE / 2
    for _a, b in pairs[1:4]:  # three more answers, spread out, while the loop pauses
        b.send(b"x")
        time.sleep(0.05)
    later = [loop.resumed.get(timeout=10) for _ in range(3)]
    assert sorted(t for t, _, _ in later) == [1, 2, 3] and all(v for _, v, _ in later)
    times = [at for _, _, at in later]
    assert min(times) - first >= PAUSE * 0.9  # held until the pause ended...
    assert max(times) - min(times) < 0.1  # ...and resumed in the same turn
    assert loop.parked() == len(pairs) - 4 and loop.resumed.empty()


def test_a_turn_that_found_several_answers_at_once_is_not_followed_by_a_pause(loop, pairs):
    park_all(loop, pairs, time.monotonic() + 60)
    pairs[0][1].send(b"x")
    _, _, first = loop.resumed.get(timeout=10)
    for _a, b in pairs[1:GATHER_WAITS + 1]:  # all found in the turn after the pause
        b.send(b"x")
    batch = [loop.resumed.get(timeout=10) for _ in range(GATHER_WAITS)]
    resumed_at = max(at for _, _, at in batch)
    assert resumed_at - first >= PAUSE * 0.9
    pairs[GATHER_WAITS + 1][1].send(b"x")  # the loop did not pause after that busy turn
    token, _, at = loop.resumed.get(timeout=10)
    assert token == GATHER_WAITS + 1 and at - resumed_at < PAUSE * 0.8
    assert loop.parked() >= GATHER_WAITS  # enough still waited for a pause: it was the rule that said no


def test_with_few_sockets_waiting_there_is_no_pause(loop):
    made = [socket.socketpair() for _ in range(GATHER_WAITS - 1)]
    try:
        park_all(loop, made, time.monotonic() + 60)
        made[0][1].send(b"x")
        _, _, first = loop.resumed.get(timeout=10)
        made[1][1].send(b"x")
        _, _, second = loop.resumed.get(timeout=10)
        assert second - first < PAUSE * 0.8  # a pause would have held it a whole PAUSE
    finally:
        for a, b in made:
            a.close()
            b.close()


@pytest.mark.parametrize("parked", ["before the pause", "during the pause"])
def test_the_pause_ends_at_the_earliest_deadline(loop, pairs, parked):
    # parked before it, the pause ends at that deadline; parked during it, the deadline cuts it short
    silent, other = socket.socketpair()

    def park_short(delay: float) -> None:
        assert loop.park("short", steps.Readable(silent.fileno(), time.monotonic() + delay)) is None

    try:
        park_all(loop, pairs, time.monotonic() + 60)
        if parked == "before the pause":
            park_short(0.3)
        pairs[0][1].send(b"x")
        _, _, first = loop.resumed.get(timeout=10)
        if parked == "during the pause":
            park_short(0.2)
        token, value, ended = loop.resumed.get(timeout=10)
        assert (token, value) == ("short", False)
        assert ended - first < PAUSE * 0.8
    finally:
        silent.close()
        other.close()


def test_an_ask_due_during_the_pause_is_sent_at_its_time(loop, pairs):
    asker, meter = socket.socketpair()
    try:
        park_all(loop, pairs, time.monotonic() + 60)
        pairs[0][1].send(b"x")
        _, _, first = loop.resumed.get(timeout=10)
        # parked during the pause, due before it would end: the pause is cut short to send it
        ask = steps.Ask(asker, b"request", time.monotonic() + 0.2, time.monotonic() + 60)
        assert loop.park("ask", ask) is None
        meter.settimeout(10)
        assert meter.recv(100) == b"request"
        assert time.monotonic() - first < PAUSE * 0.8
        meter.send(b"answer")
        assert loop.resumed.get(timeout=10)[:2] == ("ask", True)
    finally:
        asker.close()
        meter.close()


def test_stopping_the_loop_ends_its_pause(pairs):
    waits = WaitLoop(lambda token, value: None, gather=30.0)
    waits.start()
    park_all(waits, pairs, time.monotonic() + 60)
    pairs[0][1].send(b"x")
    time.sleep(0.2)  # resumed, and pausing now for up to 30 s
    began = time.monotonic()
    waits.stop()
    assert not waits._thread.is_alive() and time.monotonic() - began < 2.5
