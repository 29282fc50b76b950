"""AMQP basic properties encoded without pika's per-value overhead: a Celery header table costs
pika ~95 µs to encode, which alone caps a publisher near 7,000 messages/s. The bytes are the
same as pika's (a test compares them), plus floats as 'd', which RabbitMQ and Celery (py-amqp)
use for `timelimit` and pika cannot encode at all."""

from __future__ import annotations

import struct

import pika
from pika import data as pika_data
from pika.spec import BasicProperties

_U32 = struct.Struct(">I").pack
_I32 = struct.Struct(">i").pack
_I64 = struct.Struct(">q").pack
_F64 = struct.Struct(">d").pack
_U16 = struct.Struct(">H").pack
_U64 = struct.Struct(">Q").pack
_KEYS: dict[str, bytes] = {}


def _short(value) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if len(raw) > 255:
        raise pika.exceptions.ShortStringTooLong(raw)
    return bytes((len(raw),)) + raw


def _key(key: str) -> bytes:
    encoded = _KEYS.get(key)
    if encoded is None:
        encoded = _short(key)
        if len(_KEYS) < 4096:  # header names repeat; values do not
            _KEYS[key] = encoded
    return encoded


def _value(out: list, value) -> None:
    kind = type(value)
    if kind is str:
        raw = value.encode("utf-8")
        out.append(b"S" + _U32(len(raw)))
        out.append(raw)
    elif value is None:
        out.append(b"V")
    elif kind is bool:
        out.append(b"t\x01" if value else b"t\x00")
    elif kind is int:
        out.append(b"I" + _I32(value) if -2147483648 <= value <= 2147483647 else b"l" + _I64(value))
    elif kind is float:
        out.append(b"d" + _F64(value))
    elif kind is list or kind is tuple:
        parts: list = []
        for item in value:
            _value(parts, item)
        body = b"".join(parts)
        out.append(b"A" + _U32(len(body)))
        out.append(body)
    elif kind is dict:
        out.append(b"F")
        out.append(encode_table(value))
    else:  # bytes, Decimal, datetime and subclasses: pika's own encoding
        pika_data.encode_value(out, value)


def encode_table(table: dict | None) -> bytes:
    parts: list = []
    for key, value in (table or {}).items():
        parts.append(_key(key))
        _value(parts, value)
    body = b"".join(parts)
    return _U32(len(body)) + body


class Properties(BasicProperties):
    """pika.BasicProperties with a faster `encode` (pika calls it when it frames a publish)."""

    def encode(self):  # noqa: C901 - one branch per AMQP property, in wire order
        P = BasicProperties
        flags = 0
        pieces: list = []
        if self.content_type is not None:
            flags |= P.FLAG_CONTENT_TYPE
            pieces.append(_short(self.content_type))
        if self.content_encoding is not None:
            flags |= P.FLAG_CONTENT_ENCODING
            pieces.append(_short(self.content_encoding))
        if self.headers is not None:
            flags |= P.FLAG_HEADERS
            pieces.append(encode_table(self.headers))
        if self.delivery_mode is not None:
            flags |= P.FLAG_DELIVERY_MODE
            pieces.append(bytes((self.delivery_mode,)))
        if self.priority is not None:
            flags |= P.FLAG_PRIORITY
            pieces.append(bytes((self.priority,)))
        for flag, value in ((P.FLAG_CORRELATION_ID, self.correlation_id), (P.FLAG_REPLY_TO, self.reply_to),
                            (P.FLAG_EXPIRATION, self.expiration), (P.FLAG_MESSAGE_ID, self.message_id)):
            if value is not None:
                flags |= flag
                pieces.append(_short(value))
        if self.timestamp is not None:
            flags |= P.FLAG_TIMESTAMP
            pieces.append(_U64(self.timestamp))
        for flag, value in ((P.FLAG_TYPE, self.type), (P.FLAG_USER_ID, self.user_id), (P.FLAG_APP_ID, self.app_id),
                            (P.FLAG_CLUSTER_ID, self.cluster_id)):
            if value is not None:
                flags |= flag
                pieces.append(_short(value))
        flag_pieces = []
        while True:
            remainder = flags >> 16
            partial = flags & 0xFFFE
            if remainder:
                partial |= 1
            flag_pieces.append(_U16(partial))
            flags = remainder
            if not flags:
                break
        return flag_pieces + pieces
