"""Our properties encoder and publish frames produce pika's bytes exactly (and decode back with pika)."""

from __future__ import annotations

import datetime as dt
import struct
from decimal import Decimal

import pika
from hypothesis import given, settings, strategies as st
import pytest
from pika import data as pika_data
from pika import spec
from pika.connection import Connection

from utilitarian.broker.wire import Properties, PublishFrames, encode_table
from utilitarian.protocol import encode_task

scalars = (st.text(max_size=30) | st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**63 - 1)
           | st.binary(max_size=20))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                      max_leaves=15)
tables = st.dictionaries(st.text(max_size=20), values, max_size=10)


def pika_table(table) -> bytes:
    pieces: list = []
    pika_data.encode_table(pieces, table)
    return b"".join(pieces)


@settings(max_examples=300, deadline=None)
@given(tables)
def test_table_bytes_equal_pikas(table):
    assert encode_table(table) == pika_table(table)


def test_floats_encode_as_double_as_py_amqp_does():
    table = {"timelimit": [30.0, 20.5], "n": None}
    raw = encode_table(table)
    assert b"d" + struct.pack(">d", 20.5) in raw
    # pika's own decoder truncates doubles to integers (pika 1.x data.decode_value, kind b"d"); the
    # consumer installs broker/pika_floats.py, so a limit of 20.5 s reads back as 20.5 s, as in py-amqp.
    from utilitarian.broker import pika_floats

    pika_floats.install()
    decoded, _ = pika_data.decode_table(raw, 0)
    assert decoded == {"timelimit": [30.0, 20.5], "n": None}


def test_celery_headers_and_all_properties_match_pika():
    env = encode_task("amr.execute", [1, "x"], {"k": "v"}, task_id="abc", expires=3600)
    headers = {**env.properties["headers"], "d": Decimal("1.25"), "t": dt.datetime(2026, 1, 1)}
    props = dict(env.properties, headers=headers, message_id="m1", timestamp=1700000000, type="t", app_id="a",
                 expiration="1000", user_id="guest", cluster_id="c")
    ours = b"".join(Properties(**props).encode())
    theirs = b"".join(pika.BasicProperties(**props).encode())
    assert ours == theirs


class _Output:
    """What pika's Connection._send_message needs of its connection: the frame limit and the output."""

    def __init__(self, body_max: int):
        self._body_max_length = body_max
        self.frames: list[bytes] = []

    def _output_marshaled_frames(self, frames) -> None:
        self.frames.extend(frames)


def pika_publish_bytes(channel, exchange, routing_key, body, properties, mandatory, body_max) -> bytes:
    output = _Output(body_max)
    Connection._send_message(output, channel, spec.Basic.Publish(exchange=exchange, routing_key=routing_key,
                                                                 mandatory=mandatory),
                             (pika.BasicProperties(**properties), body))
    return b"".join(output.frames)


short = st.text(max_size=40)
property_sets = st.fixed_dictionaries({}, optional={
    "content_type": short, "content_encoding": short, "headers": tables, "delivery_mode": st.sampled_from([1, 2]),
    "priority": st.integers(0, 255), "correlation_id": short, "reply_to": short, "expiration": short,
    "message_id": short, "timestamp": st.integers(0, 2**63), "type": short, "user_id": short, "app_id": short,
    "cluster_id": short})


@settings(max_examples=300, deadline=None)
@given(property_sets, st.binary(max_size=300), short, short, st.booleans(), st.integers(1, 3), st.none() | short)
def test_publish_frames_equal_pikas(properties, body, exchange, routing_key, mandatory, channel, message_id):
    # Given a frame limit small enough that some bodies take several frames
    frames = PublishFrames(channel, body_max=100)
    out: list = []
    # When one message is framed by us and by pika's own basic_publish path
    frames.add(out, exchange, routing_key, body, properties, mandatory, message_id)
    expected = dict(properties, message_id=message_id) if message_id is not None else properties
    # Then the bytes are the same
    assert b"".join(out) == pika_publish_bytes(channel, exchange, routing_key, body, expected, mandatory, 100)


def test_a_fan_out_frames_each_message_as_pika_does():
    frames = PublishFrames(1, body_max=131064)
    out: list = []
    expected = []
    for i in range(5):  # one queue, the method frame reused; then another queue
        env = encode_task("amr.execute_meter_task", [], {"meter": f"m{i}"}, task_id=f"job-{i}", parent_id="p",
                          root_id="r")
        queue = "q1" if i < 3 else "q2"
        frames.add(out, "", queue, env.body, env.properties, True, f"p.{i}")
        expected.append(pika_publish_bytes(1, "", queue, env.body, dict(env.properties, message_id=f"p.{i}"),
                                           True, 131064))
    assert b"".join(out) == b"".join(expected)


def test_what_pika_cannot_encode_is_refused_and_nothing_appended():
    frames = PublishFrames(1, body_max=131064)
    out: list = []
    with pytest.raises(TypeError):
        frames.add(out, "", "q", b"x", {"no_such_property": 1})
    with pytest.raises(pika.exceptions.ShortStringTooLong):
        frames.add(out, "", "q", b"x", {"correlation_id": "x" * 256})
    with pytest.raises(pika.exceptions.ShortStringTooLong):
        frames.add(out, "", "x" * 256, b"x", {})
    assert out == []
