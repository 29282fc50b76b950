"""Errors, readings and meter URLs: the contracts other parts of the platform build on."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from utilitarian.amr import errors as e
from utilitarian.amr.readings import PollResult, Reading, SystemEvent, parse_number
from utilitarian.amr.target import parse_meter_url
from utilitarian.errors import ConfigError, UtilitarianError

UTC = timezone.utc


def test_error_kinds_and_retry_policy():
    expected = {
        e.MeterTimeout: ("timeout", True), e.MeterUnreachable: ("timeout", True),
        e.MeterChecksumError: ("checksum", False), e.MeterProtocolError: ("protocol", False),
        e.MeterAuthenticationError: ("authentication", False),
        e.MeterUnsupported: ("unsupported", False),
    }
    for cls, (kind, retryable) in expected.items():
        error = cls("boom")
        assert isinstance(error, e.MeterError) and isinstance(error, UtilitarianError)
        assert (error.kind, error.retryable) == (kind, retryable)
    assert issubclass(e.MeterUnreachable, e.MeterTimeout)
    call = e.BadTaskCall("generic_modbus", "read_valuez", "unknown task_call")
    assert call.kind == "bad_call" and not call.retryable
    assert "generic_modbus" in str(call) and "read_valuez" in str(call)
    assert e.MeterTimeout("x").exit_code == 75 and e.MeterProtocolError("x").exit_code == 1
    assert call.exit_code == 64


def test_reading_normalises_value_and_timestamp():
    stockholm = timezone(timedelta(hours=1))
    reading = Reading("1.8.0", datetime(2024, 1, 5, 13, 0, tzinfo=stockholm), "0012345.670", "kWh")
    assert reading.value == "12345.670"
    assert reading.timestamp == datetime(2024, 1, 5, 12, 0, tzinfo=UTC)
    assert reading.timestamp.tzinfo is UTC
    with pytest.raises(ValueError):
        Reading("x", datetime(2024, 1, 5), "1", None)           # naive
    with pytest.raises(ValueError):
        Reading("x", datetime(2024, 1, 5, tzinfo=UTC), "1e3")   # exponent
    with pytest.raises(ValueError):
        Reading("x", datetime(2024, 1, 5, tzinfo=UTC), "NaN")


@pytest.mark.parametrize("text,expected", [
    ("00012.340", "12.340"), ("-0001.5", "-1.5"), ("+7", "7"), ("-0.000", "0.000"),
    (".5", "0.5"), ("12.", "12"), ("12:00:00", None), ("", None), ("1,5", None), ("inf", None),
])
def test_parse_number(text, expected):
    assert parse_number(text) == expected


def test_system_event_limits():
    with pytest.raises(ValueError):
        SystemEvent("x" * 51)
    with pytest.raises(ValueError):
        SystemEvent("ok", "y" * 501)
    event = SystemEvent.truncated("t" * 80, "c" * 900)
    assert len(event.title) == 50 and len(event.content) == 500
    result = PollResult((), (event,)) + PollResult((), (SystemEvent("Time adjusted"),))
    assert [ev.title for ev in result.events][1] == "Time adjusted"


@pytest.mark.parametrize("url,fields", [
    ("iec62056-21+tcp://10.1.2.3:4001?address=12345678",
     {"protocol": "iec62056-21", "transport": "tcp", "host": "10.1.2.3", "port": 4001,
      "address": "12345678", "interface": "10.1.2.3:4001"}),
    ("iec62056-21+serial:///dev/ttyUSB0",
     {"transport": "serial", "device": "/dev/ttyUSB0", "interface": "/dev/ttyUSB0"}),
    ("modbus+tcp://meters.example:1502?device_id=7&type=eastron_sdm630",
     {"protocol": "modbus", "host": "meters.example", "port": 1502, "device_id": 7,
      "meter_type": "eastron_sdm630", "retries": 0}),
    ("modbus+tcp://[::1]?device_id=1", {"host": "::1", "port": 502, "interface": "[::1]:502"}),
    ("modbus+rtu:///dev/ttyUSB1?baud=19200&parity=E&device_id=3",
     {"transport": "serial", "device": "/dev/ttyUSB1", "device_id": 3}),
    ("modbus+rtu-over-tcp://gw:4196?device_id=2", {"transport": "rtu-over-tcp", "port": 4196}),
    ("lis200+tcp://10.0.0.9:8000?timeout=2.5&session_timeout=30&tz=Europe/Berlin",
     {"protocol": "lis200", "timeout": 2.5, "session_timeout": 30.0, "timezone": "Europe/Berlin"}),
    ("iec62056-21+serial:///dev/ttyS0?max_baud=2400&switch_delay=0.25&wakeup=1&retries=2",
     {"max_baud": 2400, "switch_delay": 0.25, "wakeup": True, "retries": 2}),
])
def test_parse_meter_url(url, fields):
    target = parse_meter_url(url)
    for name, value in fields.items():
        assert getattr(target, name) == value, name


def test_serial_defaults():
    iec = parse_meter_url("iec62056-21+serial:///dev/ttyUSB0")
    assert (iec.serial.baudrate, iec.serial.bytesize, iec.serial.parity, iec.serial.stopbits) == (300, 7, "E", 1)
    rtu = parse_meter_url("modbus+rtu:///dev/ttyUSB0?baud=9600")
    assert str(rtu.serial) == "9600 8N1"


@pytest.mark.parametrize("url,key,fragment", [
    ("dlsm+tcp://h:1", "url", "did you mean 'dlms+tcp'"),
    ("ftp://h:1", "url", "unsupported scheme"),
    ("modbus+tpc://h:1", "url", "did you mean 'modbus+tcp'"),
    ("modbus+tcp://h:1?device=3", "url.device", "did you mean 'device_id'"),
    ("modbus+tcp://h:1?device_id=300", "url.device_id", "between 0 and 255"),
    ("iec62056-21+tcp://h", "url", "needs a port"),
    ("iec62056-21+serial://", "url", "device path"),
    ("iec62056-21+tcp://h:1?address=ab!c", "url.address", "printable"),
    ("iec62056-21+tcp://h:1?baud=1234", "url.baud", "one of"),
    ("lis200+tcp://h:1?tz=Mars/Base", "url.tz", "time zone"),
    ("modbus+tcp://h:1?timeout=-1", "url.timeout", "positive"),
    ("modbus+tcp://h:1?device_id=1&device_id=2", "url.device_id", "twice"),
])
def test_bad_urls_name_the_key(url, key, fragment):
    with pytest.raises(ConfigError) as info:
        parse_meter_url(url)
    assert info.value.key == key
    assert fragment in info.value.reason


def test_password_is_masked_everywhere():
    target = parse_meter_url("iec62056-21+tcp://h:1?address=1&password=hunter2")
    for text in (repr(target), str(target), target.url, f"{target}"):
        assert "hunter2" not in text
    assert "***" in repr(target) and target.password == "hunter2"
    assert "hunter2" in target.to_url(include_secret=True)
    separate = parse_meter_url("lis200+tcp://h:1", secret="s3cret")
    assert separate.password == "s3cret" and "s3cret" not in repr(separate)
    assert parse_meter_url("lis200+tcp://h:1").with_secret("k").password == "k"
    with pytest.raises(ConfigError) as info:
        parse_meter_url("iec62056-21+tcp://h:1?password=hunter2&password=x")
    assert "hunter2" not in str(info.value)
    # equality ignores the secret: the same meter stays the same meter when its key rotates
    assert separate == parse_meter_url("lis200+tcp://h:1", secret="other")


def test_url_round_trip():
    for url in ("modbus+tcp://127.0.0.1:1502?device_id=7&type=eastron_sdm630",
                "iec62056-21+tcp://127.0.0.1:4001?address=12345678",
                "modbus+rtu:///dev/ttyUSB1?device_id=3&baud=19200&parity=E",
                "iec62056-21+tcp://gw:4001?address=1&baud=9600"):
        target = parse_meter_url(url)
        assert parse_meter_url(target.url) == target


def test_session_log_overlaps_with_grace():
    from utilitarian_sim.sessions import SessionLog
    now = {"t": 0.0}
    log = SessionLog(clock=lambda: now["t"])
    # a: 0-1, b: 0.99-2 (overlap 10 ms: a late close), c: 3-5 and d: 3.5-4 (real overlap)
    events = [(0.0, "s"), (0.99, "s"), (1.0, "e"), (2.0, "e"), (3.0, "s"), (3.5, "s"), (4.0, "e"), (5.0, "e")]
    for t, kind in events:
        now["t"] = t
        (log.started if kind == "s" else log.ended)("gw")
    assert log.peak_concurrency("gw") == 2
    pairs = log.overlaps("gw", grace=0.05)
    assert [(a.start, b.start) for a, b in pairs] == [(3.0, 3.5)]
    assert len(log.overlaps("gw", grace=0.0)) == 2
