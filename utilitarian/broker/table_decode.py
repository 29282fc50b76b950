"""A faster AMQP field-table decoder for pika, installed by the consumer: every delivery's
properties carry Celery's header table (about 25 short strings), and pika decodes it through
two calls per field, each re-dispatching on the type byte through a chain of comparisons. That
was a quarter of a worker child's CPU for a no-op task (cProfile of 20,000 deliveries:
docs/benchmarks.md). This decoder returns what pika's does (property test:
tests/unit/test_table_decode.py), with floats and doubles kept as floats (pika_floats.py), in one
loop per table; only the decoding of delivered properties goes through it.

Limit: types are checked like pika's (an unknown type byte raises InvalidFieldTypeException), but a
table whose sizes run past the buffer raises struct.error or IndexError where pika may return
garbage; pika then closes the connection either way."""

from __future__ import annotations

import decimal
import struct
from datetime import datetime, timezone

import pika.data
from pika import exceptions
from pika.compat import long  # pika hands 64-bit integers over as this int subclass

_U32 = struct.Struct(">I").unpack_from
_I32 = struct.Struct(">i").unpack_from
_I64 = struct.Struct(">q").unpack_from
_U64 = struct.Struct(">Q").unpack_from
_I16 = struct.Struct(">h").unpack_from
_U16 = struct.Struct(">H").unpack_from
_I8 = struct.Struct(">b").unpack_from
_F64 = struct.Struct(">d").unpack_from
_F32 = struct.Struct(">f").unpack_from
_S, _V, _F, _A, _t, _l, _L, _I, _i, _d, _f = (ord(c) for c in "SVFAtlLIidf")


def _text(raw: bytes):
    try:
        return raw.decode("utf8")
    except UnicodeDecodeError:  # pika hands undecodable strings over as bytes
        return raw


def decode_table(encoded: bytes, offset: int) -> tuple[dict, int]:
    """pika.data.decode_table's contract: (table, offset after it)."""
    size = _U32(encoded, offset)[0]
    start = offset + 4
    chunk = encoded[start:start + size]
    if len(chunk) == size:
        if size >= SHAPED_MIN_SIZE:
            entry = _SHAPES.get(size)
            if entry is not None and entry[1] is not None:
                result = _from_shape(chunk, entry[1])
                if result is not None:
                    return result, start + size
            result = _decode_chunk(encoded, start, chunk)
            if result is not None:
                _learn(size, chunk, result, entry)
                return result, start + size
            return _decode_general(encoded, offset, size)
        result = _decode_chunk(encoded, start, chunk)
        if result is not None:
            return result, start + size
    return _decode_general(encoded, offset, size)


# --- tables of a shape seen before -------------------------------------------------------------
# Celery's header table has one shape per producer and task: the same ~19 keys, types and lengths,
# only the task id (and root id) differ. A table of a size seen before is compared with the last
# one of that size outside the text values that differed between those two; where every byte
# there is the same, the table parses the same way (the bytes decide every field's position), so
# it is the last result with those values sliced anew: three memcmp instead of ~19 fields.
SHAPED_MIN_SIZE = 64  # smaller tables (nested ones, {} stamps) decode as fast as they compare
SHAPED_MAX_SIZE = 4096  # bounds what the cache holds: <= SHAPES_MAX x 2 x this
SHAPES_MAX = 32  # sizes remembered; past that the cache starts over
MAX_VARYING = 8  # text values allowed to differ from the last table of that size
MAX_RELEARNS = 64  # a size whose tables keep differing elsewhere is decoded in full from then on
_IMMUTABLE = (str, bytes, int, float, type(None), decimal.Decimal, datetime)
# size -> (last chunk, shape or None, relearns); a tuple replaced whole, never changed in place,
# so a thread that reads an entry while another replaces it sees one consistent entry
_SHAPES: dict[int, tuple] = {}


def _from_shape(chunk: bytes, shape: tuple) -> dict | None:
    """The table of `chunk` when it has `shape`, else None."""
    segments, texts, containers, base = shape
    for a, b, expected in segments:
        if chunk[a:b] != expected:
            return None
    result = base.copy()
    for key, a, b in texts:
        raw = chunk[a:b]
        result[key] = raw.decode("ascii") if raw.isascii() else _text(raw)
    for key, at in containers:  # never shared between deliveries: a fresh list or dict each
        result[key] = base[key].copy() if at is None else decode_value(chunk, at)[0]
    return result


def _learn(size: int, chunk: bytes, result: dict, entry: tuple | None) -> None:
    """After a full decode of a table of `size` bytes: remember it, and the shape it shares with
    the last one of that size, if any."""
    if size > SHAPED_MAX_SIZE:
        return
    if entry is None:
        if len(_SHAPES) >= SHAPES_MAX:
            _SHAPES.clear()
        _SHAPES[size] = (chunk, None, 0)
        return
    last, _, relearns = entry
    if relearns >= MAX_RELEARNS:
        return
    _SHAPES[size] = (chunk, _shape_of(last, chunk, result), relearns + 1)


def _shape_of(last: bytes, chunk: bytes, result: dict) -> tuple | None:
    """(segments, texts, containers, base) for tables like `chunk` whose text values may differ
    where `last` and `chunk` differ; None when they differ elsewhere or a key repeats."""
    fields = []
    pos, size = 0, len(chunk)
    while pos < size:
        end = pos + 1 + chunk[pos]
        key = _text(chunk[pos + 1:end])
        if chunk[end] == _S:
            pos = end + 5 + _U32(chunk, end + 1)[0]
            fields.append((key, end + 5, pos, True))
        else:
            pos = decode_value(chunk, end)[1]
            fields.append((key, end, pos, False))
    if len(fields) != len(result):
        return None  # a repeated key: the last one wins, which a per-key patch cannot follow
    texts = [(key, a, b) for key, a, b, text in fields if text and chunk[a:b] != last[a:b]]
    if len(texts) > MAX_VARYING:
        return None
    segments, pos = [], 0
    for _, a, b in texts:
        segments.append((pos, a, chunk[pos:a]))
        pos = b
    segments.append((pos, size, chunk[pos:]))
    if any(last[a:b] != expected for a, b, expected in segments):
        return None  # differs outside the text values: another shape that happens to be this long
    base, containers = {}, []
    for key, at, _, _ in fields:
        value = result[key]
        if type(value) is list or type(value) is dict:
            flat = all(isinstance(item, _IMMUTABLE) for item in (value if type(value) is list else value.values()))
            containers.append((key, None if flat else at))
            value = value.copy()  # this copy is never handed out, only copies of it
        base[key] = value
    return tuple(segments), tuple(texts), tuple(containers), base


def _decode_chunk(encoded: bytes, start: int, chunk: bytes) -> dict | None:
    """The table whose bytes are `chunk` (at `start` in `encoded`), or None when it is malformed.
    Decoded once as latin-1 (one character per byte, so offsets into the str are offsets
    into the bytes), every key and string value is then a slice of one str, where it was a
    bytes slice plus a decode call each (~40 per table). Celery's headers are ASCII in their
    text, but a length or an integer byte >= 0x80 (a kwargsrepr longer than 127 bytes) makes
    the table as a whole non-ASCII: then each slice is checked (str.isascii() is O(1) in
    CPython) and only a non-ASCII one is decoded again from its bytes, as UTF-8."""
    text = chunk.decode("latin-1")
    try:
        result, end = _decode_sliced(encoded, start, chunk, text, not text.isascii())
    except (IndexError, struct.error):  # malformed: the general loop fails (or not) as it always did
        return None
    return result if end == len(chunk) else None


def _decode_sliced(encoded: bytes, start: int, chunk: bytes, text: str, mixed: bool) -> tuple[dict, int]:
    """The fields of a table whose bytes are `chunk` and, read as latin-1, `text`: (table, offset
    after the last field, from `start`). `mixed`: some bytes are >= 0x80, so a slice may need UTF-8."""
    size = len(chunk)
    result = {}
    pos = 0
    while pos < size:
        end = pos + 1 + chunk[pos]
        key = text[pos + 1:end]
        if mixed and not key.isascii():
            key = _text(chunk[pos + 1:end])
        kind = chunk[end]
        if kind == _S:
            pos = end + 5 + _U32(chunk, end + 1)[0]
            value = text[end + 5:pos]
            if mixed and not value.isascii():
                value = _text(chunk[end + 5:pos])
            result[key] = value
        elif kind == _V:
            result[key] = None
            pos = end + 1
        elif kind == _t:
            result[key] = bool(chunk[end + 1])
            pos = end + 2
        elif kind == _I:
            result[key] = _I32(chunk, end + 1)[0]
            pos = end + 5
        else:
            result[key], pos = decode_value(encoded, start + end)
            pos -= start
    return result, pos


def _decode_general(encoded: bytes, offset: int, size: int) -> tuple[dict, int]:
    offset += 4
    limit = offset + size
    result = {}
    while offset < limit:
        length = encoded[offset]
        end = offset + 1 + length
        raw = encoded[offset + 1:end]
        try:  # inlined _text: two calls per field were most of pika's cost
            key = raw.decode("utf8")
        except UnicodeDecodeError:
            key = raw
        kind = encoded[end]
        if kind == _S:  # the common case first: Celery's headers are mostly strings
            offset = end + 5 + _U32(encoded, end + 1)[0]
            raw = encoded[end + 5:offset]
            try:
                result[key] = raw.decode("utf8")
            except UnicodeDecodeError:
                result[key] = raw
        elif kind == _V:
            result[key] = None
            offset = end + 1
        elif kind == _t:  # Celery's ignore_result
            result[key] = bool(encoded[end + 1])
            offset = end + 2
        elif kind == _I:  # Celery's retries
            result[key] = _I32(encoded, end + 1)[0]
            offset = end + 5
        else:
            result[key], offset = decode_value(encoded, end)
    return result, offset


def decode_value(encoded: bytes, offset: int):
    """pika.data.decode_value's contract, floats and doubles kept as floats."""
    kind = encoded[offset]
    offset += 1
    if kind == _S:
        length = _U32(encoded, offset)[0]
        offset += 4
        return _text(encoded[offset:offset + length]), offset + length
    if kind == _V:
        return None, offset
    if kind == _F:
        return decode_table(encoded, offset)
    if kind == _A:
        end = offset + 4 + _U32(encoded, offset)[0]
        offset += 4
        items = []
        while offset < end:
            value, offset = decode_value(encoded, offset)
            items.append(value)
        return items, offset
    if kind == _t:
        return bool(encoded[offset]), offset + 1
    if kind == _l or kind == _L:
        return long(_I64(encoded, offset)[0]), offset + 8
    if kind == _I:
        return _I32(encoded, offset)[0], offset + 4
    if kind == _i:
        return _U32(encoded, offset)[0], offset + 4
    if kind == _d:
        return _F64(encoded, offset)[0], offset + 8
    if kind == _f:
        return _F32(encoded, offset)[0], offset + 4
    return _rare(kind, encoded, offset)


def _rare(kind: int, encoded: bytes, offset: int):
    if kind == 0x62:  # b: short-short int
        return _I8(encoded, offset)[0], offset + 1
    if kind == 0x42:  # B: short-short unsigned
        return encoded[offset], offset + 1
    if kind == 0x55 or kind == 0x73:  # U, s: short int
        return _I16(encoded, offset)[0], offset + 2
    if kind == 0x75:  # u: short unsigned
        return _U16(encoded, offset)[0], offset + 2
    if kind == 0x44:  # D: decimal
        decimals = encoded[offset]
        raw = _I32(encoded, offset + 1)[0]
        return decimal.Decimal(raw) * (decimal.Decimal(10) ** -decimals), offset + 5
    if kind == 0x78:  # x: byte array
        length = _U32(encoded, offset)[0]
        offset += 4
        return encoded[offset:offset + length], offset + length
    if kind == 0x54:  # T: timestamp
        return datetime.fromtimestamp(_U64(encoded, offset)[0], timezone.utc), offset + 8
    raise exceptions.InvalidFieldTypeException(bytes([kind]))


def install() -> None:
    """Idempotent. pika's property and method decoders look `decode_table` up in pika.data."""
    pika.data.decode_table = decode_table
