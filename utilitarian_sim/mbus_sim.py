"""Simulated wired M-Bus slaves sharing a bus (one TCP port of an M-Bus gateway, or a pty as the
serial line), written from EN 13757-2/-3, not from the client: primary and secondary addressing,
SND_NKE, REQ_UD2 with the frame count bit, multi-telegram answers, and the bus itself: when two
slaves answer at once their bytes overlap (a bitwise AND, as on the current-modulated bus).

Faults: latency, `timeout`, `garble`, `collision` (a phantom slave answers too), `wrong_address`.
"""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Callable, Sequence

from utilitarian_sim.faults import FaultInjector, Faults
from utilitarian_sim.iec_engine import LineClosed
from utilitarian_sim.line_server import LineServer
from utilitarian_sim.values import simulated_value

EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp()
# series, DIF, VIF, unit for simulated_value, decimal exponent of the encoded integer
HEAT_RECORDS = (
    ("energy", 0x04, 0x06, "kWh", 0),             # int32, kWh
    ("volume", 0x04, 0x13, "m3", -3),             # int32, litres
    ("power", 0x02, 0x2B, "W", 0),                # int16, W
    ("volume_flow", 0x02, 0x3B, "A", -3),         # int16, l/h (values like currents: 1-10)
    ("flow_temperature", 0x02, 0x5A, "°C", -1),   # int16, 0.1 °C
    ("return_temperature", 0x02, 0x5E, "°C", -1),
    ("temperature_difference", 0x02, 0x61, "K", -2),
    ("on_time", 0x04, 0x22, "h", 0),              # int32, hours
)
WATER_RECORDS = (
    ("volume", 0x0C, 0x13, "m3", -3),             # BCD 8 digits, litres
    ("volume_flow", 0x02, 0x3B, "A", -3),
)


def bcd(value: int, size: int) -> bytes:
    digits = f"{value:0{size * 2}d}"[-size * 2:]
    return bytes.fromhex(digits)[::-1]


@dataclass(frozen=True)
class SimMbusMeter:
    """One slave. identification: 8 digits; medium 4 heat, 7 water. telegrams: how many RSP_UD
    telegrams its records are spread over. bus: which gateway/pty it hangs on."""

    primary: int
    identification: str = "12345678"
    manufacturer: str = "SIM"
    version: int = 1
    medium: int = 4
    telegrams: int = 1
    bus: int = 0
    faults: Faults = Faults()
    name: str = ""
    due_date: bool = True          # storage 1: a due date and the energy at that date

    @property
    def series(self) -> list[str]:
        names = [r[0] for r in (HEAT_RECORDS if self.medium == 4 else WATER_RECORDS)]
        return names + (["energy@s1"] if self.due_date and self.medium == 4 else [])


class SlaveState:
    def __init__(self, meter: SimMbusMeter, number: int, clock: Callable[[], float]):
        self.meter, self.number, self.clock = meter, number, clock
        self.selected = False
        self.last_fcb: int | None = None
        self.telegram = 0               # index of the telegram the next REQ_UD2 gets
        self.sent: bytes | None = None
        self.access = 0
        self.requests = 0
        self.faults = FaultInjector(meter.faults, seed_offset=number)

    def value(self, series: str, unit: str, exponent: int, at: float | None = None) -> int:
        elapsed = (self.clock() if at is None else at) - EPOCH
        quantum = Decimal(1).scaleb(min(exponent, 0))
        v = simulated_value(self.number, series, "kWh" if unit == "h" else unit, elapsed, quantum=quantum)
        if unit == "h":
            v = Decimal(int(elapsed // 3600))
        return int(v.scaleb(-exponent))

    def records(self) -> list[bytes]:
        m = self.meter
        out = []
        for series, dif, vif, unit, exponent in (HEAT_RECORDS if m.medium == 4 else WATER_RECORDS):
            value = self.value(series, unit, exponent)
            size = {0x02: 2, 0x04: 4, 0x0C: 4}[dif]
            data = bcd(value, size) if dif == 0x0C else value.to_bytes(size, "little", signed=True)
            out.append(bytes([dif, vif]) + data)
        if m.due_date and m.medium == 4:
            due = datetime.fromtimestamp(self.clock(), timezone.utc).replace(day=1)
            g0 = (due.day & 0x1F) | (((due.year - 2000) & 0x07) << 5)
            g1 = (due.month & 0x0F) | ((((due.year - 2000) >> 3) & 0x0F) << 4)
            out.append(bytes([0x42, 0x6C, g0, g1]))                    # storage 1 date
            out.append(bytes([0x44, 0x06]) + self.value("energy", "kWh", 0, due.timestamp()).to_bytes(4, "little"))
        return out

    def telegrams(self) -> list[bytes]:
        records = self.records()
        count = max(1, min(self.meter.telegrams, len(records)))
        per = -(-len(records) // count)
        parts = [records[i:i + per] for i in range(0, len(records), per)]
        return [b"".join(p) + (b"\x1F" if i < len(parts) - 1 else b"") for i, p in enumerate(parts)]

    def rsp_ud(self, index: int, address: int) -> bytes:
        m = self.meter
        self.access = (self.access + 1) & 0xFF
        man = ((ord(m.manufacturer[0]) - 64) << 10) | ((ord(m.manufacturer[1]) - 64) << 5) | (ord(m.manufacturer[2]) - 64)
        header = bcd(int(m.identification), 4) + struct.pack("<H", man) + bytes([m.version, m.medium, self.access, 0, 0, 0])
        body = bytes([0x08, address, 0x72]) + header + self.telegrams()[index]
        return bytes([0x68, len(body), len(body), 0x68]) + body + bytes([sum(body) & 0xFF, 0x16])

    def matches(self, select: bytes) -> bool:
        m = self.meter
        ident = select[0:4][::-1].hex().upper()
        mine = m.identification
        if not all(p == "F" or p == c for p, c in zip(ident, mine)):
            return False
        man = struct.unpack("<H", select[4:6])[0]
        want_man = ((ord(m.manufacturer[0]) - 64) << 10) | ((ord(m.manufacturer[1]) - 64) << 5) | (ord(m.manufacturer[2]) - 64)
        return (man in (0xFFFF, want_man) and select[6] in (0xFF, m.version) and select[7] in (0xFF, m.medium))


def overlap(answers: list[bytes]) -> bytes:
    """What the master hears when several slaves send at once: a space (0) from any of them wins."""
    size = max(len(a) for a in answers)
    out = bytearray(b"\xff" * size)
    for answer in answers:
        for i, byte in enumerate(answer):
            out[i] &= byte
    return bytes(out)


class MbusBus:
    """The slaves of one bus and the master's requests to them."""

    def __init__(self, slaves: list[SlaveState]):
        self.slaves = slaves
        self.lock = threading.Lock()

    def handle(self, frame: bytes) -> bytes | None:
        with self.lock:
            answers = []
            if frame[0] == 0x10:
                control, address = frame[1], frame[2]
                for slave in self._addressed(address):
                    answer = self._short(slave, control, address)
                    if answer is not None:
                        answers.append((slave, answer))
            else:
                control, address, ci, data = frame[4], frame[5], frame[6], frame[7:-2]
                if control & 0xDF == 0x53 and ci == 0x52 and address == 253 and len(data) == 8:
                    for slave in self.slaves:
                        slave.selected = slave.matches(data)
                        if slave.selected:   # a selection starts a new conversation (FCB, telegrams)
                            slave.last_fcb, slave.telegram, slave.sent = None, 0, None
                            answers.append((slave, b"\xE5"))
            if not answers:
                return None
            sent = []
            for slave, answer in answers:
                slave.requests += 1
                fault = slave.faults.pick(("timeout", "garble", "collision", "wrong_address"))
                if slave.meter.faults.latency:
                    time.sleep(slave.meter.faults.latency)
                if fault == "timeout":
                    continue
                if fault == "garble":
                    answer = slave.faults.noise(len(answer))
                elif fault == "collision":
                    answer = overlap([answer, slave.faults.noise(len(answer))])
                elif fault == "wrong_address" and answer[0] == 0x68:
                    body = bytearray(answer[4:-2])
                    body[1] = (body[1] + 1) & 0xFF
                    answer = answer[:4] + bytes(body) + bytes([sum(body) & 0xFF, 0x16])
                sent.append(answer)
            return overlap(sent) if len(sent) > 1 else (sent[0] if sent else None)

    def _addressed(self, address: int) -> list[SlaveState]:
        if address == 253:
            return [s for s in self.slaves if s.selected]
        if address == 255:
            return list(self.slaves)
        return [s for s in self.slaves if s.meter.primary == address]

    def _short(self, slave: SlaveState, control: int, address: int) -> bytes | None:
        if control == 0x40:                                   # SND_NKE
            slave.last_fcb, slave.telegram, slave.sent = None, 0, None
            if address == 253:
                slave.selected = False
            return None if address == 255 else b"\xE5"
        if control & 0xDF == 0x5B and address != 255:         # REQ_UD2
            fcb = (control >> 5) & 1
            if slave.sent is not None and fcb == slave.last_fcb:
                return slave.sent                             # a repeat: the same telegram again
            if slave.sent is not None:
                slave.telegram = (slave.telegram + 1) % len(slave.telegrams())
            slave.last_fcb = fcb
            slave.sent = slave.rsp_ud(slave.telegram, slave.meter.primary if address != 253 else 253)
            return slave.sent
        return None


def _take_frame(buffer: bytearray) -> bytes | None:
    while buffer and buffer[0] not in (0x10, 0x68):
        del buffer[0]
    if not buffer:
        return None
    size = 5 if buffer[0] == 0x10 else (6 + buffer[1] if len(buffer) > 1 else 0)
    if size == 0 or len(buffer) < size:
        return None
    frame = bytes(buffer[:size])
    del buffer[:size]
    if frame[-1] != 0x16:
        return None
    return frame


class MbusSimulator:
    """Buses of simulated slaves: one TCP port (a transparent M-Bus gateway) or pty each."""

    def __init__(self, meters: Sequence[SimMbusMeter], *, transport: str = "tcp", host: str = "127.0.0.1",
                 clock: Callable[[], float] = time.time):
        self.meters = tuple(meters)
        buses = max([1, *(m.bus + 1 for m in self.meters)])
        self.states = [SlaveState(m, n, clock) for n, m in enumerate(self.meters, start=1)]
        self.buses = [MbusBus([s for s in self.states if s.meter.bus == b]) for b in range(buses)]
        self.server = LineServer(buses, self._serve, transport=transport, host=host, name="mbus-sim", clock=clock)

    @property
    def sessions(self):
        return self.server.sessions

    def _serve(self, line, bus: int, stop) -> None:
        buffer = bytearray()
        idle = time.monotonic()
        while time.monotonic() - idle < 30.0:
            if stop.is_set():
                raise LineClosed()
            data = line.read(0.2)
            if not data:
                continue
            idle = time.monotonic()
            buffer += data
            while (frame := _take_frame(buffer)) is not None:
                answer = self.buses[bus].handle(frame)
                if answer:
                    line.write(answer)

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> MbusSimulator:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def state(self, meter: SimMbusMeter) -> SlaveState:
        return self.states[self.meters.index(meter)]

    def url(self, meter: SimMbusMeter, *, secondary: bool = False) -> str:
        where = self.server.interfaces()[meter.bus]
        who = f"secondary={meter.identification}" if secondary else f"address={meter.primary}"
        scheme = "mbus+serial" if self.server.transport == "pty" else "mbus+tcp"
        return f"{scheme}://{where}?{who}"

    def meter_entries(self) -> list[dict]:
        """Rows for the registry's meter list: every bus is can_block (one conversation at a time)."""
        return [{"name": m.name or f"sim-mbus-{n:04d}", "execution_type": "generic_mbus",
                 "meter_type": "sim_mbus_heat" if m.medium == 4 else "sim_mbus_water", "url": self.url(m),
                 "interface": self.server.interfaces()[m.bus], "can_block": True, "timezone": "UTC",
                 "series": m.series} for n, m in enumerate(self.meters, start=1)]
