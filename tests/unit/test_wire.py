"""Our properties encoder produces pika's bytes exactly (and decodes back with pika)."""

from __future__ import annotations

import datetime as dt
import struct
from decimal import Decimal

import pika
from hypothesis import given, settings, strategies as st
from pika import data as pika_data

from utilitarian.broker.wire import Properties, encode_table
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
