"""IEC 62056-21 execution environment against the simulator over TCP: readout, programming-mode
reads, set_time, faults, RS-485-style buses, battery wake-up."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

import pytest

from utilitarian.amr.environments import run_task_call
from utilitarian.amr.errors import (BadTaskCall, MeterAuthenticationError, MeterChecksumError,
                                    MeterProtocolError, MeterTimeout, MeterUnreachable)
from utilitarian.amr.protocols.iec62056_21 import Iec62056Session
from utilitarian_sim import Faults, IecSimulator, SimIecMeter
from utilitarian.amr.target import parse_meter_url


def target(sim, meter, **params):
    query = "".join(f"&{k}={v}" for k, v in {"timeout": "1", **params}.items())
    return parse_meter_url(sim.url(meter) + query, secret=meter.password)


def call(sim, meter, name="readout", kwargs=None, **params):
    return run_task_call("generic_iec6205621", name, target(sim, meter, **params), kwargs or {},
                         now=datetime.now(timezone.utc))


def test_readout_readings_and_error_register_event():
    meters = [SimIecMeter("11111111"), SimIecMeter("22222222", error_register="00000010")]
    with IecSimulator(meters) as sim:
        clean = call(sim, meters[0])
        alarm = call(sim, meters[1])
    series = [r.series for r in clean.readings]
    assert series[:4] == ["1.8.0", "1.8.1", "1.8.2", "2.8.0"] and "1-0:1.8.0*255" in series
    assert "0.0.0" not in series and "F.F" not in series           # ids and status are not readings
    assert {r.unit for r in clean.readings if r.series == "1.8.0"} == {"kWh"}
    assert clean.events == ()
    assert [e.title for e in alarm.events] == ["Error register F.F != 0"]
    assert "00000010" in alarm.events[0].content


def test_readout_address_filter_and_bus_addressing():
    # Two meters on one port: the request's address selects the meter, as on RS-485.
    meters = [SimIecMeter("11111111"), SimIecMeter("22222222", values={"1.8.0": "0000042.000*kWh"})]
    with IecSimulator(meters) as sim:
        assert sim.url(meters[0]).split("?")[0] == sim.url(meters[1]).split("?")[0]
        first = call(sim, meters[0], kwargs={"addresses": ["1.8.0"]})
        second = call(sim, meters[1], kwargs={"addresses": ["1.8.0", "0.0.0"]})
        entries = sim.meter_entries()
    assert {r.series: r.value for r in second.readings} == {"1.8.0": "42.000", "0.0.0": "22222222"}
    assert first.readings[0].value != "42.000"
    assert all(e["can_block"] for e in entries)  # a shared line: one conversation at a time


def test_read_values_with_password_and_unknown_address():
    meter = SimIecMeter("12345678", password="s3cret")
    with IecSimulator([meter]) as sim:
        result = call(sim, meter, "read_values", {"addresses": ["1.8.0", "9.9.9", "0.9.1"]})
    assert [r.series for r in result.readings] == ["1.8.0"]   # 0.9.1 is a time, not a number
    assert [e.title for e in result.events] == ["Address not readable"]


def test_set_time_adjusts_a_drifting_clock():
    meter = SimIecMeter("12345678", password="s3cret", clock_offset=-125.0, timezone="Europe/Stockholm")
    with IecSimulator([meter]) as sim:
        kwargs = {"allowed_drift_seconds": 10}
        adjusted = call(sim, meter, "set_time", kwargs, tz="Europe/Stockholm")
        offset_after = sim.model(meter).meter_clock.offset
        again = call(sim, meter, "set_time", kwargs, tz="Europe/Stockholm")
    assert [e.title for e in adjusted.events] == ["Time adjusted"]
    # The meter clock has one-second resolution: 125 s behind reads as 125.0 .. 126.x s.
    drift = float(re.search(r"was ([0-9.]+) s", adjusted.events[0].content).group(1))
    assert 124.5 < drift < 127.0
    assert "behind" in adjusted.events[0].content
    assert abs(offset_after) < 3.0          # second resolution plus the conversation itself
    assert again.events == ()               # within the allowed drift: nothing written


def test_set_time_with_wrong_password():
    meter = SimIecMeter("12345678", password="s3cret", clock_offset=300)
    with IecSimulator([meter]) as sim:
        bad = target(sim, meter).with_secret("guess")
        with pytest.raises(MeterAuthenticationError) as info:
            run_task_call("generic_iec6205621", "set_time", bad, {})
    assert "guess" not in str(info.value) and "s3cret" not in str(info.value)
    assert sim.model(meter).writes == []


@pytest.mark.parametrize("fault,error", [
    ("bad_bcc", MeterChecksumError), ("missing_end", MeterProtocolError), ("timeout", MeterTimeout),
    ("disconnect", MeterUnreachable), ("garble", (MeterTimeout, MeterProtocolError)),
])
def test_injected_faults_become_typed_errors(fault, error):
    meter = SimIecMeter("12345678", faults=Faults(script=(fault,)))
    with IecSimulator([meter]) as sim:
        with pytest.raises(error):
            call(sim, meter, timeout="0.5")
        assert call(sim, meter).readings      # the script is used up: the meter recovers


def test_garbage_before_identification_and_nak_are_survived():
    meter = SimIecMeter("12345678", faults=Faults(script=("garbage",)))
    nak_meter = SimIecMeter("87654321", faults=Faults(script=("nak", "bad_bcc")))
    with IecSimulator([meter, nak_meter]) as sim:
        assert call(sim, meter).readings
        result = call(sim, nak_meter, "read_values", {"addresses": ["1.8.0"]})
    assert [r.series for r in result.readings] == ["1.8.0"]


def test_battery_meter_needs_the_wakeup():
    meter = SimIecMeter("12345678", battery=True)
    with IecSimulator([meter]) as sim:
        with pytest.raises(MeterTimeout):
            call(sim, meter, timeout="0.4")
        session = Iec62056Session(target(sim, meter, wakeup="1"), wakeup_duration=0.3, wakeup_pause=0.1)
        with session:
            assert session.readout().datasets


def test_unknown_call_and_kwargs_name_environment_and_call():
    meter = SimIecMeter("12345678")
    with IecSimulator([meter]) as sim:
        t = target(sim, meter)
        with pytest.raises(BadTaskCall, match=r"generic_iec6205621\.readuot.*did you mean 'readout'"):
            run_task_call("generic_iec6205621", "readuot", t, {})
        with pytest.raises(BadTaskCall, match=r"generic_iec6205621\.read_values.*'addresses'"):
            run_task_call("generic_iec6205621", "read_values", t, {})
        with pytest.raises(BadTaskCall, match="must be at least 0"):
            run_task_call("generic_iec6205621", "set_time", t, {"allowed_drift_seconds": -1})
        with pytest.raises(BadTaskCall, match="cannot drive"):
            run_task_call("generic_modbus", "read_values", t, {})
        with pytest.raises(BadTaskCall, match="unknown meter_execution_type"):
            run_task_call("generic_sml", "read", t, {})   # generic_dlms exists now


def test_session_timeout_bounds_a_silent_bus():
    meter = SimIecMeter("12345678", faults=Faults(timeout=1.0))
    with IecSimulator([meter]) as sim:
        started = time.monotonic()
        with pytest.raises(MeterTimeout):
            call(sim, meter, timeout="5", session_timeout="0.6")
        assert time.monotonic() - started < 1.5


def test_a_simulator_with_more_ports_than_select_can_watch_answers_on_all_of_them():
    """2,000 simulated gateways gave every conversation a descriptor above 1023; the simulator's
    select() refused it and every poll of the round failed with a reset. 1,100 ports reach there."""
    from utilitarian_sim import iec_meters

    meters = iec_meters(1100, gateways=1100)
    with IecSimulator(meters) as sim:
        assert len(set(sim.ports)) == 1100
        for meter in (meters[0], meters[-1]):
            result = call(sim, meter)
            assert any(r.series == "1.8.0" for r in result.readings)
