"""pika 1.4 decodes AMQP floats ('f') and doubles ('d') in header tables with `long()`, so Celery's
`timelimit` header [300.5, 0.3] arrives as [300, 0]: a fractional limit is cut, one under a second
becomes 0, which the protocol reads as "no limit". Our publisher writes doubles (wire.py), and
Celery's py-amqp does too. Installing this keeps them floats; every other type is pika's own."""

from __future__ import annotations

import struct

import pika.data

_pika_decode_value = pika.data.decode_value
_DOUBLE = struct.Struct(">d").unpack_from
_FLOAT = struct.Struct(">f").unpack_from


def decode_value(encoded: bytes, offset: int):
    kind = encoded[offset:offset + 1]
    if kind == b"d":
        return _DOUBLE(encoded, offset + 1)[0], offset + 9
    if kind == b"f":
        return _FLOAT(encoded, offset + 1)[0], offset + 5
    return _pika_decode_value(encoded, offset)


def install() -> None:
    """Idempotent; pika's table and array decoders look `decode_value` up in their module."""
    pika.data.decode_value = decode_value
