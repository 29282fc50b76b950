"""The per-poll shortcuts against the code they replaced (kept here as the reference): Modbus
register decoding by precompiled structs, canonical numbers without a Decimal round trip, and
timestamps by isoformat instead of strftime. Each property runs both over generated inputs and
asserts the same text, or the same exception type and message."""

from __future__ import annotations

import datetime as dt
import math
import struct
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utilitarian.amr.errors import MeterProtocolError
from utilitarian.amr.meter_types import DATA_TYPES, RegisterSpec
from utilitarian.amr.model import iso_utc
from utilitarian.amr.protocols.modbus_codec import _STRUCT, decode_register
from utilitarian.amr.readings import Reading, decimal_string, parse_number
from utilitarian.amr.store.backend import SqliteBackend

MANY = settings(max_examples=2000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
UTC = dt.timezone.utc


# --- Modbus decoding -----------------------------------------------------------------------------
def reference_decode(spec: RegisterSpec, registers) -> str | None:
    """decode_register as it was before the precompiled structs."""
    if len(registers) != spec.count or any(not 0 <= r <= 0xFFFF for r in registers):
        raise MeterProtocolError(f"register {spec.address} ({spec.series}): expected {spec.count} 16-bit registers")
    words = list(registers) if spec.word_order == "big" else list(reversed(registers))
    order = "big" if spec.byte_order == "big" else "little"
    raw = b"".join(int(w).to_bytes(2, order) for w in words)
    (value,) = struct.unpack(">" + _STRUCT[spec.data_type], raw)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if spec.data_type == "float32":
            packed = struct.pack(">f", value)
            text = next((t for t in (f"{value:.{d}g}" for d in range(6, 10))
                         if struct.pack(">f", float(t)) == packed), repr(value))
        else:
            text = repr(value)
        number = Decimal(text)
    else:
        number = Decimal(value)
    if spec.scale != 1:
        number = number * spec.scale
    return decimal_string(number)


def outcome(fn, *args):
    try:
        return "value", fn(*args)
    except Exception as exc:  # the same type and message on both sides
        return "error", type(exc), str(exc)


WORD = st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFFF, 0x4348]),
                 st.integers(-3, 0x1_0002))
SCALES = st.sampled_from(["1", "1.0", "0.1", "0.01", "10", "-1", "0.001", "1000", "2.5"])


@MANY
@given(data_type=st.sampled_from(sorted(DATA_TYPES)), word=st.sampled_from(["big", "little"]),
       byte=st.sampled_from(["big", "little"]), scale=SCALES, data=st.data())
def test_decode_register_gives_what_the_reference_gives(data_type, word, byte, scale, data):
    spec = RegisterSpec("s", 7, 4, data_type, word, byte, Decimal(scale), None)
    count = data.draw(st.sampled_from([DATA_TYPES[data_type]] * 6 + [0, 1, 3, 5]))
    registers = data.draw(st.lists(WORD, min_size=count, max_size=count))
    if data.draw(st.booleans()):
        registers = tuple(registers)
    assert outcome(decode_register, spec, registers) == outcome(reference_decode, spec, registers)


@pytest.mark.parametrize("value", [0.0, -0.0, 230.1, -230.1, 1e-5, 1e6, 123456789.0, 3.4e38, -1.5e-45, 0.1])
@pytest.mark.parametrize("data_type", ["float32", "float64"])
def test_decode_register_floats_at_the_edges(value, data_type):
    spec = RegisterSpec("s", 0, 4, data_type)
    raw = struct.pack(">" + _STRUCT[data_type], value)
    registers = list(struct.unpack(f">{len(raw) // 2}H", raw))
    assert decode_register(spec, registers) == reference_decode(spec, registers)


# --- numbers -------------------------------------------------------------------------------------
def reference_parse_number(text: str) -> str | None:
    import re

    text = text.strip()
    if not re.match(r"[+-]?(?:\d+\.?\d*|\.\d+)\Z", text):
        return None
    try:
        return decimal_string(Decimal(text))
    except (InvalidOperation, ValueError):
        return None


NUMBER_TEXT = st.one_of(
    st.text(alphabet="0123456789.-+ e", max_size=12),
    st.tuples(st.sampled_from(["", "-", "+", " ", "-0", "00"]), st.text(alphabet="0123456789", max_size=6),
              st.sampled_from(["", ".", ".0", ".00"]), st.text(alphabet="0123456789", max_size=5),
              st.sampled_from(["", " ", "\n"])).map("".join),
    st.decimals(allow_nan=False, allow_infinity=False).map(lambda d: format(d, "f")),
    st.floats(allow_nan=False, allow_infinity=False).map(repr))


@MANY
@given(text=NUMBER_TEXT)
def test_parse_number_gives_what_the_reference_gives(text):
    assert parse_number(text) == reference_parse_number(text)


@MANY
@given(text=NUMBER_TEXT)
def test_a_reading_keeps_the_canonical_value(text):
    canonical = reference_parse_number(text)
    stamp = dt.datetime(2026, 11, 29, 12, tzinfo=UTC)
    if canonical is None:
        with pytest.raises(ValueError):
            Reading("s", stamp, text)
    else:
        assert Reading("s", stamp, text).value == canonical


def test_a_reading_normalises_its_timestamp_to_utc():
    berlin = dt.datetime(2026, 11, 29, 13, tzinfo=ZoneInfo("Europe/Berlin"))
    reading = Reading("s", berlin, "1")
    assert reading.timestamp == berlin and reading.timestamp.tzinfo is UTC
    with pytest.raises(ValueError, match="timezone-aware"):
        Reading("s", dt.datetime(2026, 11, 29), "1")


# --- timestamps ----------------------------------------------------------------------------------
ZONES = st.sampled_from([UTC, ZoneInfo("UTC"), ZoneInfo("Europe/Berlin"), ZoneInfo("America/St_Johns"),
                         dt.timezone(dt.timedelta(hours=-5)), dt.timezone(dt.timedelta(minutes=345))])
MOMENTS = st.datetimes(min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 12, 31),
                       timezones=ZONES)


@MANY
@given(moment=MOMENTS)
def test_timestamps_are_formatted_as_strftime_formatted_them(moment):
    utc = moment.astimezone(UTC)
    assert SqliteBackend.ts(None, moment) == utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    expected = utc.strftime("%Y-%m-%dT%H:%M:%S") + (f".{utc.microsecond:06d}" if utc.microsecond else "") + "Z"
    assert iso_utc(moment) == expected


# --- deterministic ids ---------------------------------------------------------------------------
@settings(max_examples=500, deadline=None, database=None)
@given(st.text())
def test_ids_are_the_uuid5_that_uuid_gives(name):
    import uuid

    from utilitarian.amr.model import ID_NAMESPACE, uuid5_text

    assert uuid5_text(name) == str(uuid.uuid5(ID_NAMESPACE, name))


def test_job_and_event_ids_did_not_change():
    # Ids already in stores and queues: a repeated dispatch must name its jobs as before.
    from utilitarian.amr.model import event_id, job_id

    slot = dt.datetime(2026, 11, 29, tzinfo=UTC)
    assert job_id("meter-1", "read-daily", slot) == "270e3b7c-cf49-53f6-b8c5-67dc0321d5a2"  # as computed by uuid.uuid5 before
    assert event_id("abc", 0, 1, "Poll failed") == "e6964b84-832d-5ebf-aee0-1926ee990b51"
