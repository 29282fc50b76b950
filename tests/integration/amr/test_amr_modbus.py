"""Modbus against pymodbus's own server (the fleet simulator): data types, word orders, scaling,
merged reads, exception responses, unknown devices, timeouts, disconnects, sessions."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utilitarian.amr.environments import run_task_call
from utilitarian.amr.errors import (BadTaskCall, MeterError, MeterProtocolError, MeterTimeout,
                                    MeterUnreachable, MeterUnsupported)
from utilitarian.amr.meter_types import load_builtin_meter_types, parse_meter_types
from utilitarian.amr.protocols.modbus import read_meter
from utilitarian_sim import Faults, ModbusFleetSimulator, SimModbusMeter
from utilitarian.amr.target import parse_meter_url

NOW = datetime(2024, 1, 5, 12, 0, 30, 123456, tzinfo=timezone.utc)

# A test map exercising what the shipped maps do not: float32 in both word orders side by side,
# float64, int64 with a scale, a little-endian byte order, and a gap between blocks.
TEST_TYPES = parse_meter_types({"test_meter": {"function": 3, "registers": [
    {"series": "f32_big", "address": 0, "data_type": "float32", "unit": "V"},
    {"series": "f32_little", "address": 2, "data_type": "float32", "word_order": "little", "unit": "V"},
    {"series": "f64", "address": 4, "data_type": "float64", "unit": "Hz"},
    {"series": "i64_scaled", "address": 8, "data_type": "int64", "scale": 0.001, "unit": "kWh"},
    {"series": "u16_bytes_swapped", "address": 12, "data_type": "uint16", "byte_order": "little"},
    {"series": "i32_far", "address": 100, "data_type": "int32", "scale": 10, "unit": "W"},
    {"series": "i16_input", "address": 0, "function": 4, "data_type": "int16"},
]}}, file="test")
PINNED = {"f32_big": "230.1", "f32_little": "-12.75", "f64": "50.0123456789", "i64_scaled":
          "-9007199254.741", "u16_bytes_swapped": "513", "i32_far": "-123450", "i16_input": "-7"}


def types():
    return {**load_builtin_meter_types(), **TEST_TYPES}


def read(sim, meter, **kwargs):
    target = parse_meter_url(sim.url(meter) + "&timeout=0.5")
    return run_task_call("generic_modbus", "read_values", target, kwargs, meter_types=types(), now=NOW)


def test_data_types_word_orders_and_scale():
    meter = SimModbusMeter(1, "test_meter", values=PINNED)
    with ModbusFleetSimulator([meter], meter_types=types()) as sim:
        result = read(sim, meter)
        device = sim._devices[(0, 1)]
        # Given 7 registers in 3 contiguous runs over two functions, the client made 3 requests
        assert device.requests == 3
    values = {r.series: r.value for r in result.readings}
    assert values == PINNED
    assert {r.timestamp for r in result.readings} == {NOW.replace(microsecond=0)}
    assert {r.series: r.unit for r in result.readings}["i64_scaled"] == "kWh"


def test_shipped_maps_read_merged():
    meters = [SimModbusMeter(1, "eastron_sdm630"), SimModbusMeter(2, "eastron_sdm120"),
              SimModbusMeter(3, "abb_b23", values={"active_energy_net": "-1234.56"})]
    with ModbusFleetSimulator(meters) as sim:
        results = {m.meter_type: read(sim, m) for m in meters}
        requests = {m.meter_type: sim._devices[(0, m.device_id)].requests for m in meters}
    for name, result in results.items():
        assert [r.series for r in result.readings] == list(load_builtin_meter_types()[name].series)
    # SDM630: 0x00-0x11, 0x34, 0x46-0x4F, 0x156-0x159 -> 4 requests for 17 values.
    assert requests["eastron_sdm630"] == 4
    assert {r.series: r.value for r in results["abb_b23"].readings}["active_energy_net"] == "-1234.56"


def test_series_filter_and_bad_kwargs():
    meter = SimModbusMeter(1, "eastron_sdm630")
    with ModbusFleetSimulator([meter]) as sim:
        result = read(sim, meter, series=["voltage_l1", "active_energy_total"])
        assert [r.series for r in result.readings] == ["voltage_l1", "active_energy_total"]
        with pytest.raises(BadTaskCall, match="generic_modbus.read_values.*voltage_l9"):
            read(sim, meter, series=["voltage_l9"])
        with pytest.raises(BadTaskCall, match="did you mean 'series'"):
            read(sim, meter, serie=["voltage_l1"])


def test_registers_advance_with_time():
    clock = {"now": 1_000_000.0}
    meter = SimModbusMeter(1, "eastron_sdm630")
    with ModbusFleetSimulator([meter], clock=lambda: clock["now"]) as sim:
        before = {r.series: float(r.value) for r in read(sim, meter).readings}
        clock["now"] += 7200
        after = {r.series: float(r.value) for r in read(sim, meter).readings}
    assert after["active_energy_import"] > before["active_energy_import"]
    assert after["voltage_l1"] == before["voltage_l1"]


def test_exception_code_2_is_unsupported():
    meter = SimModbusMeter(1, "eastron_sdm120")
    with ModbusFleetSimulator([meter]) as sim:
        # An SDM630 map against an SDM120: 0x0002 does not exist there -> illegal data address.
        target = parse_meter_url(sim.url(meter).replace("eastron_sdm120", "eastron_sdm630"))
        with pytest.raises(MeterUnsupported) as info:
            run_task_call("generic_modbus", "read_values", target, {})
    assert info.value.exception_code == 2 and not info.value.retryable


def test_injected_exception_and_busy():
    meters = [SimModbusMeter(1, "eastron_sdm120", faults=Faults(script=("exception",), exception_code=4)),
              SimModbusMeter(2, "eastron_sdm120", faults=Faults(script=("exception",), exception_code=6))]
    with ModbusFleetSimulator(meters) as sim:
        with pytest.raises(MeterProtocolError, match="exception 4"):
            read(sim, meters[0])
        with pytest.raises(MeterTimeout, match="busy"):
            read(sim, meters[1])
        assert len(read(sim, meters[1]).readings) == 12   # the script is used up: next poll is fine


def test_unknown_device_id():
    with ModbusFleetSimulator([SimModbusMeter(1, "eastron_sdm120")]) as sim:
        target = parse_meter_url(f"modbus+tcp://127.0.0.1:{sim.ports[0]}?device_id=99&type=eastron_sdm120")
        with pytest.raises(MeterUnreachable, match="exception 11"):
            run_task_call("generic_modbus", "read_values", target, {})
    with ModbusFleetSimulator([SimModbusMeter(1, "eastron_sdm120")], unknown_device="silent") as sim:
        target = parse_meter_url(f"modbus+tcp://127.0.0.1:{sim.ports[0]}?device_id=99"
                                 "&type=eastron_sdm120&timeout=0.3")
        with pytest.raises(MeterTimeout, match="no answer"):
            run_task_call("generic_modbus", "read_values", target, {})


def test_timeout_disconnect_and_garbage():
    meters = [SimModbusMeter(1, "eastron_sdm120", faults=Faults(script=("timeout",))),
              SimModbusMeter(2, "eastron_sdm120", faults=Faults(script=("disconnect",))),
              SimModbusMeter(3, "eastron_sdm120", faults=Faults(script=("garble",)))]
    with ModbusFleetSimulator(meters) as sim:
        started = time.monotonic()
        with pytest.raises(MeterTimeout) as timeout:
            read(sim, meters[0])
        assert time.monotonic() - started < 2.0 and timeout.value.retryable
        with pytest.raises(MeterUnreachable, match="connection lost"):
            read(sim, meters[1])
        with pytest.raises(MeterProtocolError, match="not a valid Modbus frame"):
            read(sim, meters[2])


def test_connection_refused():
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    target = parse_meter_url(f"modbus+tcp://127.0.0.1:{port}?type=eastron_sdm120&timeout=0.5")
    with pytest.raises(MeterUnreachable):
        run_task_call("generic_modbus", "read_values", target, {})


def test_rtu_over_tcp_gateway():
    meter = SimModbusMeter(5, "test_meter", values=PINNED)
    with ModbusFleetSimulator([meter], framer="rtu", meter_types=types()) as sim:
        assert sim.url(meter).startswith("modbus+rtu-over-tcp://")
        assert {r.series: r.value for r in read(sim, meter).readings} == PINNED


def test_gateways_latency_parallel_sessions_and_meter_list():
    # Given 2 gateways with 3 meters each and 0.2 s latency per request
    meters = [SimModbusMeter(i % 3 + 1, "eastron_sdm120", gateway=i // 3, faults=Faults(latency=0.2))
              for i in range(6)]
    with ModbusFleetSimulator(meters) as sim:
        gateway = sim.gateway_name(0)
        # When all six are polled at once (5 requests each)
        started = time.monotonic()
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda m: read(sim, m, series=["voltage", "frequency"]), meters))
        elapsed = time.monotonic() - started
        wait_until_closed(sim, gateway)
        sessions = sim.sessions.sessions(gateway)
        entries = sim.meter_entries()
    # Then latency overlapped (two requests each: ~0.4 s, far from 6 x 0.4 s in series)
    assert all(len(r.readings) == 2 for r in results)
    assert elapsed < 1.5
    assert len(sessions) == 3 and all(s.end is not None for s in sessions)
    assert sim.sessions.peak_concurrency(gateway) >= 2
    assert {e["interface"] for e in entries} == {sim.gateway_name(0), sim.gateway_name(1)}
    assert entries[0]["url"] == sim.url(meters[0]) and entries[0]["series"][0] == "voltage"


def test_sequential_sessions_never_overlap():
    meters = [SimModbusMeter(i, "eastron_sdm120") for i in (1, 2, 3)]
    with ModbusFleetSimulator(meters) as sim:
        lock = threading.Lock()

        def poll(meter):
            with lock:   # what a can_block interface guarantees
                return read(sim, meter)

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(poll, meters * 2))
        gateway = sim.gateway_name(0)
        wait_until_closed(sim, gateway)
        sessions = sim.sessions.sessions(gateway)
        overlaps = sim.sessions.overlaps(gateway)
    assert len(sessions) == 6 and overlaps == []


def wait_until_closed(sim, gateway: str) -> None:
    """The server sees the last close a moment after the client: wait (bounded) for it."""
    deadline = time.monotonic() + 5
    while sim.sessions.open_count(gateway) and time.monotonic() < deadline:
        time.sleep(0.01)


class RandomAnswers:
    """A raw TCP peer answering each Modbus request with bytes chosen by the test: either anything,
    or a well-formed MBAP header (echoing the request's transaction id) around a random PDU."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.answer = (False, b"")
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    request = conn.recv(260)
                    framed, body = self.answer
                    if framed and len(request) >= 7:
                        body = request[:4] + (len(body) + 1).to_bytes(2, "big") + request[6:7] + body
                    conn.sendall(body)
                    conn.recv(260)   # wait for the client to give up or hang up
                except OSError:
                    pass


@pytest.fixture(scope="module")
def random_peer():
    peer = RandomAnswers()
    yield peer
    peer.listener.close()


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(framed=st.booleans(), body=st.binary(max_size=40),
       data_type=st.sampled_from(["uint16", "float32", "int64"]))
def test_random_answers_only_raise_typed_errors(random_peer, framed, body, data_type):
    random_peer.answer = (framed, body)
    meter_type = parse_meter_types({"fuzz": {"function": 3, "registers": [
        {"series": "x", "address": 0, "data_type": data_type}]}}, file="fuzz")["fuzz"]
    target = parse_meter_url(f"modbus+tcp://127.0.0.1:{random_peer.port}?timeout=0.05")
    try:
        result = read_meter(target, meter_type)
    except MeterError:
        return
    assert len(result.readings) + len(result.events) == 1


def test_rtu_on_a_serial_line():
    # pymodbus's serial server on one tty of a pty pair, pyserial (via pymodbus) on the other.
    meters = [SimModbusMeter(1, "test_meter", values=PINNED),
              SimModbusMeter(2, "eastron_sdm120", faults=Faults(script=("exception",), exception_code=2))]
    with ModbusFleetSimulator(meters, transport="pty", meter_types=types()) as sim:
        url = sim.url(meters[0])
        assert url.startswith("modbus+rtu:///dev/")
        assert {r.series: r.value for r in read(sim, meters[0]).readings} == PINNED
        with pytest.raises(MeterUnsupported, match="exception 2"):
            read(sim, meters[1])
        entry = sim.meter_entries()[0]
    assert entry["can_block"] and entry["interface"] == sim.devices[0]
