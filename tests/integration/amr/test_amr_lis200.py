"""LIS-200 execution environment against the simulated EK260: values, archives in partial blocks,
clock and locks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from utilitarian.amr.environments import run_task_call
from utilitarian.amr.errors import BadTaskCall, MeterAuthenticationError, MeterUnsupported
from utilitarian_sim import IecSimulator, SimIecMeter
from utilitarian_sim.lis200_meter import HISTORY_ROWS
from utilitarian.amr.target import parse_meter_url

EK = dict(dialect="lis200", manufacturer="Els", ident="EK260")


def call(sim, meter, name, kwargs, *, secret=None, now=None, tz="UTC"):
    target = parse_meter_url(sim.url(meter) + f"&timeout=1&tz={tz}",
                             secret=meter.password if secret is None else secret)
    return run_task_call("generic_lis200", name, target, kwargs, now=now or datetime.now(timezone.utc))


def test_read_single_value():
    meter = SimIecMeter("1", values={"2:300.0": "0012345.6789*m3"}, **EK)
    with IecSimulator([meter]) as sim:
        (reading,) = call(sim, meter, "read_single_value", {"address": "2:300.0", "series": "vb"}).readings
        with pytest.raises(MeterUnsupported, match="#0001"):
            call(sim, meter, "read_single_value", {"address": "9:999.0"})
        with pytest.raises(MeterUnsupported, match="not numeric"):
            call(sim, meter, "read_single_value", {"address": "1:400.0"})
    assert (reading.series, reading.value, reading.unit) == ("vb", "12345.6789", "m3")


def test_archive_by_date_in_partial_blocks_with_local_time():
    # A zone without DST (and with a half-hour offset) keeps hourly rows exactly an hour apart.
    meter = SimIecMeter("1", timezone="Asia/Kolkata", **EK)
    with IecSimulator([meter]) as sim:
        model = sim.model(meter)
        # Rows are hourly in device time; ask for five of them, three rows per partial block.
        first = model.archive_start.replace(tzinfo=model.meter_clock.tz) + timedelta(hours=10)
        result = call(sim, meter, "read_archive_by_date",
                      {"start": first.isoformat(), "end": (first + timedelta(hours=4)).isoformat(),
                       "rows_per_block": 3, "series": {"2:300": "volume_base", "4:300": "volume"}},
                      tz="Asia/Kolkata")
    stamps = sorted({r.timestamp for r in result.readings})
    assert len(stamps) == 5 and stamps[0] == first.astimezone(timezone.utc)
    assert all(b - a == timedelta(hours=1) for a, b in zip(stamps, stamps[1:]))
    assert {r.series for r in result.readings} == {"volume_base", "volume"}
    base = [float(r.value) for r in sorted(result.readings, key=lambda r: r.timestamp)
            if r.series == "volume_base"]
    assert base == sorted(base) and base[-1] > base[0]          # a counter only grows
    assert result.events == ()


def test_archive_by_offset_and_naive_start():
    meter = SimIecMeter("1", **EK)
    with IecSimulator([meter]) as sim:
        recent = call(sim, meter, "read_archive_by_offset_seconds", {"offset_seconds": 3 * 3600})
        everything = call(sim, meter, "read_archive_by_date", {"start": "2000-01-01T00:00:00"})
        future = call(sim, meter, "read_archive_by_date", {"start": "2100-01-01T00:00:00"})
    assert 3 <= len({r.timestamp for r in recent.readings}) <= 4
    # HISTORY_ROWS before the start hour plus the start hour (one more if an hour began meanwhile)
    assert len({r.timestamp for r in everything.readings}) in (HISTORY_ROWS + 1, HISTORY_ROWS + 2)
    # Without a series map, columns with units are kept under their source address.
    assert {r.series for r in everything.readings} == {"2:300", "4:300", "7:310", "6:310"}
    assert future.readings == ()                                 # #0104: nothing in range


def test_set_time_opens_and_closes_the_customer_lock():
    meter = SimIecMeter("1", password="4711", clock_offset=600, **EK)
    with IecSimulator([meter]) as sim:
        result = call(sim, meter, "set_time", {"allowed_drift_seconds": 30})
        model = sim.model(meter)
        assert abs(model.meter_clock.offset) < 3 and model.locks == {"supplier": False, "customer": False}
        assert call(sim, meter, "set_time", {"allowed_drift_seconds": 30}).events == ()
    assert [e.title for e in result.events] == ["Time adjusted"]
    assert "ahead" in result.events[0].content


def test_set_time_lock_failures():
    meter = SimIecMeter("1", password="4711", clock_offset=600, **EK)
    with IecSimulator([meter]) as sim:
        with pytest.raises(MeterAuthenticationError, match="lock key refused") as info:
            call(sim, meter, "set_time", {}, secret="1234")
        assert "1234" not in str(info.value) and "4711" not in str(info.value)
        with pytest.raises(MeterAuthenticationError, match="needs the customer lock key"):
            call(sim, meter, "set_time", {}, secret="")
        with pytest.raises(BadTaskCall, match="must be one of supplier, customer"):
            call(sim, meter, "set_time", {"lock": "landlord"})
        assert sim.model(meter).writes == []
