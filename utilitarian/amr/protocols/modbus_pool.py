"""Open Modbus connections (`new_connection`: our own MBAP reads for Modbus TCP, pymodbus's sync
clients for RTU over TCP and serial lines) and the per-process pool that keeps TCP ones open
between polls (`ConnectionPool`, `process_pool()`), keyed by gateway endpoint.

The pool only stores and hands out connections; when one may be reused is decided by the session
(protocols/modbus.py): it returns a connection after a clean poll and closes it after any error.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import threading
import time
from typing import Callable, NamedTuple

from utilitarian.amr.target import MeterTarget

log = logging.getLogger(__name__)

# Seconds a pooled connection may sit unused before it is closed. Short on purpose: polls of one
# round reach a gateway every few milliseconds, while an idle connection holds one of the few
# TCP slots many gateways have (4-32) against other worker processes.
IDLE_TIMEOUT = 5.0
# Idle connections kept per endpoint and process; a poll finding none connects as before, and a
# connection returned to a full endpoint is closed. A few dozen: dispatch spreads a round's polls
# over the interfaces, so a process rarely has more than a handful in flight per gateway, and a
# real gateway has few TCP slots to spare.
MAX_IDLE_PER_ENDPOINT = 32
# Idle connections kept per process on descriptors below 1024, all endpoints together; the least
# recently used of them is closed to make room. pymodbus's sync client waits with select(), which
# fails for a file descriptor above 1023 (the poll then reports "connection lost"): 100 pooled
# connections on each of 10 gateways pushed every new socket of a process past it, and 3 polls in
# 4 failed. Our own MBAP connections sit above that range (mbap.py) and count only against
# MAX_IDLE_TOTAL: at 256 for all, 400 polls in flight per process on 30 gateways reconnected one
# poll in six (bench/amr_poll_cpu.py, 1,410 connects for 6,000 polls; 425 now) and most returns
# scanned every endpoint's list for the oldest connection.
MAX_IDLE_LOW = 256
# Idle connections kept per process in all: each holds a descriptor, so at most a quarter of the
# process's limit (RLIMIT_NOFILE; at the usual 1024 that is MAX_IDLE_LOW, as before).
MAX_IDLE_TOTAL = max(MAX_IDLE_LOW, min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4))

# recv flags for the liveness peek; MSG_DONTWAIT where the platform has it (the socket is
# non-blocking anyway once pymodbus has read from it).
_PEEK = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)

# Forks this process descends from since import (counted in the child, see the end of this
# module): a pool belongs to the generation that created it. Cheaper than comparing getpid(), a
# system call, on every checkout and checkin.
_forks = [0]


class Endpoint(NamedTuple):
    """What makes two TCP connections interchangeable: the same gateway, framing and client settings.
    A tuple: built, hashed and compared in C on every checkout and checkin (a frozen dataclass
    spent ~4 us of a poll on its __init__, __hash__ and __eq__)."""

    transport: str          # "tcp" (Modbus TCP framing) or "rtu-over-tcp"
    host: str
    port: int
    timeout: float
    retries: int

    @classmethod
    def of(cls, target: MeterTarget) -> Endpoint:
        return cls(target.transport, target.host or "", target.port or 0, target.timeout, target.retries)


def new_connection(target: MeterTarget):
    """A connection (not connected yet) for the target's transport."""
    if target.transport == "tcp":
        from utilitarian.amr.protocols.mbap import MbapConnection

        return MbapConnection(target, Endpoint.of(target))
    return ModbusConnection(target)


class ModbusConnection:
    """One pymodbus sync client plus what a session needs to know about its byte stream; `read`
    raises the exceptions of mbap.py, like MbapConnection. pymodbus clients are not thread-safe:
    one session uses a connection at a time."""

    low_fd = True  # pymodbus waits with select(): its sockets must stay below 1024 (the pool counts them)

    def __init__(self, target: MeterTarget):
        self.endpoint = Endpoint.of(target) if target.transport != "serial" else None
        self.client = _make_client(target, self._trace_packet)
        self.received = False   # bytes seen since the last request (tells garbage from silence)
        self.last_used = 0.0    # pool clock when it was last returned

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self.received = False
        elif data:
            self.received = True
        return data

    def connect(self) -> bool:
        return bool(self.client.connect())

    def close(self) -> None:
        self.client.close()

    @property
    def sock(self):
        return getattr(self.client, "socket", None)

    def read(self, function: int, address: int, count: int, device_id: int) -> list[int]:
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        from utilitarian.amr.protocols import mbap

        read = self.client.read_holding_registers if function == 3 else self.client.read_input_registers
        try:
            response = read(address, count=count, device_id=device_id)
        except ModbusIOException:
            raise (mbap.Garbled() if self.received else mbap.NoAnswer()) from None
        except ConnectionException:
            raise mbap.ConnectionLost("connection lost") from None
        except ModbusException as exc:
            raise mbap.MalformedAnswer(str(exc)) from None
        except OSError as exc:
            raise mbap.ConnectionLost(str(exc.strerror or exc)) from None
        except Exception as exc:
            # pymodbus decoding bytes we do not control: whatever it trips over is the meter's
            # malformed answer as far as the caller is concerned.
            log.debug("pymodbus failed on an answer", exc_info=True)
            raise mbap.MalformedAnswer(f"malformed answer ({type(exc).__name__})") from None
        if response.isError():
            raise mbap.ExceptionAnswer(getattr(response, "exception_code", 0))
        return list(getattr(response, "registers", []) or [])

    def looks_alive(self) -> bool:
        """False when the gateway closed the connection while it was idle, or sent bytes nobody
        asked for (a late answer): either way it must not carry the next request."""
        sock = self.sock
        if sock is None:
            return False
        try:
            sock.recv(1, _PEEK)
        except BlockingIOError:
            return True     # nothing to read: open and quiet
        except OSError:
            return False    # reset by the peer
        return False        # b"" (closed by the gateway) or unsolicited bytes


def _make_client(target: MeterTarget, trace_packet: Callable[[bool, bytes], bytes]):
    from pymodbus import FramerType
    from pymodbus.client import ModbusSerialClient, ModbusTcpClient
    common = {"timeout": target.timeout, "retries": target.retries, "trace_packet": trace_packet}
    if target.transport == "tcp":
        return ModbusTcpClient(target.host, port=target.port, **common)
    if target.transport == "rtu-over-tcp":
        return ModbusTcpClient(target.host, port=target.port, framer=FramerType.RTU, **common)
    s = target.serial
    return ModbusSerialClient(target.device, baudrate=s.baudrate, bytesize=s.bytesize,
                              parity=s.parity, stopbits=s.stopbits, **common)


class ConnectionPool:
    """Idle TCP connections per endpoint, most recently used first (so surplus ones age out), at
    most `max_idle_per_endpoint` per endpoint, `max_idle_total` in all and `max_idle_low` of those
    on descriptors select() can take (a connection's `low_fd`).

    A daemon reaper thread closes connections idle for `idle_timeout` seconds; it runs only while
    the pool holds something. A pool belongs to the process that created it: in a forked child
    every method refuses to touch it (its lock may have been held by a thread that no longer exists).
    """

    def __init__(self, *, idle_timeout: float = IDLE_TIMEOUT,
                 max_idle_per_endpoint: int = MAX_IDLE_PER_ENDPOINT,
                 max_idle_total: int = MAX_IDLE_TOTAL,
                 max_idle_low: int = MAX_IDLE_LOW,
                 clock: Callable[[], float] = time.monotonic):
        self.idle_timeout = idle_timeout
        self.max_idle_per_endpoint = max_idle_per_endpoint
        self.max_idle_total = max_idle_total
        self.max_idle_low = max_idle_low
        self.clock = clock
        self.forks = _forks[0]  # this process's generation: getpid() is a system call per check
        self._lock = threading.Lock()
        self._idle: dict[Endpoint, list[ModbusConnection]] = {}
        self._total = 0     # connections in all the lists of _idle
        self._low = 0       # those of them with low_fd
        self._reaper: threading.Thread | None = None
        self._wake = threading.Event()
        self.closed = False

    def _owned(self) -> bool:
        return self.forks == _forks[0] and not self.closed

    def checkout(self, endpoint: Endpoint) -> ModbusConnection | None:
        """An idle connection to `endpoint` that still looks alive, or None (connect a new one)."""
        if not self._owned():
            return None
        while True:
            stale: list[ModbusConnection] = []
            found = None
            now = self.clock()
            with self._lock:
                idle = self._idle.get(endpoint)
                if idle:
                    found = idle.pop()
                    self._forget(found)
                    if now - found.last_used > self.idle_timeout:
                        # The newest is past its time, so all older ones are too.
                        stale, found = [found, *idle], None
                        for conn in idle:
                            self._forget(conn)
                        idle.clear()
            # The peek and the closes are syscalls: done outside the lock.
            for conn in stale:
                conn.close()
            if found is None:
                return None
            if found.looks_alive():
                return found
            log.debug("pooled connection to %s:%s was closed by the gateway; trying the next",
                      endpoint.host, endpoint.port)
            found.close()

    def checkin(self, conn: ModbusConnection) -> None:
        """Keep a connection that just finished a clean poll. It is closed instead when its
        endpoint is full; when the whole pool is, the least recently used one makes room."""
        endpoint = conn.endpoint
        if endpoint is None or not self._owned():
            conn.close()
            return
        conn.last_used = self.clock()
        evicted = None
        with self._lock:
            idle = self._idle.setdefault(endpoint, [])
            if len(idle) >= self.max_idle_per_endpoint:
                evicted = conn
            else:
                low = conn.low_fd
                if low and self._low >= self.max_idle_low:
                    evicted = self._pop_least_recent(low_only=True)
                elif self._total >= self.max_idle_total:
                    evicted = self._pop_least_recent(low_only=False)
                idle.append(conn)
                self._total += 1
                self._low += low
                if self._reaper is None:
                    self._reaper = threading.Thread(target=self._reap, name="modbus-pool-reaper",
                                                    daemon=True)
                    self._reaper.start()
        if evicted is not None:
            evicted.close()

    def _forget(self, conn) -> None:
        # Under the lock: `conn` left the lists.
        self._total -= 1
        self._low -= conn.low_fd

    def _pop_least_recent(self, *, low_only: bool) -> ModbusConnection | None:
        # Under the lock. Each list is oldest first, so the oldest overall heads one of them (the
        # oldest low one is the first low one of a list).
        oldest = None
        for idle in self._idle.values():
            for i, conn in enumerate(idle):
                if not low_only or conn.low_fd:
                    if oldest is None or conn.last_used < oldest[0].last_used:
                        oldest = (conn, idle, i)
                    break
        if oldest is None:
            return None
        conn, idle, i = oldest
        del idle[i]
        self._forget(conn)
        return conn

    def idle_count(self, endpoint: Endpoint | None = None) -> int:
        with self._lock:
            if endpoint is not None:
                return len(self._idle.get(endpoint, ()))
            return self._total

    def close_idle(self, now: float | None = None) -> float | None:
        """Close connections idle longer than `idle_timeout`; returns when the next one is due
        (pool clock), or None when the pool is empty."""
        if not self._owned():
            return None
        now = self.clock() if now is None else now
        expired: list[ModbusConnection] = []
        next_due = None
        with self._lock:
            for endpoint, idle in list(self._idle.items()):
                # Oldest first: the list is appended to on checkin, popped from the end on checkout.
                keep = 0
                while keep < len(idle) and now - idle[keep].last_used > self.idle_timeout:
                    keep += 1
                expired.extend(idle[:keep])
                for conn in idle[:keep]:
                    self._forget(conn)
                del idle[:keep]
                if idle:
                    due = idle[0].last_used + self.idle_timeout
                    next_due = due if next_due is None else min(next_due, due)
                else:
                    del self._idle[endpoint]
        for conn in expired:
            conn.close()
        return next_due

    def _reap(self) -> None:
        try:
            while not self.closed:
                next_due = self.close_idle()
                with self._lock:
                    if next_due is None and not self._idle:
                        self._reaper = None   # the next checkin starts a new one
                        return
                wait = max(0.05, (next_due or self.clock()) - self.clock())
                self._wake.wait(wait)
        except Exception:  # a dying reaper must say why; the pool still works without it
            log.exception("Modbus pool reaper failed; idle connections stay open until the next "
                          "poll of their endpoint finds them expired")
            with self._lock:
                self._reaper = None

    def close(self) -> None:
        """Close every idle connection and stop the reaper (connections out on a poll are closed
        when they come back)."""
        if self.forks != _forks[0]:
            return
        self.closed = True
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
            self._total = self._low = 0
        self._wake.set()
        for conn in conns:
            conn.close()

    def abandon_after_fork(self) -> None:
        """In a forked child: close this process's copies of the inherited sockets without taking
        the lock. Only closes file descriptors (no shutdown), so the parent's connections stay up;
        keeping the copies would stop the parent's later close from reaching the gateway."""
        self.closed = True
        for idle in list(self._idle.values()):
            for conn in list(idle):
                sock = conn.sock
                if sock is not None:
                    sock.close()


_pool: ConnectionPool | None = None
_pool_lock = threading.Lock()


def process_pool() -> ConnectionPool:
    """This process's pool, created on first use (and anew in a forked child)."""
    global _pool
    pool = _pool
    if pool is not None and pool.forks == _forks[0] and not pool.closed:
        return pool
    with _pool_lock:
        if _pool is None or _pool.forks != _forks[0] or _pool.closed:
            _pool = ConnectionPool()
        return _pool


def _forget_pool_in_child() -> None:
    # Runs in the child right after fork, while it has a single thread: nothing can race it.
    global _pool, _pool_lock
    _forks[0] += 1
    inherited, _pool, _pool_lock = _pool, None, threading.Lock()
    if inherited is not None:
        inherited.abandon_after_fork()


os.register_at_fork(after_in_child=_forget_pool_in_child)
