"""Modbus connection reuse against pymodbus's own server (the fleet simulator): polls share
connections per gateway, a connection is discarded after any fault, stale pooled connections are
replaced without failing the poll, idle ones are closed, can_block and serial lines are never
pooled, and a forked child never touches its parent's pool. The simulator's session records are
the evidence of what happened on the wire."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest

from utilitarian.amr.errors import MeterError, MeterProtocolError, MeterTimeout, MeterUnreachable
from utilitarian.amr.meter_types import load_builtin_meter_types
from utilitarian.amr.model import (AmrTask, AmrTaskGroup, MeterDevice, MeterDeviceConfig, MeterEntry,
                                   NetworkInterface)
from utilitarian.amr.protocols.modbus import ModbusSession, read_meter
from utilitarian.amr.protocols.modbus_pool import ConnectionPool, Endpoint, process_pool
from utilitarian_sim import Faults, ModbusFleetSimulator, SimModbusMeter
from utilitarian.amr.target import parse_meter_url
from utilitarian.amr.tasks.execute import _target

NOW = datetime(2024, 1, 5, 12, 0, 30, tzinfo=timezone.utc)
SDM120 = load_builtin_meter_types()["eastron_sdm120"]
SERIES = ["active_energy_import", "active_energy_export"]   # adjacent: one request per poll
PINNED = {"active_energy_import": "1234.5", "active_energy_export": "6.25"}


def meter(device_id: int, gateway: int = 0, **faults) -> SimModbusMeter:
    return SimModbusMeter(device_id, "eastron_sdm120", gateway=gateway, values=PINNED,
                          faults=Faults(**faults))


def target_of(sim, m, *, reuse=True, timeout=0.5):
    target = parse_meter_url(sim.url(m) + f"&timeout={timeout}")
    return dataclasses.replace(target, reuse_connection=reuse)


def poll(sim, m, pool, **kwargs):
    result = read_meter(target_of(sim, m, **kwargs), SDM120, series=SERIES, now=NOW, pool=pool)
    assert {r.series: r.value for r in result.readings} == PINNED
    return result


def wait_for(predicate, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def pool():
    p = ConnectionPool()
    yield p
    p.close()


def test_sequential_and_parallel_polls_reuse_connections(pool):
    meters = [meter(i + 1, gateway=i % 2) for i in range(10)]
    with ModbusFleetSimulator(meters, gateways=2) as sim:
        # Given two gateways, when 20 polls run one after another
        for _ in range(2):
            for m in meters:
                poll(sim, m, pool)
        # Then each gateway saw one connection, still open in the pool
        for gateway in range(2):
            name = sim.gateway_name(gateway)
            assert len(sim.sessions.sessions(name)) == 1 and sim.sessions.open_count(name) == 1
        assert pool.idle_count() == 2

    slow = [meter(i + 1, latency=0.02) for i in range(8)]
    with ModbusFleetSimulator(slow) as sim:
        # When 8 threads run 40 polls on one gateway
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda m: [poll(sim, m, pool) for _ in range(5)], slow))
        # Then at most one connection per thread was opened, not one per poll
        sessions = sim.sessions.sessions(sim.gateway_name(0))
        assert 1 <= len(sessions) <= 8 < 40
        assert sim.requests == 40


@pytest.mark.parametrize("fault, error, match", [
    ("timeout", MeterTimeout, "no answer within 0.3s"),
    ("garble", MeterProtocolError, "not a valid Modbus frame"),
    ("exception", MeterProtocolError, "exception 4"),
])
def test_a_fault_discards_the_connection_and_keeps_its_typed_error(pool, fault, error, match):
    # Two meters with the same one-shot fault: one read without the pool (as before), one with it.
    meters = [meter(1), meter(2, script=(fault,)), meter(3, script=(fault,))]
    with ModbusFleetSimulator(meters) as sim:
        gateway = sim.gateway_name(0)
        with pytest.raises(MeterError) as unpooled:
            read_meter(target_of(sim, meters[1], reuse=False, timeout=0.3), SDM120, series=SERIES)
        poll(sim, meters[0], pool, timeout=0.3)         # the pool now holds a proven connection
        before = len(sim.sessions.sessions(gateway))
        # When the pooled connection carries the faulty answer
        with pytest.raises(MeterError) as pooled:
            read_meter(target_of(sim, meters[2], timeout=0.3), SDM120, series=SERIES, pool=pool)
        # Then the error is the one an unpooled poll gets, the connection is gone on both sides...
        assert type(pooled.value) is type(unpooled.value) is error
        assert match in str(pooled.value)
        assert str(pooled.value) == str(unpooled.value).replace("device 2 ", "device 3 ")
        assert pool.idle_count() == 0
        wait_for(lambda: sim.sessions.open_count(gateway) == 0, what="the server to see the close")
        # ...and the next poll is correct, on a new connection
        poll(sim, meters[0], pool, timeout=0.3)
        assert len(sim.sessions.sessions(gateway)) == before + 1


def test_connection_lost_on_first_use_is_retried_once_on_a_new_one(pool):
    meters = [meter(1), meter(2, script=("disconnect",)), meter(3, script=("disconnect", "disconnect")),
              meter(4, script=("disconnect",))]
    with ModbusFleetSimulator(meters) as sim:
        gateway = sim.gateway_name(0)
        # Given a fresh connection (empty pool): a drop is the meter's failure, not retried
        with pytest.raises(MeterUnreachable, match="connection lost"):
            poll(sim, meters[3], pool)
        poll(sim, meters[0], pool)
        # When a reused connection is dropped under its first request
        poll(sim, meters[1], pool)
        # Then the poll succeeded on a second connection, which went back to the pool
        assert len(sim.sessions.sessions(gateway)) == 3 and pool.idle_count() == 1
        # And a meter that drops the retry too fails as it always did
        with pytest.raises(MeterUnreachable, match="connection lost"):
            poll(sim, meters[2], pool)
        assert pool.idle_count() == 0


def drop_all_connections(sim) -> None:
    """What a gateway with an idle timeout does: close every client connection from its side."""
    async def drop():
        for server in sim._servers:
            for handler in list(server.active_connections.values()):
                handler.transport.close()   # asyncio's close: the session log records the end
    asyncio.run_coroutine_threadsafe(drop(), sim._loop).result(5)


def test_gateway_closing_idle_connections_does_not_fail_polls(pool):
    meters = [meter(i + 1, latency=0.05) for i in range(3)]
    with ModbusFleetSimulator(meters) as sim:
        gateway = sim.gateway_name(0)
        with ThreadPoolExecutor(3) as ex:
            list(ex.map(lambda m: poll(sim, m, pool), meters))
        assert pool.idle_count() == 3
        # Given the gateway closed all three idle connections
        drop_all_connections(sim)
        wait_for(lambda: sim.sessions.open_count(gateway) == 0, what="the gateway to close them")
        # When polls come again, one after another, then none fails:
        poll(sim, meters[0], pool)
        # the checkout's peek saw all three closed (none was tried), so one new connection is left
        assert pool.idle_count() == 1
        for m in meters[1:]:
            poll(sim, m, pool)
        assert len(sim.sessions.sessions(gateway)) == 4 and pool.idle_count() == 1


def test_idle_connections_are_closed_and_the_cap_holds():
    clock = {"now": 1000.0}
    pool = ConnectionPool(idle_timeout=30.0, max_idle_per_endpoint=2, clock=lambda: clock["now"])
    meters = [meter(i + 1, latency=0.1) for i in range(5)]
    try:
        with ModbusFleetSimulator(meters) as sim:
            gateway = sim.gateway_name(0)
            # Given 5 parallel polls on one gateway and a cap of 2 idle connections
            barrier = threading.Barrier(5)
            with ThreadPoolExecutor(5) as ex:
                list(ex.map(lambda m: (barrier.wait(), poll(sim, m, pool)), meters))
            # Then 5 connections were opened, 2 are kept and 3 were closed
            assert len(sim.sessions.sessions(gateway)) == 5 and pool.idle_count() == 2
            wait_for(lambda: sim.sessions.open_count(gateway) == 2, what="3 closes")
            # When the clock passes the idle timeout, then a checkout connects anew
            clock["now"] += 31
            assert pool.checkout(Endpoint.of(target_of(sim, meters[0]))) is None
            wait_for(lambda: sim.sessions.open_count(gateway) == 0, what="expired ones closed")
            # And the sweep the reaper runs closes idle connections without any poll coming
            poll(sim, meters[0], pool)
            assert pool.close_idle(now=clock["now"] + 29) == clock["now"] + 30
            assert pool.idle_count() == 1
            assert pool.close_idle(now=clock["now"] + 31) is None and pool.idle_count() == 0
            wait_for(lambda: sim.sessions.open_count(gateway) == 0, what="the sweep's close")
    finally:
        pool.close()


def test_real_idle_timeout_reaper():
    pool = ConnectionPool(idle_timeout=0.2)
    try:
        with ModbusFleetSimulator([meter(1)]) as sim:
            poll(sim, sim.meters[0], pool)
            assert pool.idle_count() == 1
            wait_for(lambda: sim.sessions.open_count(sim.gateway_name(0)) == 0, what="the reaper")
            assert pool.idle_count() == 0
            poll(sim, sim.meters[0], pool)   # and a new reaper starts with the next connection
            wait_for(lambda: pool.idle_count() == 0, what="the second reaper")
    finally:
        pool.close()


def device_on(url: str, *, can_block: bool) -> MeterDevice:
    return MeterDevice("m", url, "generic_modbus", "eastron_sdm120", MeterDeviceConfig("c"),
                       interface=NetworkInterface("127.0.0.1", 1, can_block=can_block, id=1))


def test_can_block_interface_keeps_one_session_per_job():
    meters = [meter(1), meter(2)]
    with ModbusFleetSimulator(meters) as sim:
        gateway = sim.gateway_name(0)
        # Given the task's own target mapping for a can_block interface
        targets = [_target(device_on(sim.url(m), can_block=True)) for m in meters]
        assert not any(t.reuse_connection for t in targets)
        # When it polls 4 times through the process pool
        for t in targets * 2:
            read_meter(t, SDM120, series=SERIES, now=NOW)
            # Then each poll's connection is closed when it returns, before the next job
            wait_for(lambda: sim.sessions.open_count(gateway) == 0, what="the session to end")
        assert len(sim.sessions.sessions(gateway)) == 4 and sim.sessions.peak_concurrency(gateway) == 1
        assert process_pool().idle_count() == 0
        # The same meters on an interface without can_block share one connection
        shared = [_target(device_on(sim.url(m), can_block=False)) for m in meters]
        assert all(t.reuse_connection for t in shared)
        for t in shared * 2:
            read_meter(t, SDM120, series=SERIES, now=NOW)
        assert len(sim.sessions.sessions(gateway)) == 5
        process_pool().close()


def fds_open_on(path: str) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == path
        except OSError:
            pass
    return count


def test_serial_lines_are_never_pooled(pool):
    with ModbusFleetSimulator([meter(1)], transport="pty") as sim:
        target = target_of(sim, sim.meters[0], timeout=1.0)
        assert target.transport == "serial" and target.reuse_connection
        assert ModbusSession(target, pool=pool).pool is None
        held_by_simulator = fds_open_on(sim.devices[0])
        for _ in range(2):
            result = read_meter(target, SDM120, series=SERIES, pool=pool)
            assert {r.series: r.value for r in result.readings} == PINNED
            # The line is released after every poll: only the simulator's own ends stay open
            assert fds_open_on(sim.devices[0]) == held_by_simulator
        assert pool.idle_count() == 0


def test_forked_child_never_uses_the_parents_pool():
    with ModbusFleetSimulator([meter(1)]) as sim:
        gateway = sim.gateway_name(0)
        target = target_of(sim, sim.meters[0])
        parent_pool = process_pool()
        read_meter(target, SDM120, series=SERIES, now=NOW)
        assert parent_pool.idle_count() == 1
        pid = os.fork()
        if pid == 0:   # the child: report through the exit code, never return into pytest
            code = 1
            try:
                code = 2
                assert parent_pool.checkout(Endpoint.of(target)) is None
                code = 3
                child_pool = process_pool()
                assert child_pool is not parent_pool and child_pool.idle_count() == 0
                code = 4
                read_meter(target, SDM120, series=SERIES, now=NOW)
                assert child_pool.idle_count() == 1
                child_pool.close()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The child connected on its own (2 sessions) and closed it; the parent's stays open and
        # serves the parent's next poll.
        wait_for(lambda: sim.sessions.open_count(gateway) == 1, what="the child's close")
        read_meter(target, SDM120, series=SERIES, now=NOW)
        assert len(sim.sessions.sessions(gateway)) == 2 and parent_pool.idle_count() == 1
        parent_pool.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    from support.amr_harness import create_pg_database, drop_pg_database
    from utilitarian.amr.store import open_store

    if request.param == "sqlite":
        url, name = f"sqlite:///{tmp_path / 'store.sqlite3'}", None
    else:
        url, name = create_pg_database()
    s = open_store(url, pool_size=2)
    s.migrate()
    yield s
    s.close()
    if name:
        drop_pg_database(name)


def test_a_rounds_jobs_take_turns_over_interfaces(store):
    # Given meters sorted by name all on one gateway, then the next (as `simulate` numbers them)
    layout = {"m1": 5020, "m2": 5020, "m3": 5020, "m4": 5021, "m5": 5021, "m6": 5022}
    entries = [MeterEntry(MeterDevice(name, f"modbus+tcp://127.0.0.1:{port}?device_id=1",
                                      "generic_modbus", "sdm120", MeterDeviceConfig("sdm120/UTC"),
                                      NetworkInterface("127.0.0.1", port), "eastron_sdm120"),
                          {"voltage": "V"}, groups=("g",))
               for name, port in layout.items()]
    store.import_registry(entries, tasks=[AmrTask("read", "daily", "read_values", "generic_modbus")],
                          groups=[AmrTaskGroup("g", ("read",))])
    # Then dispatch sends one job per gateway in turn, so the polls in flight at any moment (and
    # the pooled connections) are spread over all gateways instead of piling onto the first
    order = [meter for meter, _, _ in store.jobs_for_schedule("daily")]
    assert order == ["m1", "m4", "m6", "m2", "m5", "m3"]
