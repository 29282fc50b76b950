"""Tables of a size seen before are patched from the last decoded one (table_decode._from_shape):
every table still decodes as pika decodes it, whatever sequence of tables of one size arrives, and
no list or dict of one result is shared with another."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from utilitarian.broker import table_decode
from utilitarian.broker.wire import encode_table

from tests.unit.test_table_decode import assert_decodes_as_pika, long_str, short, values


@pytest.fixture(autouse=True)
def fresh_cache():
    table_decode._SHAPES.clear()
    yield
    table_decode._SHAPES.clear()


def celery_headers(task_id: str, **extra) -> dict:
    return {"lang": "py", "task": "bench.noop", "id": task_id, "shadow": None, "eta": None, "expires": None,
            "group": None, "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": task_id,
            "parent_id": None, "argsrepr": "()", "kwargsrepr": "{}", "origin": "gen29215@vm",
            "ignore_result": False, "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {}, **extra}


def test_celery_headers_after_the_first_two_are_patched_from_the_last(monkeypatch):
    # Given two tables of Celery's shape decoded in full
    ids = [f"d90d9201-385c-4f14-a84a-b814208ac{n:03d}" for n in range(5)]
    for task_id in ids[:2]:
        assert table_decode.decode_table(encode_table(celery_headers(task_id)), 0)[0] == celery_headers(task_id)
    # When more arrive, the full decoder is not called, and each result is its own table
    monkeypatch.setattr(table_decode, "_decode_chunk", None)
    got = [table_decode.decode_table(encode_table(celery_headers(task_id)), 0)[0] for task_id in ids[2:]]
    assert got == [celery_headers(task_id) for task_id in ids[2:]]
    got[0]["timelimit"].append(1)
    got[0]["stamps"]["x"] = 1
    assert got[1]["timelimit"] == [None, None] and got[1]["stamps"] == {}


def test_a_table_of_the_same_size_and_another_shape_decodes_in_full():
    # Given a learned shape, then a table as long whose other fields differ (retries, a key)
    first, second = (encode_table(celery_headers(f"{n:036d}")) for n in (1, 2))
    table_decode.decode_table(first, 0)
    table_decode.decode_table(second, 0)
    other = celery_headers(f"{3:036d}", retries=7)
    renamed = {("lang" if k == "task" else "task" if k == "lang" else k): v for k, v in celery_headers("4" * 36).items()}
    non_ascii = celery_headers("é" * 18)
    for headers in (other, renamed, non_ascii, celery_headers(f"{5:036d}")):
        encoded = encode_table(headers)
        assert len(encoded) == len(first) or headers is non_ascii
        assert table_decode.decode_table(encoded, 0) == (headers, len(encoded))


def test_nested_containers_are_decoded_anew_for_each_table():
    headers = [celery_headers(f"{n:036d}", stamps={"a": [1, {"b": "c"}]}) for n in range(4)]
    got = [table_decode.decode_table(encode_table(h), 0)[0] for h in headers]
    assert got == headers
    got[2]["stamps"]["a"][1]["b"] = "changed"
    assert table_decode.decode_table(encode_table(headers[3]), 0)[0] == headers[3]


def test_a_repeated_key_keeps_the_last_value():
    def table(first: bytes, second: bytes) -> bytes:
        body = b"".join(short(b"k") + b"S" + long_str(v) for v in (first, second)) + short(b"pad") + b"S" + long_str(b"p" * 80)
        return struct.pack(">I", len(body)) + body

    for first, second in ((b"aa", b"bb"), (b"cc", b"bb"), (b"dd", b"ee"), (b"ff", b"ee")):
        assert table_decode.decode_table(table(first, second), 0)[0] == {"k": second.decode(), "pad": "p" * 80}


# Families of tables of one size: a fixed skeleton whose text values are redrawn at their length,
# sometimes with another type or key put in, so that hits, misses and relearning all happen.
skeletons = st.lists(st.tuples(st.binary(min_size=1, max_size=6), values), min_size=3, max_size=10)


@settings(max_examples=150, deadline=None)
@given(skeletons, st.lists(st.tuples(st.integers(0, 9), st.binary(min_size=0, max_size=40), st.booleans()),
                           min_size=2, max_size=12), st.binary(max_size=3))
def test_every_table_of_a_sequence_of_one_size_decodes_as_pika_decodes_it(fields, edits, before):
    pad = short(b"pad") + b"S" + long_str(b"p" * 64)  # above SHAPED_MIN_SIZE
    for index, replacement, same_length in edits:
        index %= len(fields)
        key, value = fields[index]
        if same_length and value[:1] == b"S":
            old = value[5:]
            new = (replacement * (len(old) // max(1, len(replacement)) + 1))[:len(old)] if replacement else old
            fields[index] = (key, b"S" + long_str(new))
        elif not same_length:
            fields[index] = (key, b"S" + long_str(replacement))
        body = b"".join(short(k) + v for k, v in fields) + pad
        assert_decodes_as_pika(struct.pack(">I", len(body)) + body, before)
