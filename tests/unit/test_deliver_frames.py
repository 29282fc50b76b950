"""The consumer's delivery fast path parses what pika's reader would: the same properties, method
fields and body, whatever way the bytes are split across reads; every other frame (and a
delivery of a consumer it does not accept) goes through pika's reader, in order, with pika's
byte and frame counters kept."""

from __future__ import annotations

import struct

import pika.frame
import pytest
from hypothesis import given, settings, strategies as st
from pika import exceptions, spec

from utilitarian.broker import deliver_frames
from utilitarian.broker.wire import Properties
from utilitarian.protocol import encode_task

CHANNEL = 1


def frame(kind: int, payload: bytes, channel: int = CHANNEL) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def delivery_bytes(tag: int, properties: spec.BasicProperties, body: bytes, *, consumer_tag: str = "ctag1.x",
                   redelivered: bool = False, exchange: str = "", routing_key: str = "q",
                   frame_max: int = 4096, channel: int = CHANNEL) -> bytes:
    method = pika.frame.Method(channel, spec.Basic.Deliver(consumer_tag, tag, redelivered, exchange, routing_key))
    header = pika.frame.Header(channel, len(body), properties)
    out = method.marshal() + header.marshal()
    for start in range(0, len(body), frame_max):
        out += frame(3, body[start:start + frame_max], channel)
    return out


class FakeConnection:
    def __init__(self):
        self._frame_buffer = b""
        self.bytes_received = 0
        self.frames_received = 0
        self.processed: list = []

    def _process_frame(self, value):
        self.frames_received += 1
        self.processed.append(value)


def reader(accept=lambda tag: True):
    conn = FakeConnection()
    got: list = []
    frames = deliver_frames.DeliverFrames(conn, CHANNEL, accept, lambda *args: got.append(args))
    return conn, frames, got


def pikas_properties(properties: spec.BasicProperties) -> spec.BasicProperties:
    encoded = b"".join(properties.encode())
    return spec.BasicProperties().decode(encoded, 0)


short_text = st.text(max_size=20).filter(lambda t: len(t.encode()) < 256) | st.none()
props = st.builds(
    Properties, content_type=short_text, content_encoding=short_text,
    headers=st.none() | st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8) | st.integers(0, 9) | st.none(),
                                        max_size=5),
    delivery_mode=st.none() | st.integers(1, 2), priority=st.none() | st.integers(0, 9),
    correlation_id=short_text, reply_to=short_text, expiration=short_text, message_id=short_text,
    timestamp=st.none() | st.integers(0, 2**40), type=short_text, user_id=short_text, app_id=short_text,
    cluster_id=short_text)


@settings(max_examples=200, deadline=None)
@given(props)
def test_properties_decode_like_pikas(properties):
    encoded = b"".join(properties.encode())
    ours = deliver_frames.decode_properties(encoded, 0)
    assert vars(ours) == vars(pikas_properties(properties))
    assert type(ours) is spec.BasicProperties


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=10_000), cuts=st.lists(st.integers(1, 50), max_size=30),
       redelivered=st.booleans(), tag=st.integers(1, 2**63))
def test_delivery_fields_whatever_the_reads(body, cuts, redelivered, tag):
    env = encode_task("bench.noop", [1, "x"], {"k": 2.5})
    properties = Properties(**env.properties)
    raw = delivery_bytes(tag, properties, body, redelivered=redelivered, exchange="ex", routing_key="rk")
    raw += delivery_bytes(tag + 1, properties, b"second")
    conn, frames, got = reader()
    pos = 0
    for cut in cuts:
        frames.on_data(raw[pos:pos + cut])
        pos += cut
    frames.on_data(raw[pos:])
    assert len(got) == 2
    consumer_tag, delivery_tag, redelivered_got, exchange, routing_key, got_props, got_body = got[0]
    assert (consumer_tag, delivery_tag, redelivered_got, exchange, routing_key, got_body) == (
        "ctag1.x", tag, redelivered, "ex", "rk", body)
    assert vars(got_props) == vars(pikas_properties(properties))
    assert got[1][1] == tag + 1 and got[1][6] == b"second"
    assert conn.bytes_received == len(raw) and conn._frame_buffer == b""
    assert conn.frames_received == 2 + (len(body) + 4095) // 4096 + 3  # method, header, body frames


def test_other_frames_go_through_pika_in_order():
    heartbeat = pika.frame.Heartbeat().marshal()
    ack = pika.frame.Method(CHANNEL, spec.Basic.CancelOk("ctag1.x")).marshal()
    env = encode_task("bench.noop", [], {})
    raw = heartbeat + delivery_bytes(1, Properties(**env.properties), env.body) + ack
    conn, frames, got = reader()
    order = []
    conn._process_frame = lambda value: order.append(type(value).__name__)
    frames.deliver = lambda *args: order.append("delivery")
    frames.on_data(raw)
    assert order == ["Heartbeat", "delivery", "Method"]
    assert conn.bytes_received == len(raw)


def test_a_delivery_not_accepted_is_pikas():
    env = encode_task("bench.noop", [], {})
    raw = delivery_bytes(7, Properties(**env.properties), env.body)
    conn, frames, got = reader(accept=lambda tag: False)
    frames.on_data(raw)
    assert got == []
    assert [type(f).__name__ for f in conn.processed] == ["Method", "Header", "Body"]
    assert conn.processed[0].method.delivery_tag == 7


def test_another_channels_frames_are_pikas():
    env = encode_task("bench.noop", [], {})
    raw = delivery_bytes(7, Properties(**env.properties), env.body, channel=2)
    conn, frames, got = reader()
    frames.on_data(raw)
    assert got == [] and len(conn.processed) == 3


def test_a_bad_frame_end_is_refused_like_pika():
    env = encode_task("bench.noop", [], {})
    raw = bytearray(delivery_bytes(7, Properties(**env.properties), env.body))
    raw[-1] = 0
    conn, frames, got = reader()
    with pytest.raises(exceptions.InvalidFrameError):
        frames.on_data(bytes(raw))


def test_a_frame_that_closes_the_connection_stops_the_reader():
    env = encode_task("bench.noop", [], {})
    close = pika.frame.Method(0, spec.Connection.Close(320, "shutdown", 0, 0)).marshal()
    raw = close + delivery_bytes(1, Properties(**env.properties), env.body)
    conn, frames, got = reader()

    def closing(value):  # what pika does when the connection terminates: the buffer is reset
        conn._frame_buffer = b""
        conn.processed.append(value)

    conn._process_frame = closing
    frames.on_data(raw)
    assert got == [] and len(conn.processed) == 1
