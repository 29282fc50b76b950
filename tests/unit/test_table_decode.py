"""The consumer's header-table decoder returns what pika's does, for every AMQP field type, with
floats and doubles kept as floats (pika_floats.py); tables are built byte by byte here so that
types pika never encodes (f, b, B, U, u, s, D, x, T) are covered too."""

from __future__ import annotations

import contextlib
import math
import struct

import pika.data
import pytest
from hypothesis import given, settings, strategies as st

from utilitarian.broker import pika_floats, table_decode

ORIGINAL_TABLE = pika.data.decode_table


@contextlib.contextmanager
def pikas_own():
    """pika's decoder as the consumer had it before (pika_floats installed, pika's table code)."""
    saved = pika.data.decode_table, pika.data.decode_value
    pika.data.decode_table = ORIGINAL_TABLE
    pika_floats.install()
    try:
        yield ORIGINAL_TABLE
    finally:
        pika.data.decode_table, pika.data.decode_value = saved


def short(text: bytes) -> bytes:
    return struct.pack("B", len(text)) + text


def long_str(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + raw


# Short and long (a length byte >= 0x80, as Celery's kwargsrepr of an AMR poll has), ASCII and
# not, valid UTF-8 and not (cut mid-character, or random bytes: pika hands those over as bytes).
# (Long ones repeat a short one: hypothesis draws long texts slowly.)
short_texts = st.binary(max_size=12) | st.text(max_size=12).map(lambda t: t.encode()[:200])
texts = short_texts | st.tuples(short_texts.filter(bool), st.integers(11, 255)).map(lambda t: (t[0] * t[1])[:t[1]])
floats = st.floats(allow_nan=False, width=64)
scalar = st.one_of(
    texts.map(lambda b: b"S" + long_str(b)),
    st.just(b"V"),
    st.booleans().map(lambda v: b"t" + struct.pack("B", v)),
    st.integers(-2**63, 2**63 - 1).flatmap(lambda v: st.sampled_from([b"l", b"L"]).map(lambda k: k + struct.pack(">q", v))),
    st.integers(-2**31, 2**31 - 1).map(lambda v: b"I" + struct.pack(">i", v)),
    st.integers(0, 2**32 - 1).map(lambda v: b"i" + struct.pack(">I", v)),
    floats.map(lambda v: b"d" + struct.pack(">d", v)),
    st.floats(allow_nan=False, width=32).map(lambda v: b"f" + struct.pack(">f", v)),
    st.integers(-128, 127).map(lambda v: b"b" + struct.pack(">b", v)),
    st.integers(0, 255).map(lambda v: b"B" + struct.pack(">B", v)),
    st.integers(-2**15, 2**15 - 1).flatmap(lambda v: st.sampled_from([b"U", b"s"]).map(lambda k: k + struct.pack(">h", v))),
    st.integers(0, 2**16 - 1).map(lambda v: b"u" + struct.pack(">H", v)),
    st.tuples(st.integers(0, 9), st.integers(-2**31, 2**31 - 1)).map(lambda d: b"D" + struct.pack(">Bi", *d)),
    st.binary(max_size=10).map(lambda b: b"x" + long_str(b)),
    st.integers(0, 2**33).map(lambda v: b"T" + struct.pack(">Q", v)),
)


def table_of(fields) -> bytes:
    body = b"".join(short(k) + v for k, v in fields)
    return struct.pack(">I", len(body)) + body


values = st.recursive(scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4).map(lambda items: b"A" + long_str(b"".join(items))),
    st.lists(st.tuples(texts, inner), max_size=4).map(lambda fields: b"F" + table_of(fields))), max_leaves=12)
tables = st.lists(st.tuples(texts, values), max_size=12).map(table_of)


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@settings(max_examples=400, deadline=None)
@given(tables, st.binary(max_size=3))
def test_tables_decode_as_pika_decodes_them(raw, before):
    assert_decodes_as_pika(raw, before)


def test_every_well_formed_table_takes_the_sliced_path(monkeypatch):
    # The general loop is left for malformed tables only: non-ASCII text, long strings (their
    # length bytes >= 0x80), nested tables, arrays and floats are all sliced from one latin-1 str.
    monkeypatch.setattr(table_decode, "_decode_general", None)  # a call to it would fail

    @settings(max_examples=300, deadline=None)
    @given(tables, st.binary(max_size=3))
    def check(raw, before):
        assert_decodes_as_pika(raw, before)

    check()


def assert_decodes_as_pika(raw: bytes, before: bytes) -> None:
    encoded = before + raw + b"tail"
    with pikas_own() as reference:
        expected = reference(encoded, len(before))
    got = table_decode.decode_table(encoded, len(before))
    assert got[1] == expected[1] == len(before) + len(raw)
    assert same(got[0], expected[0])


def test_celery_headers_decode_with_their_fractional_time_limits():
    from utilitarian.broker.wire import encode_table

    headers = {"lang": "py", "task": "bench.noop", "id": "6f1c", "timelimit": [300.5, 0.3], "eta": None,
               "retries": 0, "argsrepr": "()", "ignore_result": False}
    table, end = table_decode.decode_table(encode_table(headers), 0)
    assert table == headers and end == len(encode_table(headers))


def test_an_unknown_field_type_is_refused_like_pika_refuses_it():
    raw = table_of([(b"k", b"Z")])
    with pytest.raises(pika.exceptions.InvalidFieldTypeException):
        table_decode.decode_table(raw, 0)


# ASCII-only tables (Celery's headers, mostly) skip the per-slice check. Small lengths and integers
# keep the whole table ASCII, so that case is the one tested here.
ascii_texts = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=12).map(str.encode)
ascii_scalar = st.one_of(
    ascii_texts.map(lambda b: b"S" + long_str(b)),
    st.just(b"V"),
    st.booleans().map(lambda v: b"t" + struct.pack("B", v)),
    st.integers(0, 127).map(lambda v: b"I" + struct.pack(">i", v)),
    st.integers(0, 127).map(lambda v: b"l" + struct.pack(">q", v)),
)
ascii_values = st.recursive(ascii_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3).map(lambda items: b"A" + long_str(b"".join(items))),
    st.lists(st.tuples(ascii_texts, inner), max_size=3).map(lambda fields: b"F" + table_of(fields))), max_leaves=8)
ascii_tables = st.lists(st.tuples(ascii_texts, ascii_values), max_size=20).map(table_of)


@settings(max_examples=400, deadline=None)
@given(ascii_tables, st.binary(max_size=3))
def test_ascii_tables_decode_as_pika_decodes_them(raw, before):
    assert_decodes_as_pika(raw, before)


def outcome(decode, encoded: bytes):
    try:
        table, end = decode(encoded, 0)
    except Exception as exc:  # noqa: BLE001 - the kind of failure is what is compared
        return type(exc)
    return table, end


@settings(max_examples=600, deadline=None)
@given(ascii_tables, st.integers(-6, 6), st.integers(0, 8), st.binary(max_size=6))
def test_a_malformed_ascii_table_fails_or_decodes_as_the_general_loop_does(raw, size_delta, cut, tail):
    # Given a table whose size field lies (too short or too long) or whose bytes stop early
    size = max(0, len(raw) - 4 + size_delta)
    encoded = (struct.pack(">I", size) + raw[4:])[:max(4, len(raw) - cut)] + tail
    # Then the fast path gives what the general loop gives: the same table, or the same error
    general = outcome(lambda b, o: table_decode._decode_general(b, o, struct.unpack_from(">I", b, o)[0]), encoded)
    got = outcome(table_decode.decode_table, encoded)
    if isinstance(general, tuple) and isinstance(got, tuple):
        assert same(got[0], general[0]) and got[1] == general[1]
    else:
        assert got == general


def test_celery_headers_take_the_ascii_path(monkeypatch):
    from utilitarian.broker.wire import encode_table

    headers = {"lang": "py", "task": "bench.noop", "id": "d90d9201-385c-4f14-a84a-b814208ac281", "shadow": None,
               "eta": None, "retries": 0, "timelimit": [None, None], "argsrepr": "()", "ignore_result": False,
               "stamps": {}}
    encoded = encode_table(headers)
    with pikas_own() as reference:
        expected = reference(encoded, 0)
    monkeypatch.setattr(table_decode, "_decode_general", None)  # a call to it would fail
    assert table_decode.decode_table(encoded, 0) == expected


def test_an_amr_poll_with_a_long_kwargsrepr_takes_the_sliced_path(monkeypatch):
    # Given an execute message's headers: ASCII text, but kwargsrepr past 127 bytes, so a length
    # byte is >= 0x80 and the table as a whole is not ASCII (and one value is not ASCII either)
    from utilitarian.broker.wire import encode_table

    headers = {"lang": "py", "task": "amr.execute", "id": "d90d9201-385c-4f14-a84a-b814208ac281", "eta": None,
               "retries": 0, "timelimit": [None, 30.0], "argsrepr": "()",
               "kwargsrepr": repr({"meter": "modbus-tcp://10.1.2.3:502/17", "job": 12345, "series": list(range(30))}),
               "origin": "gen1234@h\u00f6st", "place": "Zürich", "ignore_result": False}
    encoded = encode_table(headers)
    assert len(headers["kwargsrepr"]) > 127 and not encoded.isascii()
    with pikas_own() as reference:
        expected = reference(encoded, 0)
    # Then the general loop is never called and the result is pika's
    monkeypatch.setattr(table_decode, "_decode_general", None)
    assert table_decode.decode_table(encoded, 0) == expected == (headers, len(encoded))
