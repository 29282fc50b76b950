"""A delivery's `timelimit` header keeps its fractions: pika alone decodes AMQP doubles with
`long()`, so a 0.3 s soft limit arrived as 0 (no limit) and 300.5 s as 300. Decoded here exactly
as the consumer's pika decodes a delivery's properties."""

from __future__ import annotations

import pytest
from pika.spec import BasicProperties

import utilitarian.broker.consumer  # noqa: F401  (installs the float decoding, as a worker child does)
from utilitarian.broker.wire import Properties
from utilitarian.protocol import decode, encode_task


def on_the_wire(headers: dict) -> dict:
    raw = b"".join(Properties(headers=headers, delivery_mode=2).encode())
    props = BasicProperties()
    props.decode(raw)
    return props.headers


@pytest.mark.parametrize("value", [0.3, 300.5, 1e-3, -2.25, 12.0])
def test_doubles_in_headers_survive_decoding(value):
    assert on_the_wire({"x": value, "nested": [value, {"y": value}]}) == {"x": value, "nested": [value, {"y": value}]}


def test_a_sub_second_soft_limit_reaches_the_task():
    env = encode_task("t", [], {}, soft_time_limit=0.3, time_limit=2.5)
    headers = on_the_wire(env.properties["headers"])
    message = decode(env.body, content_type=env.properties["content_type"],
                     content_encoding=env.properties["content_encoding"], headers=headers)
    assert (message.soft_time_limit, message.time_limit) == (0.3, 2.5)


def test_other_types_are_pika_s_own():
    headers = {"s": "text", "i": 7, "l": 2**40, "b": True, "n": None, "a": [1, "x"]}
    assert on_the_wire(headers) == headers
