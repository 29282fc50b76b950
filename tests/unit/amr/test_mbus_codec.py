"""M-Bus codec: the EN 13757-3 example telegram, units and codings, and Hypothesis on the frame
extractor and the record parser: any bytes end in records or a typed MeterError."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utilitarian.amr.errors import MeterError
from utilitarian.amr.protocols import mbus_frames as f
from utilitarian.amr.protocols.mbus_records import MbusDecodeError, parse_header, parse_records

FAST = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
# The RSP_UD example of the M-Bus documentation (EN 13757-3 mode 1): a water meter, ID 12345678.
EXAMPLE = bytes.fromhex("681F1F680802727856341224400107550000000313153100DA023B13018B60043718021816")


def records_of(frame_bytes: bytes):
    consumed, frame = f.extract_frame(bytearray(frame_bytes))
    header, start = parse_header(frame.ci, frame.data)
    return header, parse_records(frame.data, start)[0]


def test_standard_example_telegram():
    header, records = records_of(EXAMPLE)
    assert (header.identification, header.manufacturer, header.medium, header.access_number) == \
        ("12345678", "PAD", 7, 0x55)
    assert [(r.key, r.value, r.unit) for r in records] == [
        ("volume", Decimal("12.565"), "m3"),                 # int24, 10^-3 m3
        ("volume_flow_max@s5", Decimal("0.113"), "m3/h"),    # BCD4, maximum, storage 5
        ("energy@t2@u1", Decimal("218.37"), "kWh"),          # BCD6, 10 Wh, tariff 2, subunit 1
    ]


def test_request_frames():
    assert f.snd_nke(5) == bytes.fromhex("1040054516")
    assert f.req_ud2(5, True) == bytes.fromhex("107B058016")
    assert f.req_ud2(5, False) == bytes.fromhex("105B056016")
    select = f.select_secondary("1234FFFF")
    assert select[4:7] == bytes([0x53, 0xFD, 0x52]) and select[7:11] == bytes.fromhex("FFFF3412")
    assert select[11:15] == b"\xff\xff\xff\xff"


def body(records: bytes) -> bytes:
    return f.long_frame(0x08, 1, 0x72, bytes.fromhex("78563412" "2440" "01" "04" "00" "00" "0000") + records)


@pytest.mark.parametrize("record, key, value, unit", [
    ("0406E8030000", "energy", "1000", "kWh"),                 # int32, VIF 06: Wh 10^3
    ("04FB0005000000", "energy", "500", "kWh"),                 # first extension table: MWh 10^-1
    ("040E01000000", "energy", "1", "MJ"),                      # VIF 0E: J 10^6
    ("022B6400", "power", "0.1", "kW"),                         # int16 W
    ("025A2C01", "flow_temperature", "30", "°C"),               # 0.1 °C
    ("02614B00", "temperature_difference", "0.75", "K"),        # 0.01 K
    ("0C1378563412", "volume", "12345.678", "m3"),              # BCD8 litres
    ("0C13785634F2", "volume", "-2345.678", "m3"),              # BCD, high nibble F = minus
    ("0422E8030000", "on_time", "3600000", "s"),                # 1000 h
    ("054300002041", "volume_flow", "0.06", "m3/h"),            # real32 10.0, m3/min 10^-4
    ("04FD48E8030000", "voltage", "100", "V"),                  # second extension table: 10^-1 V
])
def test_record_codings(record, key, value, unit):
    _h, records = records_of(body(bytes.fromhex(record)))
    assert (records[0].key, records[0].value, records[0].unit) == (key, Decimal(value), unit)


def test_dates_storage_and_multiplier():
    _h, records = records_of(body(bytes.fromhex("426C3F3C" "046D2B0A2A31" "049374E8030000")))
    assert records[0].key == "date@s1" and records[0].value == datetime(2025, 12, 31)
    assert records[1].value == datetime(2025, 1, 10, 10, 43)
    # VIFE 0x74: multiplicative correction 10^-2
    assert records[2].value == Decimal("0.01000") and records[2].unit == "m3"


def test_unknown_vif_and_error_records_are_reported_not_guessed():
    _h, records = records_of(body(bytes.fromhex("04EF0001000000" "04FD7F01000000" "0C13AAAAAAAA" "04861501000000")))
    problems = [r.problem for r in records]
    assert all(problems) and records[0].value is None
    assert "BCD" in problems[2]


def test_more_records_follow():
    _h, _records = records_of(body(bytes.fromhex("0406E8030000") + b"\x1f"))
    consumed, frame = f.extract_frame(bytearray(body(bytes.fromhex("0406E8030000") + b"\x1f")))
    assert parse_records(frame.data, 12)[1] is True


def test_truncated_and_reserved_structures_raise():
    for data in ("04", "0406E803", "8480", "3F"):
        with pytest.raises(MbusDecodeError):
            parse_records(bytes.fromhex(data), 0)


def test_collision_is_a_checksum_error():
    garbled = bytearray(EXAMPLE)
    garbled[10] &= 0x0F        # two slaves at once: zeros win
    with pytest.raises(MeterError) as info:
        f.extract_frame(garbled)
    assert info.value.kind == "checksum"


@FAST
@given(st.binary(max_size=300))
def test_frame_extractor_is_typed(raw):
    try:
        result = f.extract_frame(bytearray(raw))
    except MeterError:
        return
    if result is not None:
        assert 0 < result[0] <= len(raw)


RECORD_BYTES = st.lists(st.one_of(st.sampled_from([bytes([d]) for d in (0x01, 0x02, 0x04, 0x0C, 0x0D, 0x05, 0x84,
                                                                         0x42, 0x1F, 0x2F, 0xFB, 0xFD, 0x7C, 0x6D)]),
                                  st.binary(max_size=6)), max_size=40).map(b"".join)


@FAST
@given(st.one_of(st.binary(max_size=255), RECORD_BYTES))
def test_record_parser_is_typed(raw):
    try:
        records, _more = parse_records(raw, 0)
    except MeterError:
        return
    for record in records:
        assert record.problem or record.value is not None


@FAST
@given(st.integers(0, 255), st.binary(max_size=252))
def test_long_frame_round_trip(address, data):
    raw = f.long_frame(0x08, address, 0x72, data)
    consumed, frame = f.extract_frame(bytearray(raw + b"\x10"))
    assert consumed == len(raw) and (frame.address, frame.ci, frame.data) == (address, 0x72, data)


def test_empty_variable_length_bcd_is_a_record_problem():
    # Found by Hypothesis: LVAR 0xD0 (negative BCD of length 0) raised IndexError.
    [record], _more = parse_records(b"\x0d\x00\xd0", 0)
    assert record.value is None and "BCD" in record.problem
