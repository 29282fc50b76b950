"""The Corus codec against frames published outside this project (the platform's client and its
captures), and property tests: arbitrary bytes end in a frame, "need more", or a typed error."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings, strategies as st

from utilitarian.amr.errors import MeterError, MeterProtocolError
from utilitarian.amr.protocols import corus_frames as cf
from utilitarian.amr.protocols.corus_maps import LAYOUTS
from utilitarian.amr.environments.corus import records_to_readings
from zoneinfo import ZoneInfo


def test_crc_matches_published_frames():
    assert cf.crc16(b"123456789") == 0xFEE8                     # CRC-16/BUYPASS check value
    assert cf.build_break() == b"\x01B0\x03!1"                    # the break with its precomputed CRC
    assert cf.build_password("PASS") == b"PASS\xe0\xae"          # the prompt as captured from a device
    captured = bytes.fromhex("01be0d00f9ff0f38000000000000000003fa0e")   # interval read, capture
    assert cf.crc16(captured[:-2]).to_bytes(2, "little") == captured[-2:]
    assert cf.build_database_read("interval", None, None)[:4] == b"\x01\xbe\x0d\x00"


def test_data_types():
    assert cf.decode("index", b"\x14.\x00\x00\x80\x1d,\x04") == Decimal("11796.7")   # the library's own vector
    assert cf.decode("index9", b"\x14.\x00\x00\x00\x80\x1d,\x04") == Decimal("11796.7")
    assert cf.decode("float1", (-1612).to_bytes(2, "little", signed=True)) == Decimal("-16.12")
    assert cf.decode("float2", (0x8000 | 102).to_bytes(2, "little")) == Decimal("1.02")
    assert cf.decode("float2", (1234).to_bytes(2, "little")) == Decimal("1.234")
    assert cf.decode("word", b"\xff\xff") is None                 # "no value"
    moment = datetime(2025, 10, 26, 2, 30, 15)
    assert cf.decode_date(cf.encode_date(moment)) == moment
    with pytest.raises(MeterProtocolError, match="not a valid Corus date"):
        cf.decode_date(b"\x00\x00\x00\x00")                        # month 0
    assert cf.encode_id(0x5E) == b"\x5e" and cf.encode_id(299) == b"\xf1\x2b"


def test_frame_extraction_and_crc_mismatch():
    good = cf.with_crc(b"\x01\x03abc\x03")
    assert cf.extract_frame(bytearray(b"\xff\xff" + good)) == (len(good) + 2, cf.Frame("data", b"abc"))
    bad = good[:-1] + bytes([good[-1] ^ 1])
    assert cf.extract_frame(bytearray(bad))[1].crc_ok is False
    assert cf.extract_frame(bytearray(good[:-1])) is None
    with pytest.raises(MeterProtocolError, match="ETX"):
        cf.extract_frame(bytearray(b"\x01\x01a\x04xx"))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_extractors_on_arbitrary_bytes(data):
    for extract in (cf.extract_frame, cf.extract_line, cf.extract_prompt, cf.extract_wakeup):
        try:
            result = extract(bytearray(data))
        except MeterProtocolError:
            continue
        assert result is None or 0 < result[0] <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(cf.LENGTHS)), st.data())
def test_decode_arbitrary_fields(kind, data):
    raw = data.draw(st.binary(min_size=cf.LENGTHS[kind], max_size=cf.LENGTHS[kind]))
    try:
        cf.decode(kind, raw)
    except MeterProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([(db, size) for db in LAYOUTS for size in LAYOUTS[db]]), st.data())
def test_arbitrary_records_give_readings_or_a_skip_event(layout, data):
    db, size = layout
    records = data.draw(st.lists(st.binary(min_size=size, max_size=size), max_size=4))
    try:
        result = records_to_readings(records, LAYOUTS[db][size], Decimal("0.1"), ZoneInfo("Europe/Stockholm"))
    except MeterError as exc:  # only typed errors
        pytest.fail(f"records_to_readings raised {exc!r}")
    stamps = [(r.series, r.timestamp) for r in result.readings]
    assert len(stamps) == len(set(stamps))     # no two readings on one key
