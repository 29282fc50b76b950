"""IEC 62056-21 load profile (R5 P.01, and the P.98 event log) through generic_iec6205621 against
the simulated meter: one reading per channel and interval at its own instant, across the autumn
DST switch (season digit), with a gap, flagged intervals and a clock adjustment as events."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings, strategies as st

from utilitarian.amr.environments import run_task_call
from utilitarian.amr.errors import MeterError
from utilitarian.amr.protocols.iec_datasets import parse_data_lines
from utilitarian.amr.protocols.iec_load_profile import parse_load_profile, profile_to_result
from utilitarian.amr.target import parse_meter_url
from utilitarian_sim import IecSimulator, SimIecMeter
from zoneinfo import ZoneInfo

UTC = timezone.utc


def test_profile_across_the_autumn_switch_with_a_gap_and_flags():
    # Meter clock at 2025-10-26 03:10 UTC (04:10 CET): the profile covers the repeated 02:xx hour.
    at = datetime(2025, 10, 26, 3, 10, tzinfo=UTC)
    meter = SimIecMeter("1", timezone="Europe/Stockholm", clock_offset=at.timestamp() - time.time(),
                        profile_missing=("2025-10-25T22:00:00Z", "2025-10-25T22:15:00Z"),
                        profile_status={"2025-10-25T23:30:00Z": 0x80, "2025-10-26T02:00:00Z": 0x20})
    with IecSimulator([meter]) as sim:
        target = parse_meter_url(sim.url(meter) + "&timeout=2&tz=Europe/Stockholm")
        result = run_task_call("generic_iec6205621", "read_load_profile", target,
                               {"start_date": "2025-10-25T21:00:00Z", "end_date": "2025-10-26T03:00:00Z",
                                "event_log": True})
    stamps = sorted({r.timestamp for r in result.readings})
    expected = [datetime(2025, 10, 25, 21, tzinfo=UTC) + timedelta(minutes=15 * i) for i in range(25)]
    expected = [s for s in expected if s not in (datetime(2025, 10, 25, 22, tzinfo=UTC),
                                                 datetime(2025, 10, 25, 22, 15, tzinfo=UTC))]
    assert stamps == expected                              # both 02:xx hours kept apart, gap left empty
    assert len(result.readings) == 2 * len(expected)       # two channels per interval
    titles = [e.title for e in result.events]
    assert titles.count("Load profile gap") == 1 and "2 intervals missing" in result.events[titles.index("Load profile gap")].content
    status = result.events[titles.index("Load profile status")].content
    assert "2025-10-25T23:30Z power failure" in status and "clock adjusted" in status
    assert titles.count("Meter log") == 2 and "Load profile clock change" in titles


def test_profile_by_offset_and_unsupported_profile():
    meter = SimIecMeter("1", clock_offset=-3600)
    with IecSimulator([meter]) as sim:
        target = parse_meter_url(sim.url(meter) + "&timeout=2")
        result = run_task_call("generic_iec6205621", "read_load_profile_by_offset_seconds", target,
                               {"offset_seconds": 3600})
        device_now = sim.model(meter).meter_clock.now().astimezone(UTC)
        try:
            run_task_call("generic_iec6205621", "read_load_profile", target,
                          {"start_date": "2025-01-01T00:00:00Z", "profile": 2})
            raised = None
        except MeterError as exc:
            raised = exc
    stamps = sorted({r.timestamp for r in result.readings})
    assert 4 <= len(stamps) <= 5 and all(device_now - timedelta(hours=1, minutes=1) <= s <= device_now for s in stamps)
    assert raised is not None and raised.kind == "unsupported"


_LINE = st.text(alphabet="P.0189()*;:kWhxyz \t-", max_size=60)


@settings(max_examples=400, deadline=None)
@given(st.lists(_LINE, max_size=8))
def test_arbitrary_profile_text_gives_readings_or_a_typed_error(lines):
    try:
        parsed = parse_load_profile(parse_data_lines("\r\n".join(lines).encode("ascii")))
        result = profile_to_result(parsed, ZoneInfo("Europe/Stockholm"))
    except MeterError:
        return
    keys = [(r.series, r.timestamp) for r in result.readings]
    assert len(keys) == len(set(keys))


def test_malformed_headers_are_typed_errors():
    for text in ("P.01(1251301000000)(00)(15)(1)(1.8.0)(kWh)\r\n(1)",      # month 13
                 "P.01(1250101000000)(00)(15)(2)(1.8.0)(kWh)\r\n(1)",      # 2 channels, 1 code
                 "(1.0)(2.0)",                                              # values before a header
                 "P.01(1250101000000)(ZZ)(15)(1)(1.8.0)(kWh)\r\n(1)"):     # status not hex
        try:
            parse_load_profile(parse_data_lines(text.encode("ascii")))
        except MeterError as exc:
            assert exc.kind == "protocol"
        else:
            raise AssertionError(f"accepted {text!r}")
