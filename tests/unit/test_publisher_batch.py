"""The publisher's I/O-thread side of a batch, without a broker: every message framed, the batch
written at once, a message pika could not encode failed alone, a failed write failing the batch."""

from __future__ import annotations

import pika
from pika import spec

from utilitarian.broker.publisher import Outgoing, _Batch, _IOThread
from utilitarian.broker.wire import PublishFrames


class FakeChannel:
    channel_number = 1
    is_open = True


class FakeConnection:
    _body_max_length = 131064

    def __init__(self, fail: Exception | None = None):
        self.writes: list[bytes] = []
        self.fail = fail

    def _output_marshaled_frames(self, frames) -> None:
        if self.fail is not None:
            raise self.fail
        self.writes.extend(frames)


def io_thread(connection: FakeConnection) -> _IOThread:
    io = _IOThread(settings=None, name="test", host_index=0)  # never started: its loop is not needed
    io.connection, io.channel = connection, FakeChannel()
    io._frames = PublishFrames(1, connection._body_max_length)
    return io


def confirm(io: _IOThread, tag: int, multiple: bool = True) -> None:
    io.on_confirm(pika.frame.Method(1, spec.Basic.Ack(delivery_tag=tag, multiple=multiple)))


def test_a_batch_is_one_write_and_a_bad_message_fails_alone():
    connection = FakeConnection()
    io = io_thread(connection)
    items = [Outgoing("", "q", b"one", {"delivery_mode": 2}),
             Outgoing("", "q", b"two", {"correlation_id": "x" * 300}),  # too long for a short string
             Outgoing("", "q", b"three", {"delivery_mode": 2})]
    batch = _Batch(len(items))
    io.publish(batch, items)
    assert len(connection.writes) == 1
    assert connection.writes[0].count(b"\xce\x03") == 2  # two messages, each ending in its body frame
    assert set(batch.failures) == {1} and batch.remaining == 2
    # The broker numbers what it received 1, 2: our tags must agree, or confirms settle the wrong one
    confirm(io, 2)
    assert batch.done.is_set() and set(batch.failures) == {1}


def test_a_write_that_fails_fails_every_message_it_carried():
    io = io_thread(FakeConnection(fail=OSError("connection reset")))
    batch = _Batch(2)
    io.publish(batch, [Outgoing("", "q", b"a"), Outgoing("", "q", b"b")])
    assert batch.done.is_set() and sorted(batch.failures) == [0, 1]
    assert io._pending == {}
