"""The Modbus connection pool's bookkeeping with stand-in connections (no sockets): endpoint keys,
most-recent-first checkout, the per-endpoint cap, expiry by the injected clock, and who may pool."""

from __future__ import annotations

from utilitarian.amr.model import MeterDevice, MeterDeviceConfig, NetworkInterface
from utilitarian.amr.protocols.modbus_pool import ConnectionPool, Endpoint
from utilitarian.amr.target import parse_meter_url
from utilitarian.amr.tasks.execute import _target

GATEWAY = Endpoint.of(parse_meter_url("modbus+tcp://10.0.0.5:502?device_id=3"))


class StandIn:
    """Just what the pool touches on a connection."""

    def __init__(self, endpoint=GATEWAY, alive=True, low_fd=True):
        self.endpoint = endpoint
        self.low_fd = low_fd
        self.alive = alive
        self.closed = False
        self.last_used = 0.0

    def looks_alive(self) -> bool:
        return self.alive

    def close(self) -> None:
        self.closed = True


def test_endpoint_keys_on_gateway_framing_and_client_settings():
    same_gateway_other_device = parse_meter_url("modbus+tcp://10.0.0.5:502?device_id=9&type=abb_b23")
    assert Endpoint.of(same_gateway_other_device) == GATEWAY
    for url in ("modbus+tcp://10.0.0.5:503", "modbus+rtu-over-tcp://10.0.0.5:502",
                "modbus+tcp://10.0.0.5:502?timeout=5", "modbus+tcp://10.0.0.5:502?retries=1"):
        assert Endpoint.of(parse_meter_url(url)) != GATEWAY, url


def test_checkout_takes_the_newest_and_skips_dead_ones():
    clock = {"now": 100.0}
    pool = ConnectionPool(clock=lambda: clock["now"])
    old, dead = StandIn(), StandIn()
    pool.checkin(old)
    clock["now"] += 1
    pool.checkin(dead)
    dead.alive = False
    assert pool.checkout(GATEWAY) is old and dead.closed and not old.closed
    assert pool.checkout(GATEWAY) is None
    pool.close()


def test_cap_and_expiry():
    clock = {"now": 100.0}
    pool = ConnectionPool(idle_timeout=10.0, max_idle_per_endpoint=2, clock=lambda: clock["now"])
    conns = [StandIn() for _ in range(3)]
    for conn in conns:
        pool.checkin(conn)
    assert pool.idle_count(GATEWAY) == 2 and conns[2].closed      # over the cap: closed at once
    clock["now"] += 10.5
    assert pool.checkout(GATEWAY) is None                           # both expired, both closed
    assert conns[0].closed and conns[1].closed and pool.idle_count() == 0
    pool.close()


def test_a_full_pool_closes_its_least_recently_used_connection():
    clock = {"now": 100.0}
    pool = ConnectionPool(max_idle_total=2, clock=lambda: clock["now"])
    other = Endpoint.of(parse_meter_url("modbus+tcp://10.0.0.6:502"))
    first, second, third = StandIn(GATEWAY), StandIn(other), StandIn(GATEWAY)
    for conn in (first, second, third):
        pool.checkin(conn)
        clock["now"] += 1
    # Given room for two, the oldest (on another endpoint than the newcomer's) made room
    assert first.closed and not second.closed and not third.closed
    assert pool.idle_count() == 2 and pool.idle_count(GATEWAY) == 1
    assert pool.checkout(GATEWAY) is third and pool.checkout(other) is second
    assert pool.idle_count() == 0
    pool.close()


def test_only_connections_on_low_descriptors_count_against_the_select_cap():
    clock = {"now": 100.0}
    pool = ConnectionPool(max_idle_low=2, max_idle_total=4, clock=lambda: clock["now"])
    other = Endpoint.of(parse_meter_url("modbus+tcp://10.0.0.6:502"))
    high = [StandIn(GATEWAY, low_fd=False), StandIn(other, low_fd=False)]
    low = [StandIn(other), StandIn(GATEWAY), StandIn(other)]
    for conn in (high[0], low[0], high[1], low[1], low[2]):
        pool.checkin(conn)
        clock["now"] += 1
    # Given room for two low ones, the oldest low one made room; the older high one stays
    assert low[0].closed and not any(c.closed for c in (*high, low[1], low[2]))
    assert pool.idle_count() == 4
    # A fifth connection: the pool is full, so the oldest of any kind goes
    late = StandIn(GATEWAY, low_fd=False)
    pool.checkin(late)
    assert high[0].closed and pool.idle_count() == 4
    assert pool.checkout(GATEWAY) is late and pool.checkout(GATEWAY) is low[1]
    pool.close()


def test_closed_pool_and_serial_connections_are_not_kept():
    pool = ConnectionPool()
    serial = StandIn(endpoint=None)
    pool.checkin(serial)
    assert serial.closed and pool.idle_count() == 0
    pool.close()
    late = StandIn()
    pool.checkin(late)
    assert late.closed and pool.checkout(GATEWAY) is None


def device(url, interface):
    return MeterDevice("m", url, "generic_modbus", "eastron_sdm120", MeterDeviceConfig("c"),
                       interface=interface, meter_type="eastron_sdm120")


def test_only_the_task_asks_for_reuse_and_never_on_a_can_block_interface():
    url = "modbus+tcp://10.0.0.5:502?device_id=3"
    assert not parse_meter_url(url).reuse_connection                 # `utilitarian read`, scripts
    assert _target(device(url, NetworkInterface("10.0.0.5", 502, can_block=False))).reuse_connection
    assert _target(device(url, None)).reuse_connection
    blocked = _target(device(url, NetworkInterface("10.0.0.5", 502, can_block=True)))
    assert not blocked.reuse_connection
    assert "reuse" not in blocked.url and blocked.meter_type == "eastron_sdm120"
