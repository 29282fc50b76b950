"""The wait loop (supervisor/waits.py) with real sockets: a wait ends exactly once (answer,
deadline, completion or cancel), an earlier deadline parked while the loop sleeps towards a later
one still ends on time, a wait whose event completed already is not parked at all, and a
connect's Writable wait ends on its outcome (real TCP peers: accepted, refused, never answered)."""

from __future__ import annotations

import errno
import queue
import socket
import threading
import time

import pytest

from support.connect_peers import full_backlog, refusing_port
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


def test_a_completed_event_parked_with_the_earliest_deadline_leaves_the_loop_woken_for_the_next(loop):
    # The Until's deadline is earlier than the one the loop sleeps towards, so parking it marks
    # the loop awake; it completed already (not parked), and the loop must still be woken, or
    # the next earlier deadline (a reaction time) waits for the 60 s one.
    a, _b = socket.socketpair()
    c, _d = socket.socketpair()
    loop.park("late", steps.Readable(a.fileno(), time.monotonic() + 60))
    time.sleep(0.1)  # the loop sleeps towards the 60 s deadline now
    slot = _Slot("item")
    slot.settle(1)
    assert loop.park("done", steps.Until(slot, time.monotonic() + 30)) is True
    time.sleep(0.1)
    began = time.monotonic()
    loop.park("early", steps.Readable(c.fileno(), began + 0.1))
    assert loop.resumed.get(timeout=10) == ("early", False)
    assert time.monotonic() - began < 5
    assert loop.cancel("late") and loop.parked() == 0
    for s in (a, _b, c, _d):
        s.close()


def test_an_entered_wait_that_ended_before_it_was_armed_leaves_its_socket_unarmed(loop):
    # stepping.py arms a socket out of the runner's lock (`enter`, then `arm`): a wait cancelled
    # in between (its task may close the socket, its descriptor be reused) is not armed.
    a, b = socket.socketpair()
    entry = loop.enter("cancelled", steps.Readable(a.fileno(), time.monotonic() + 30))
    assert entry is not None and entry is not True and entry is not False
    assert loop.cancel("cancelled")
    loop.arm(entry)
    b.send(b"x")
    loop.park("other", steps.Readable(b.fileno(), time.monotonic() + 0.3))
    assert loop.resumed.get(timeout=10) == ("other", False)  # nothing woke for the unarmed socket
    assert loop.resumed.empty() and loop.parked() == 0
    for s in (a, b):
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


def _connecting(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.connect_ex(("127.0.0.1", port))
    return sock


def test_a_writable_wait_ends_when_a_connect_completes_fails_or_times_out(loop):
    # Given three non-blocking connects: to a listener, to a port nobody listens on, and to a
    # listener whose accept queue is full (its handshake never completes)
    with socket.create_server(("127.0.0.1", 0)) as listener, full_backlog() as stuck_port:
        done = _connecting(listener.getsockname()[1])
        refused = _connecting(refusing_port())
        stuck = _connecting(stuck_port)
        now = time.monotonic()
        # When each is parked on a Writable wait
        for token, sock, deadline in (("done", done, now + 30), ("refused", refused, now + 30),
                                      ("stuck", stuck, now + 0.3)):
            assert loop.park(token, steps.Writable(sock.fileno(), deadline)) is None
        got = {loop.resumed.get(timeout=10) for _ in range(3)}
        # Then the finished handshakes end theirs (SO_ERROR tells success from failure), the stuck
        # one ends at its deadline
        assert got == {("done", True), ("refused", True), ("stuck", False)}
        assert time.monotonic() - now >= 0.3 and loop.parked() == 0
        assert done.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        assert refused.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
        # And a socket armed for writing before can wait for reading next
        peer, _ = listener.accept()
        assert loop.park("answer", steps.Readable(done.fileno(), time.monotonic() + 30)) is None
        peer.send(b"x")
        assert loop.resumed.get(timeout=10) == ("answer", True)
        for s in (done, refused, stuck, peer):
            s.close()


def test_a_writable_wait_driven_blocking():
    with socket.create_server(("127.0.0.1", 0)) as listener, full_backlog() as stuck_port:
        def task(port, seconds):
            sock = _connecting(port)
            try:
                ended = yield steps.Writable(sock.fileno(), time.monotonic() + seconds)
                return ended, sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            finally:
                sock.close()

        assert steps.drive(task(listener.getsockname()[1], 30)) == (True, 0)
        assert steps.drive(task(refusing_port(), 30)) == (True, errno.ECONNREFUSED)
        assert steps.drive(task(stuck_port, 0.2)) == (False, 0)


def _filled(sock: socket.socket) -> socket.socket:
    """`sock` with its send buffer full (the peer does not read): a send takes nothing."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.setblocking(False)
    try:
        while True:
            sock.send(b"x" * 4096)
    except BlockingIOError:
        pass
    sock.setblocking(True)
    return sock


def test_an_ask_is_sent_by_the_loop_at_its_time_and_then_waits_for_the_answer(loop):
    # Given a request due in 0.2 s, its answer expected within 30 s
    a, b = socket.socketpair()
    asked = time.monotonic()
    ask = steps.Ask(a, b"request", asked + 0.2, asked + 30)
    # When it is parked
    assert loop.park("ask", ask) is None
    # Then the peer gets the request no earlier than its time, and the wait goes on for the answer
    b.settimeout(10)
    assert b.recv(100) == b"request" and time.monotonic() - asked >= 0.2
    assert ask.sent == len(b"request") and loop.resumed.empty() and loop.parked() == 1
    b.send(b"answer")
    assert loop.resumed.get(timeout=10) == ("ask", True)
    for s in (a, b):
        s.close()


def test_an_ask_due_already_is_sent_by_the_caller_and_a_cancelled_one_never(loop):
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    now = time.monotonic()
    due = steps.Ask(a, b"now", now - 1, now + 30)
    assert loop.park("due", due) is None and due.sent == 3  # sent before park returned
    later = steps.Ask(c, b"later", now + 0.1, now + 30)
    assert loop.park("later", later) is None
    assert loop.cancel("later")
    # the cancelled request never goes out, even after its time: a request due after it went out
    e, f = socket.socketpair()
    assert loop.park("marker", steps.Ask(e, b"marker", now + 0.2, now + 30)) is None
    f.settimeout(10)
    assert f.recv(100) == b"marker"
    d.setblocking(False)
    with pytest.raises(BlockingIOError):
        d.recv(100)
    assert later.sent == 0 and loop.resumed.empty()
    b.send(b"x")
    assert loop.resumed.get(timeout=10) == ("due", True)
    assert loop.cancel("marker")
    for s in (a, b, c, d, e, f):
        s.close()


def test_an_ask_the_line_does_not_take_ends_at_once_for_the_task_to_send_itself(loop):
    # Given a line whose send buffer is full, and one shut for writing
    full, _reader = socket.socketpair()
    shut, _peer = socket.socketpair()
    _filled(full)
    shut.shutdown(socket.SHUT_WR)
    now = time.monotonic()
    # When requests are asked on them, due in 0.1 s
    stuck = steps.Ask(full, b"request", now + 0.1, now + 30)
    broken = steps.Ask(shut, b"request", now + 0.1, now + 30)
    assert loop.park("stuck", stuck) is None and loop.park("broken", broken) is None
    # Then both waits end (False) when the loop finds it cannot send, long before their deadlines
    got = {loop.resumed.get(timeout=10) for _ in range(2)}
    assert got == {("stuck", False), ("broken", False)} and stuck.sent == broken.sent == 0
    # and a request already due that cannot go out is not parked at all
    assert loop.park("due", steps.Ask(shut, b"request", now - 1, now + 30)) is False
    for s in (full, _reader, shut, _peer):
        s.close()


def test_an_ask_driven_blocking():
    a, b = socket.socketpair()

    def task():
        asked = time.monotonic()
        answered = yield steps.Ask(a, b"request", asked + 0.1, asked + 30)
        return answered, time.monotonic() - asked

    def peer():
        b.settimeout(10)
        got = b.recv(100)
        b.send(b"answer")
        return got

    seen: list = []
    thread = threading.Thread(target=lambda: seen.append(peer()))
    thread.start()
    answered, elapsed = steps.drive(task())
    thread.join(10)
    assert answered and elapsed >= 0.1 and seen == [b"request"]
    for s in (a, b):
        s.close()
