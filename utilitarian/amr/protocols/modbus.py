"""Modbus client over pymodbus 3.x sync clients: TCP, RTU on a serial line, RTU framed over TCP.

pymodbus exceptions and exception responses are translated here, at the boundary, into MeterError
subclasses; nothing from pymodbus leaks to callers.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Callable, Sequence

from utilitarian.amr.errors import (MeterError, MeterProtocolError, MeterTimeout, MeterUnreachable,
                                    MeterUnsupported)
from utilitarian.amr.meter_types import MeterType
from utilitarian.amr.protocols.modbus_codec import ReadBlock, decode_block, plan_reads
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
    """One connection to one Modbus device; use as a context manager.

    Every request is bounded by `target.timeout` and the whole session by `target.session_timeout`.
    After a timeout the connection is dropped, so a late answer cannot be taken for the next one.
    """

    def __init__(self, target: MeterTarget, *, clock: Callable[[], float] = time.monotonic):
        if target.protocol != "modbus":
            raise MeterUnsupported(f"{target}: not a Modbus target")
        self.target = target
        self.clock = clock
        self.deadline = clock() + target.session_timeout
        self.device_id = target.device_id if target.device_id is not None else 1
        self._client = None
        self._received = False  # bytes seen since the last request (tells garbage from silence)

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self._received = False
        elif data:
            self._received = True
        return data

    def _make_client(self):
        from pymodbus import FramerType
        from pymodbus.client import ModbusSerialClient, ModbusTcpClient
        t = self.target
        common = {"timeout": t.timeout, "retries": t.retries, "trace_packet": self._trace_packet}
        if t.transport == "tcp":
            return ModbusTcpClient(t.host, port=t.port, **common)
        if t.transport == "rtu-over-tcp":
            return ModbusTcpClient(t.host, port=t.port, framer=FramerType.RTU, **common)
        s = t.serial
        return ModbusSerialClient(t.device, baudrate=s.baudrate, bytesize=s.bytesize,
                                  parity=s.parity, stopbits=s.stopbits, **common)

    def __enter__(self) -> ModbusSession:
        self.open()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def open(self) -> None:
        self._client = self._make_client()
        try:
            connected = self._client.connect()
        except Exception as exc:  # pyserial raises its own types for a missing device
            raise MeterUnreachable(f"{self.target.interface}: cannot connect ({exc})") from None
        if not connected:
            self._client = None
            raise MeterUnreachable(f"{self.target.interface}: cannot connect")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def read_block(self, block: ReadBlock) -> list[int]:
        """Execute one read request and return its registers, or raise a MeterError."""
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
        where = (f"{self.target.interface} device {self.device_id} "
                 f"function {block.function} address {block.address} count {block.count}")
        if self.clock() > self.deadline:
            raise MeterTimeout(f"{where}: session timeout {self.target.session_timeout:g}s reached")
        if self._client is None:
            self.open()
        read = (self._client.read_holding_registers if block.function == 3
                else self._client.read_input_registers)
        try:
            response = read(block.address, count=block.count, device_id=self.device_id)
        except ModbusIOException:
            garbled = self._received
            self.close()
            if garbled:
                raise MeterProtocolError(f"{where}: answer was not a valid Modbus frame") from None
            raise MeterTimeout(f"{where}: no answer within {self.target.timeout:g}s") from None
        except ConnectionException:
            self.close()
            raise MeterUnreachable(f"{where}: connection lost") from None
        except ModbusException as exc:
            self.close()
            raise MeterProtocolError(f"{where}: {exc}") from None
        except OSError as exc:
            self.close()
            raise MeterUnreachable(f"{where}: {exc.strerror or exc}") from None
        except Exception as exc:
            # pymodbus decoding bytes we do not control: whatever it trips over is the meter's
            # malformed answer as far as the caller is concerned.
            log.debug("pymodbus failed on an answer from %s", where, exc_info=True)
            self.close()
            raise MeterProtocolError(f"{where}: malformed answer ({type(exc).__name__})") from None
        if response.isError():
            raise exception_error(getattr(response, "exception_code", 0), where)
        registers = list(getattr(response, "registers", []) or [])
        if len(registers) < block.count:
            raise MeterProtocolError(f"{where}: answer holds {len(registers)} registers")
        return registers[:block.count]


def read_meter(target: MeterTarget, meter_type: MeterType, *, series: Sequence[str] | None = None,
               now: datetime | None = None,
               clock: Callable[[], float] = time.monotonic) -> PollResult:
    """Read every register of `meter_type` (or only `series`) in merged requests."""
    specs = meter_type.registers
    if series is not None:
        wanted = set(series)
        specs = tuple(s for s in specs if s.series in wanted)
    blocks = plan_reads(specs, max_count=meter_type.max_registers_per_read,
                        max_gap=meter_type.max_gap)
    timestamp = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    readings: list[Reading] = []
    events: list[SystemEvent] = []
    with ModbusSession(target, clock=clock) as session:
        for block in blocks:
            values = decode_block(block, session.read_block(block))
            for spec, value in values.items():
                if value is None:
                    events.append(SystemEvent.truncated(
                        "Invalid register value",
                        f"{spec.series} at {spec.address} is NaN or infinite; no reading stored"))
                    continue
                readings.append(Reading(spec.series, timestamp, value, spec.unit))
    log.debug("read %d values from %s in %d requests", len(readings), target.interface, len(blocks))
    return PollResult(tuple(readings), tuple(events))
