"""A fleet of simulated Modbus meters on pymodbus's own TCP server, many device ids per gateway port.

The pymodbus server is asyncio; it runs in a thread with its own loop. Latency is an `await` inside
the device action, so one gateway serves any number of concurrent clients in parallel.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Callable, Mapping, Sequence

from utilitarian.amr.meter_types import MeterType, RegisterSpec, load_builtin_meter_types
from utilitarian.amr.protocols.modbus_codec import encode_register
from utilitarian_sim.faults import FaultInjector, Faults
from utilitarian_sim.sessions import SessionLog
from utilitarian_sim.values import simulated_value

log = logging.getLogger(__name__)

# How long a "timeout" fault holds the answer back: longer than any sane client timeout; the task
# is cancelled when the simulator stops.
TIMEOUT_HOLD = 120.0


class SimulatedDisconnect(Exception):
    """Raised inside the server's receive path: asyncio then aborts that one connection."""


@dataclass(frozen=True)
class SimModbusMeter:
    """One simulated device: `device_id` on gateway number `gateway`, registers of `meter_type`.
    `values` pins series to fixed values (Decimal strings); the others advance with time."""

    device_id: int
    meter_type: str
    gateway: int = 0
    values: Mapping[str, str] = field(default_factory=dict)
    faults: Faults = Faults()
    name: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.device_id <= 247:
            raise ValueError("device_id must be between 1 and 247")


class _Device:
    """Runtime state of one simulated meter; `action` is pymodbus's per-access hook."""

    def __init__(self, meter: SimModbusMeter, meter_type: MeterType, started: float,
                 clock: Callable[[], float]):
        self.meter = meter
        self.specs = meter_type.registers
        self.started = started
        self.clock = clock
        self.injector = FaultInjector(meter.faults, seed_offset=meter.device_id * 1000 + meter.gateway)
        self.requests = 0

    def registers_for(self, spec: RegisterSpec) -> list[int]:
        pinned = self.meter.values.get(spec.series)
        if pinned is not None:
            return encode_register(spec, Decimal(pinned))
        quantum = spec.scale if spec.data_type not in ("float32", "float64") else Decimal("0.01")
        value = simulated_value(self.meter.device_id + 1000 * self.meter.gateway, spec.series,
                                spec.unit, self.clock() - self.started, quantum=quantum)
        return encode_register(spec, value)

    async def action(self, function_code, start_address, address, count, registers, set_values):
        from pymodbus.constants import ExcCodes
        self.requests += 1
        faults = self.meter.faults
        if faults.latency:
            await asyncio.sleep(faults.latency)
        fault = self.injector.pick(("timeout", "exception"))
        if fault == "timeout":
            await asyncio.sleep(TIMEOUT_HOLD)
        if fault == "exception":
            return ExcCodes(faults.exception_code)
        if set_values is None:
            end = address + count
            for spec in self.specs:
                if (spec.function == function_code and spec.address < end
                        and spec.address + spec.count > address):
                    offset = spec.address - start_address
                    registers[offset:offset + spec.count] = self.registers_for(spec)
        return None


class ModbusFleetSimulator:
    """Simulated meters behind `gateways` TCP ports. Use as a context manager or start()/stop().

    unknown_device: "gateway_error" answers exception 0x0B (what serial gateways do when no device
    answers), "silent" never answers. framer: "socket" (Modbus TCP) or "rtu" (RTU over TCP).
    transport "pty": each gateway is an RS-485 line instead, a pty pair with pymodbus's serial
    server (RTU, 9600 8N1) on one end and `devices[i]` for clients on the other.
    """

    def __init__(self, meters: Sequence[SimModbusMeter], *, gateways: int = 1,
                 host: str = "127.0.0.1", ports: Sequence[int] | None = None,
                 meter_types: Mapping[str, MeterType] | None = None,
                 unknown_device: str = "gateway_error", framer: str = "socket",
                 gateway_faults: Faults = Faults(), transport: str = "tcp",
                 clock: Callable[[], float] = time.time):
        if unknown_device not in ("gateway_error", "silent"):
            raise ValueError("unknown_device must be 'gateway_error' or 'silent'")
        if framer not in ("socket", "rtu"):
            raise ValueError("framer must be 'socket' or 'rtu'")
        if transport not in ("tcp", "pty"):
            raise ValueError("transport must be 'tcp' or 'pty'")
        types = dict(meter_types) if meter_types is not None else load_builtin_meter_types()
        self.gateways = max([gateways, *(m.gateway + 1 for m in meters)])
        if ports is not None and len(ports) != self.gateways:
            raise ValueError("give one port per gateway")
        seen: set[tuple[int, int]] = set()
        for meter in meters:
            if meter.meter_type not in types:
                raise ValueError(f"unknown meter type {meter.meter_type!r}")
            if (meter.gateway, meter.device_id) in seen:
                raise ValueError(f"device id {meter.device_id} twice on gateway {meter.gateway}")
            seen.add((meter.gateway, meter.device_id))
        self.meters = tuple(meters)
        self.meter_types = types
        self.host = host
        self.transport = transport
        self.framer = "rtu" if transport == "pty" else framer
        self.unknown_device = unknown_device
        self.gateway_faults = gateway_faults
        self.clock = clock
        self.sessions = SessionLog(clock)
        self.ports: list[int] = []
        self.devices: list[str] = []   # client ends of the pty lines (transport "pty")
        self._pairs: list = []
        self._wanted_ports = list(ports) if ports is not None else [0] * self.gateways
        self._devices: dict[tuple[int, int], _Device] = {}
        self._gateway_injectors = [FaultInjector(gateway_faults, seed_offset=i)
                                   for i in range(self.gateways)]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list = []
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.requests = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> ModbusFleetSimulator:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> None:
        # 120 s: building 10,000 meters took 6 CPU-seconds, 40 s at load 12 on a 2-CPU machine.
        self._thread = threading.Thread(target=self._run, name="modbus-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("Modbus simulator did not start in time")
        if self._error is not None:
            raise RuntimeError(f"Modbus simulator failed to start: {self._error}") from self._error

    def stop(self, timeout: float = 10.0) -> None:
        loop = self._loop
        if loop is None or not loop.is_running():
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError:  # a starved machine: stop the loop all the same
            log.warning("Modbus simulator's servers did not close within %.0fs; stopping its loop", timeout)
        finally:
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:  # its thread ended (and closed the loop) meanwhile
                pass
            if self._thread is not None:
                self._thread.join(timeout)
            for pair in self._pairs:
                pair.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        loop.set_exception_handler(self._on_loop_error)
        try:
            loop.run_until_complete(self._start_servers())
        except BaseException as exc:  # surfaced to start() in the caller's thread
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    @staticmethod
    def _on_loop_error(loop, context) -> None:
        if isinstance(context.get("exception"), SimulatedDisconnect):
            return  # the injected fault did what it should: the connection was aborted
        loop.default_exception_handler(context)

    async def _start_servers(self) -> None:
        from pymodbus import FramerType
        from pymodbus.server import ModbusSerialServer, ModbusTcpServer
        from utilitarian_sim.pty_pair import PtyPair
        started = self.clock()
        for index in range(self.gateways):
            devices = [self._catch_all_device()]
            for meter in self.meters:
                if meter.gateway == index:
                    devices.append(self._sim_device(meter, started))
            framer = FramerType.SOCKET if self.framer == "socket" else FramerType.RTU
            hooks = {"trace_packet": partial(self._trace_packet, index),
                     "trace_connect": partial(self._trace_connect, index)}
            if self.transport == "pty":
                pair = PtyPair()
                pair.start()
                self._pairs.append(pair)
                self.devices.append(pair.client_path)
                server = ModbusSerialServer(devices, framer=framer, port=pair.server_path,
                                            baudrate=9600, **hooks)
                await server.serve_forever(background=True)
                self._servers.append(server)
                continue
            server = ModbusTcpServer(devices, framer=framer,
                                     address=(self.host, self._wanted_ports[index]), **hooks)
            await server.serve_forever(background=True)
            self._servers.append(server)
            # pymodbus keeps the asyncio Server as `transport`; it is the only place the port
            # chosen for port 0 can be read from.
            self.ports.append(server.transport.sockets[0].getsockname()[1])
        log.info("Modbus simulator: %d meters on %s", len(self.meters),
                 ", ".join(self.gateway_name(i) for i in range(self.gateways)))

    async def _shutdown(self) -> None:
        for server in self._servers:
            await server.shutdown()
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # -- devices -----------------------------------------------------------------------------
    def _sim_device(self, meter: SimModbusMeter, started: float):
        from pymodbus.simulator import DataType, SimData, SimDevice
        meter_type = self.meter_types[meter.meter_type]
        device = _Device(meter, meter_type, started, self.clock)
        self._devices[(meter.gateway, meter.device_id)] = device

        def block(function: int) -> list:
            words: dict[int, int] = {}
            for spec in meter_type.registers:
                if spec.function == function:
                    for i, word in enumerate(device.registers_for(spec)):
                        words[spec.address + i] = word
            # One SimData per register run; gaps stay invalid (exception 2 when read).
            simdata, run_start, run = [], 0, []
            for address in sorted(words):
                if run and address != run_start + len(run):
                    simdata.append(SimData(run_start, values=run, datatype=DataType.REGISTERS))
                    run = []
                if not run:
                    run_start = address
                run.append(words[address])
            if run:
                simdata.append(SimData(run_start, values=run, datatype=DataType.REGISTERS))
            return simdata or [SimData(0, datatype=DataType.INVALID)]

        # Separate blocks per table, as real meters have: holding (3) and input (4) registers
        # at the same address are different values.
        no_bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        return SimDevice(meter.device_id, simdata=(no_bits, list(no_bits), block(3), block(4)),
                         action=device.action)

    def _catch_all_device(self):
        """Device id 0 answers for every id not configured (pymodbus's rule for id 0)."""
        from pymodbus.constants import ExcCodes
        from pymodbus.simulator import DataType, SimData, SimDevice

        async def unknown(function_code, start_address, address, count, registers, set_values):
            if self.unknown_device == "silent":
                await asyncio.sleep(TIMEOUT_HOLD)
            return ExcCodes.GATEWAY_NO_RESPONSE

        return SimDevice(0, simdata=[SimData(0, count=65536, values=0, datatype=DataType.REGISTERS)],
                         action=unknown)

    # -- pymodbus hooks (run on the simulator's loop) ----------------------------------------
    def _frame_device(self, data: bytes) -> int | None:
        """Device id of a complete request frame at the start of `data`, else None."""
        if self.framer == "socket":
            if len(data) >= 8 and len(data) >= 6 + int.from_bytes(data[4:6], "big"):
                return data[6]
            return None
        return data[0] if len(data) >= 8 else None

    def _trace_packet(self, gateway: int, sending: bool, data: bytes) -> bytes:
        device_id = self._frame_device(data)
        if device_id is None:
            return data
        device = self._devices.get((gateway, device_id))
        injector = device.injector if device else self._gateway_injectors[gateway]
        if not sending:
            self.requests += 1
            if injector.pick(("disconnect",)):
                raise SimulatedDisconnect(f"gateway {gateway} device {device_id}")
            return data
        if injector.pick(("garble",)):
            return injector.noise(len(data))
        return data

    def _trace_connect(self, gateway: int, connected: bool) -> None:
        name = self.gateway_name(gateway)
        if connected:
            self.sessions.started(name)
        else:
            self.sessions.ended(name)

    # -- what clients need to know -----------------------------------------------------------
    def gateway_name(self, gateway: int) -> str:
        if self.transport == "pty":
            return self.devices[gateway]
        port = self.ports[gateway] if gateway < len(self.ports) else self._wanted_ports[gateway]
        return f"{self.host}:{port}"

    def url(self, meter: SimModbusMeter) -> str:
        query = f"device_id={meter.device_id}&type={meter.meter_type}"
        if self.transport == "pty":
            return f"modbus+rtu://{self.gateway_name(meter.gateway)}?{query}"
        scheme = "modbus+tcp" if self.framer == "socket" else "modbus+rtu-over-tcp"
        return f"{scheme}://{self.gateway_name(meter.gateway)}?{query}"

    def meter_entries(self, *, can_block: bool = False, timezone: str = "UTC") -> list[dict]:
        """Rows for the registry's meter list (see docs/meters.md)."""
        rows = []
        for number, meter in enumerate(self.meters, start=1):
            rows.append({
                "name": meter.name or f"sim-modbus-{number:04d}",
                "execution_type": "generic_modbus",
                "meter_type": meter.meter_type,
                "url": self.url(meter),
                "interface": self.gateway_name(meter.gateway),
                "can_block": can_block or self.transport == "pty",
                "timezone": timezone,
                "series": list(self.meter_types[meter.meter_type].series),
            })
        return rows
