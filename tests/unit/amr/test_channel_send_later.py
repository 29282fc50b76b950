"""Channel.send_later (utilitarian/amr/protocols/transport.py): a request held back by a reaction
time goes out before anything else is sent or received, never before its time; on a line that
parks it is one wait with the read for its answer (ask_steps), whose read timeout counts from the
sending."""

from __future__ import annotations

import time

import pytest

from utilitarian import steps
from utilitarian.amr.errors import MeterTimeout
from utilitarian.amr.protocols.transport import Channel


class Line:
    """A transport that records writes (with their time) and answers reads from a script."""

    def __init__(self, answers=()):
        self.answers = list(answers)
        self.events: list = []

    def write(self, data: bytes) -> None:
        self.events.append(("write", data, time.monotonic()))

    def read(self, timeout: float) -> bytes:
        self.events.append(("read", timeout))
        return self.answers.pop(0) if self.answers else b""


class ParkingLine(Line):
    def read_steps(self, timeout: float):
        raise AssertionError("the held request's read goes through ask_steps")

    def ask_steps(self, data: bytes, at: float, timeout: float):
        self.events.append(("ask", data, at, timeout))
        yield steps.Readable(-1, 0)  # stands for the Ask; the test drives the generator itself
        return self.answers.pop(0) if self.answers else b""


def whole(buf: bytearray):
    return (len(buf), bytes(buf)) if buf.endswith(b"\n") else None


def test_a_held_request_goes_out_first_and_not_before_its_time_on_a_line_that_blocks():
    line = Line([b"answer\n"])
    channel = Channel(line, timeout=1.0, deadline=time.monotonic() + 10)
    held_at = time.monotonic()
    channel.send_later(b"ACK", 0.05)
    assert channel.receive(whole, "answer") == b"answer\n"
    kind, data, sent = line.events[0]
    assert (kind, data) == ("write", b"ACK") and sent - held_at >= 0.05
    assert line.events[1][0] == "read"
    # and a send after a held one keeps their order
    channel.send_later(b"first", 0.01)
    channel.send(b"second")
    assert [e[1] for e in line.events[2:]] == [b"first", b"second"]


def test_a_held_request_on_a_parking_line_is_one_wait_with_its_answer():
    line = ParkingLine([b"answer\n"])
    channel = Channel(line, timeout=1.0, deadline=time.monotonic() + 10)
    held_at = time.monotonic()
    channel.send_later(b"ACK", 0.2)
    gen = channel.receive_steps(whole, "answer")
    next(gen)  # the one wait
    with pytest.raises(StopIteration) as stop:
        gen.send(True)
    assert stop.value.value == b"answer\n"
    [(kind, data, at, timeout)] = line.events
    # sent at its time, and the answer may take the whole read timeout after that
    assert (kind, data) == ("ask", b"ACK") and at - held_at >= 0.2 and timeout > 1.0


def test_a_held_request_due_after_the_session_deadline_is_a_timeout():
    channel = Channel(ParkingLine(), timeout=1.0, deadline=time.monotonic() + 0.1)
    channel.send_later(b"ACK", 0.5)
    with pytest.raises(MeterTimeout, match="before sending"):
        next(channel.receive_steps(whole, "answer"))
