"""generic_lis200 as the platform documents it: its kwargs names, "the last N seconds" by the
device's clock, and archive rows of the repeated autumn hour placed at their true instants (the
DST flag when the device gives one, the row order otherwise), against the simulated EK260."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from utilitarian.amr.environments import run_task_call, validate_task_call
from utilitarian.amr.errors import BadTaskCall
from utilitarian.amr.target import parse_meter_url
from utilitarian_sim import IecSimulator, SimIecMeter

EK = dict(dialect="lis200", manufacturer="Els", ident="EK260")
STOCKHOLM = ZoneInfo("Europe/Stockholm")
UTC = timezone.utc


def call(sim, meter, name, kwargs, tz="UTC"):
    target = parse_meter_url(sim.url(meter) + f"&timeout=2&tz={tz}", secret=meter.password)
    return run_task_call("generic_lis200", name, target, kwargs)


def offset_to(moment: datetime) -> float:
    """clock_offset that puts a simulated meter's clock at `moment` now."""
    return moment.timestamp() - time.time()


def test_the_documented_kwargs_are_accepted_and_the_old_names_are_aliases():
    # The platform's docs example for read_archive_by_date failed with "unknown kwarg 'archive_number'".
    docs = {"start_date": "2020-01-15T06:00:00+0100", "end_date": "2020-01-16T06:00:00+0100",
            "archive_number": 3, "control_position": 3}
    bound = validate_task_call("generic_lis200", "read_archive_by_date", docs)
    assert bound["archive_number"] == 3 and bound["start_date"].utcoffset() == timedelta(hours=1)
    assert validate_task_call("generic_lis200", "read_archive_by_date",
                              {"start": "2020-01-15T06:00:00", "archive": 4})["archive_number"] == 4
    offset = {"offset_seconds": 1000, "archive_number": 3, "control_position": 3}
    assert validate_task_call("generic_lis200", "read_archive_by_offset_seconds", offset)
    assert validate_task_call("generic_lis200", "set_time", {})["allowed_drift_seconds"] == 10.0
    with pytest.raises(BadTaskCall, match="given twice"):
        validate_task_call("generic_lis200", "read_archive_by_date",
                           {"start_date": "2020-01-15T06:00:00", "start": "2020-01-15T06:00:00"})
    with pytest.raises(BadTaskCall, match="missing required kwarg 'start_date'"):
        validate_task_call("generic_lis200", "read_archive_by_date", {"archive_number": 3})


def test_archive_by_date_with_the_documented_kwargs():
    meter = SimIecMeter("1", **EK)
    with IecSimulator([meter]) as sim:
        first = sim.model(meter).archive_start_utc + timedelta(hours=5)
        result = call(sim, meter, "read_archive_by_date",
                      {"start_date": first.isoformat(), "end_date": (first + timedelta(hours=2)).isoformat(),
                       "archive_number": 3, "control_position": 3})
    assert sorted({r.timestamp for r in result.readings}) == [first + timedelta(hours=h) for h in range(3)]
    assert {r.series for r in result.readings} == {"2:300", "4:300", "7:310", "6:310"}


def test_offset_seconds_count_back_from_the_device_clock():
    # The device's clock runs 2 h behind ours: the last 3 h by its clock are rows we would miss
    # if the range were counted from our clock.
    meter = SimIecMeter("1", clock_offset=-7200, **EK)
    with IecSimulator([meter]) as sim:
        device_now = sim.model(meter).meter_clock.now().astimezone(UTC)
        result = call(sim, meter, "read_archive_by_offset_seconds",
                      {"offset_seconds": 3 * 3600, "archive_number": 3, "control_position": 3})
    stamps = sorted({r.timestamp for r in result.readings})
    assert 3 <= len(stamps) <= 4
    assert all(device_now - timedelta(hours=3, minutes=1) <= s <= device_now for s in stamps)


@pytest.mark.parametrize("dst_flag", [False, True], ids=["row-order", "dst-flag"])
def test_autumn_repeated_hour_rows_keep_their_own_instants(dst_flag):
    # 2025-10-26 03:00 CEST -> 02:00 CET: the rows of 00:00Z and 01:00Z are both stamped
    # "2025-10-26,02:00:00" by the device. Before: both parsed as the first one and collided.
    meter = SimIecMeter("1", timezone="Europe/Stockholm", dst_flag=dst_flag,
                        clock_offset=offset_to(datetime(2025, 10, 26, 4, 30, tzinfo=UTC)), **EK)
    with IecSimulator([meter]) as sim:
        result = call(sim, meter, "read_archive_by_date",
                      {"start_date": "2025-10-25T22:00:00", "end_date": "2025-10-26T05:00:00",
                       "series": {"2:300": "vb"}}, tz="Europe/Stockholm")
    stamps = [r.timestamp for r in result.readings]
    assert len(stamps) == len(set(stamps)) == 9       # 22:00 CEST .. 05:00 CET: 9 hourly rows
    assert sorted(stamps) == [datetime(2025, 10, 25, 20, tzinfo=UTC) + timedelta(hours=h) for h in range(9)]
    assert result.events == ()


def test_spring_forward_rows_are_an_hour_apart():
    # 2025-03-30 02:00 CET -> 03:00 CEST: local 02:xx does not exist; rows stay an hour apart.
    meter = SimIecMeter("1", timezone="Europe/Stockholm",
                        clock_offset=offset_to(datetime(2025, 3, 30, 4, 30, tzinfo=UTC)), **EK)
    with IecSimulator([meter]) as sim:
        result = call(sim, meter, "read_archive_by_date",
                      {"start_date": "2025-03-29T23:00:00", "series": {"2:300": "vb"}}, tz="Europe/Stockholm")
    stamps = sorted(r.timestamp for r in result.readings)
    assert stamps[0] == datetime(2025, 3, 29, 22, tzinfo=UTC)
    assert all(b - a == timedelta(hours=1) for a, b in zip(stamps, stamps[1:])) and len(stamps) >= 6


def test_set_time_goes_by_the_true_clock_not_the_slot_stamp():
    # A scheduled job stamps readings with its slot (`now`); run 10 minutes after the slot, it set
    # a correct meter clock 10 minutes back, because set_time took `now` for the true time.
    meter = SimIecMeter("1", password="4711", **EK)
    with IecSimulator([meter]) as sim:
        target = parse_meter_url(sim.url(meter) + "&timeout=2", secret="4711")
        slot = datetime.now(UTC) - timedelta(minutes=10)
        result = run_task_call("generic_lis200", "set_time", target, {"allowed_drift_seconds": 30}, now=slot)
        assert result.events == () and sim.model(meter).writes == []
        assert abs(sim.model(meter).meter_clock.offset) < 1
