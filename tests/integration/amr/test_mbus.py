"""Wired M-Bus against a simulated slave set on one bus (written from EN 13757-2/-3, its own
encoder), over a TCP M-Bus gateway and over a pty: primary and secondary addressing, multi-telegram
answers, units, and the bus's faults: collisions, garbled and missing answers, another slave
answering, slow answers.

Limits of the evidence: ptys ignore the 8E1 framing (the client's settings are asserted instead),
and the simulator's collision model (a bitwise AND of overlapping answers) is the idealised bus.
"""

from __future__ import annotations

import pytest

from utilitarian.amr.environments import run_task_call
from utilitarian.amr.errors import MeterError, MeterProtocolError, MeterTimeout
from utilitarian.amr.protocols.mbus import BusCollision, MbusSession, WrongAddress
from utilitarian.amr.target import parse_meter_url
from utilitarian_sim.faults import Faults
from utilitarian_sim.mbus_sim import MbusSimulator, SimMbusMeter

HEAT = SimMbusMeter(1, "12345678", telegrams=3, name="heat")
WATER = SimMbusMeter(2, "87654321", medium=7, name="water")


def read(sim, meter, *, secondary=False, extra="&timeout=1", kwargs=None):
    return run_task_call("generic_mbus", "read_values", parse_meter_url(sim.url(meter, secondary=secondary) + extra),
                         kwargs or {})


@pytest.mark.parametrize("transport", ["tcp", "pty"])
@pytest.mark.parametrize("secondary", [False, True])
def test_slaves_on_one_bus(transport, secondary):
    with MbusSimulator([HEAT, WATER], transport=transport) as sim:
        heat = read(sim, HEAT, secondary=secondary)
        water = read(sim, WATER, secondary=secondary)
        state = sim.state(HEAT)
    units = {r.series: r.unit for r in heat.readings}
    assert units == {"energy": "kWh", "volume": "m3", "power": "kW", "volume_flow": "m3/h",
                     "flow_temperature": "°C", "return_temperature": "°C", "temperature_difference": "K",
                     "on_time": "s", "energy@s1": "kWh"}
    assert {r.series for r in heat.readings} == set(HEAT.series) and not heat.events
    values = {r.series: r for r in heat.readings}
    assert values["energy"].value == str(state.value("energy", "kWh", 0))
    # storage 1 is stamped with its due date (the first of the month), not the poll time
    assert values["energy@s1"].timestamp.day == 1 and values["energy@s1"].timestamp.hour == 0
    assert {r.series for r in water.readings} == {"volume", "volume_flow"}
    # three telegrams for the heat meter: REQ_UD2 with FCB set, cleared, set
    assert state.requests >= 4


def test_client_line_settings_on_a_pty():
    with MbusSimulator([WATER], transport="pty") as sim:
        with MbusSession(parse_meter_url(sim.url(WATER) + "&timeout=1")) as session:
            session.read()
            port = session.transport._port
            assert (port.baudrate, port.bytesize, port.parity, port.stopbits) == (2400, 8, "E", 1)


@pytest.mark.parametrize("transport", ["tcp", "pty"])
def test_a_collision_is_repeated_then_reported_as_retryable(transport):
    once = SimMbusMeter(3, "11112222", faults=Faults(script=("ok", "collision")))
    always = SimMbusMeter(4, "11113333", faults=Faults(script=("ok",), collision=1.0))
    with MbusSimulator([once, always], transport=transport) as sim:
        assert len(read(sim, once).readings) == len(once.series)     # repeated with the same FCB
        with pytest.raises(BusCollision) as info:
            read(sim, always, extra="&timeout=1&retries=2")
    assert info.value.retryable and info.value.kind == "collision"
    assert "failed 3 time(s)" in info.value.message   # the first try and two repeats


def test_two_slaves_matching_one_selection_collide():
    with MbusSimulator([SimMbusMeter(5, "22220001"), SimMbusMeter(6, "22220002")]) as sim:
        target = parse_meter_url(sim.url(sim.meters[0]).replace("address=5", "secondary=2222FFFF") + "&timeout=1")
        with pytest.raises(BusCollision):
            run_task_call("generic_mbus", "read_values", target, {})


@pytest.mark.parametrize("transport", ["tcp", "pty"])
def test_another_slave_answering_is_a_protocol_error(transport):
    meter = SimMbusMeter(7, "33330001", faults=Faults(script=("ok", "wrong_address")))
    with MbusSimulator([meter], transport=transport) as sim:
        with pytest.raises(WrongAddress) as info:
            read(sim, meter)
    assert isinstance(info.value, MeterProtocolError) and "primary address 8" in info.value.message


def test_silence_and_noise():
    silent = SimMbusMeter(8, "44440001", faults=Faults(timeout=1.0))
    noisy = SimMbusMeter(9, "44440002", faults=Faults(script=("ok",), garble=1.0))
    with MbusSimulator([silent, noisy]) as sim:
        with pytest.raises(MeterTimeout) as info:
            read(sim, silent, extra="&timeout=0.3&retries=1")
        assert type(info.value) is MeterTimeout and "2 time(s)" in info.value.message
        with pytest.raises(MeterError) as info:
            read(sim, noisy, extra="&timeout=0.3&retries=1")
        assert info.value.retryable


def test_slow_answers():
    slow = SimMbusMeter(10, "55550001", medium=7, faults=Faults(latency=0.4))
    with MbusSimulator([slow]) as sim:
        assert len(read(sim, slow, extra="&timeout=2").readings) == 2
        with pytest.raises(MeterTimeout):
            read(sim, slow, extra="&timeout=0.1&retries=0")


def test_series_map_renames_and_filters():
    with MbusSimulator([HEAT]) as sim:
        result = read(sim, HEAT, kwargs={"series": {"energy": "heat_energy", "energy@s1": "heat_energy_due"}})
    assert sorted(r.series for r in result.readings) == ["heat_energy", "heat_energy_due"]
