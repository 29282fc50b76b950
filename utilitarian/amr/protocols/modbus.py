"""Modbus client over pymodbus 3.x sync clients: TCP, RTU on a serial line, RTU framed over TCP.

pymodbus exceptions and exception responses are translated here, at the boundary, into MeterError
subclasses; nothing from pymodbus leaks to callers.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Callable, Sequence

from utilitarian import steps
from utilitarian.amr.errors import (MeterError, MeterProtocolError, MeterTimeout, MeterUnreachable,
                                    MeterUnsupported)
from utilitarian.amr.meter_types import MeterType
from utilitarian.amr.protocols.modbus_codec import ReadBlock, decode_block, plan_reads
from utilitarian.amr.protocols import mbap
from utilitarian.amr.protocols.modbus_pool import ConnectionPool, Endpoint, new_connection, process_pool
from utilitarian.amr.readings import PollResult, Reading, SystemEvent
from utilitarian.amr.target import MeterTarget

log = logging.getLogger(__name__)

# Exception codes (Modbus Application Protocol V1.1b3, section 7) -> (error class, meaning).
# Busy/acknowledge and the gateway codes are transient; the rest means the map does not fit the meter.
EXCEPTION_CODES: dict[int, tuple[type[MeterError], str]] = {
    1: (MeterUnsupported, "illegal function"),
    2: (MeterUnsupported, "illegal data address"),
    3: (MeterUnsupported, "illegal data value"),
    4: (MeterProtocolError, "server device failure"),
    5: (MeterTimeout, "acknowledge (request accepted, still processing)"),
    6: (MeterTimeout, "server device busy"),
    8: (MeterProtocolError, "memory parity error"),
    10: (MeterUnreachable, "gateway path unavailable"),
    11: (MeterUnreachable, "gateway target device failed to respond"),
}


def exception_error(code: int, where: str) -> MeterError:
    cls, meaning = EXCEPTION_CODES.get(code, (MeterProtocolError, "unknown exception code"))
    error = cls(f"{where}: Modbus exception {code} ({meaning})")
    error.exception_code = code  # type: ignore[attr-defined]
    return error


class ModbusSession:
    """One conversation with one Modbus device; use as a context manager.

    Every request is bounded by `target.timeout` and the whole session by `target.session_timeout`.
    After a timeout the connection is dropped, so a late answer cannot be taken for the next one.
    With a `pool`, the connection comes from it and goes back after a session that ended without
    an error; after any error it is closed, so a half-read stream never serves the next poll.
    """

    def __init__(self, target: MeterTarget, *, clock: Callable[[], float] = time.monotonic,
                 pool: ConnectionPool | None = None):
        if target.protocol != "modbus":
            raise MeterUnsupported(f"{target}: not a Modbus target")
        self.target = target
        self.clock = clock
        self.deadline = clock() + target.session_timeout
        self.device_id = target.device_id if target.device_id is not None else 1
        self.pool = pool if target.transport != "serial" else None
        self._conn = None  # modbus_pool.ModbusConnection or mbap.MbapConnection
        # The connection came from the pool and has not answered in this session yet: losing it
        # on the first request most likely means the gateway closed it while it was idle.
        self._maybe_stale = False

    def __enter__(self) -> ModbusSession:
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.release()
        else:
            self.close()

    def open(self) -> None:
        conn = self.pool.checkout(Endpoint.of(self.target)) if self.pool is not None else None
        if conn is not None:
            self._conn, self._maybe_stale = conn, True
            return
        self._connect()

    def _connect(self) -> None:
        conn = new_connection(self.target)
        try:
            connected = conn.connect()
        except Exception as exc:  # pyserial raises its own types for a missing device
            raise MeterUnreachable(f"{self.target.interface}: cannot connect ({exc})") from None
        if not connected:
            raise MeterUnreachable(f"{self.target.interface}: cannot connect")
        self._conn, self._maybe_stale = conn, False

    def close(self) -> None:
        """Close the connection (after an error, or without a pool)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def release(self) -> None:
        """End a clean session: the connection goes back to the pool, or is closed without one."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self.pool is None:
            conn.close()
            return
        self.pool.checkin(conn)

    def read_block(self, block: ReadBlock) -> list[int]:
        """Execute one read request and return its registers, or raise a MeterError."""
        return steps.drive(self.read_block_steps(block))

    def read_block_steps(self, block: ReadBlock) -> steps.Steps:
        """`read_block`, yielding its waits (steps.Readable) when the session has a pool and the
        connection is our own MBAP one; otherwise it waits in this thread, without yielding."""
        if self.clock() > self.deadline:
            raise MeterTimeout(f"{self._where(block)}: session timeout {self.target.session_timeout:g}s reached")
        if self._conn is None:
            self.open()
        try:
            response = yield from self._request(block)
        except _ConnectionLost as lost:
            if not self._maybe_stale:
                raise MeterUnreachable(f"{self._where(block)}: {lost}") from None
            # Once, on a new connection: the gateway may have closed the pooled one just as it
            # was taken (the liveness peek at checkout catches the closes that came earlier).
            log.debug("pooled connection to %s lost on first use (%s); retrying on a new one",
                      self.target.interface, lost)
            self._connect()
            try:
                response = yield from self._request(block)
            except _ConnectionLost as again:
                raise MeterUnreachable(f"{self._where(block)}: {again}") from None
        self._maybe_stale = False
        registers = response
        if len(registers) < block.count:
            raise MeterProtocolError(f"{self._where(block)}: answer holds {len(registers)} registers")
        return registers[:block.count]

    def _where(self, block: ReadBlock) -> str:
        """The request, for error messages (built only for one: every poll makes requests)."""
        return (f"{self.target.interface} device {self.device_id} "
                f"function {block.function} address {block.address} count {block.count}")

    def _request(self, block: ReadBlock) -> steps.Steps:
        """One read on the connection, its failures translated; a lost connection is
        `_ConnectionLost` so that read_block can tell a stale pooled connection from a meter that
        hung up. After any failure but an exception answer the connection is closed."""
        conn = self._conn
        try:
            if self.pool is not None and hasattr(conn, "read_steps"):
                # Pooled MBAP: the poll gives up its thread while the answer travels. Sessions on
                # a can_block interface (no pool) and pymodbus's framings keep the thread.
                return (yield from conn.read_steps(block.function, block.address, block.count, self.device_id))
            return conn.read(block.function, block.address, block.count, self.device_id)
        except mbap.ExceptionAnswer as answer:
            raise exception_error(answer.code, self._where(block)) from None
        except mbap.NoAnswer:
            self.close()
            raise MeterTimeout(f"{self._where(block)}: no answer within {self.target.timeout:g}s") from None
        except mbap.Garbled:
            self.close()
            raise MeterProtocolError(f"{self._where(block)}: answer was not a valid Modbus frame") from None
        except mbap.ConnectionLost as exc:
            self.close()
            raise _ConnectionLost(str(exc)) from None
        except mbap.MalformedAnswer as exc:
            self.close()
            raise MeterProtocolError(f"{self._where(block)}: {exc}") from None


class _ConnectionLost(Exception):
    """Internal: the connection broke under a request (becomes MeterUnreachable in read_block)."""


# A meter type's requests by the series asked, kept per MeterType object (with the object, so its
# id is not reused meanwhile): every poll of a round asks for the same few plans.
_PLANS: dict[tuple, tuple[MeterType, tuple[ReadBlock, ...]]] = {}
_PLANS_KEPT = 1000


def _plan(meter_type: MeterType, series: Sequence[str] | None) -> tuple[ReadBlock, ...]:
    key = (id(meter_type), None if series is None else tuple(series))
    hit = _PLANS.get(key)
    if hit is not None and hit[0] is meter_type:
        return hit[1]
    specs = meter_type.registers
    if series is not None:
        wanted = set(series)
        specs = tuple(s for s in specs if s.series in wanted)
    blocks = tuple(plan_reads(specs, max_count=meter_type.max_registers_per_read, max_gap=meter_type.max_gap))
    if len(_PLANS) >= _PLANS_KEPT:
        _PLANS.clear()
    _PLANS[key] = (meter_type, blocks)
    return blocks


def read_meter(target: MeterTarget, meter_type: MeterType, *, series: Sequence[str] | None = None,
               now: datetime | None = None, clock: Callable[[], float] = time.monotonic,
               pool: ConnectionPool | None = None) -> PollResult:
    """`read_meter_steps`, waiting in this thread."""
    return steps.drive(read_meter_steps(target, meter_type, series=series, now=now, clock=clock, pool=pool))


def read_meter_steps(target: MeterTarget, meter_type: MeterType, *, series: Sequence[str] | None = None,
                     now: datetime | None = None, clock: Callable[[], float] = time.monotonic,
                     pool: ConnectionPool | None = None) -> steps.Steps:
    """Read every register of `meter_type` (or only `series`) in merged requests; a stepwise
    function (steps.py) that yields its waits on pooled connections.

    The connection is kept for later polls (in `pool`, default this process's) only when the
    target says its interface carries parallel sessions (`reuse_connection`) and is not serial.
    """
    blocks = _plan(meter_type, series)
    timestamp = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    readings: list[Reading] = []
    events: list[SystemEvent] = []
    if target.reuse_connection and target.transport != "serial":
        pool = pool if pool is not None else process_pool()
    else:
        pool = None
    with ModbusSession(target, clock=clock, pool=pool) as session:
        for block in blocks:
            for spec, value in decode_block(block, (yield from session.read_block_steps(block))):
                if value is None:
                    events.append(SystemEvent.truncated(
                        "Invalid register value",
                        f"{spec.series} at {spec.address} is NaN or infinite; no reading stored"))
                    continue
                readings.append(Reading(spec.series, timestamp, value, spec.unit))
    log.debug("read %d values from %s in %d requests", len(readings), target.interface, len(blocks))
    return PollResult(tuple(readings), tuple(events))
