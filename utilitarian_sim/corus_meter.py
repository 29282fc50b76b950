"""A simulated Itron Corus gas volume converter speaking I-FLAG, written from the protocol
description (not from the client): wake-up, sign-on, the PASS prompt and password check, parameter
reads and writes, database reads in numbered frames with ACK/NAK, break. Its own CRC (table
driven) and its own encoders, so a framing bug shared with the client cannot hide.

Faults: `latency` (slow answers), `bad_bcc` (a frame with a wrong CRC), `timeout`, `garble`,
`disconnect`; a wrong password is a meter whose `password` differs from the client's. The dialogue
is in corus_engine, whose `CorusSimulator` serves devices on TCP ports or ptys.
"""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Callable
from zoneinfo import ZoneInfo

from utilitarian_sim.faults import FaultInjector, Faults


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc(data: bytes) -> bytes:
    value = 0
    for byte in data:
        value = ((value << 8) & 0xFFFF) ^ _TABLE[(value >> 8) ^ byte]
    return bytes([value & 0xFF, value >> 8])


def pack_date(moment: datetime | None) -> bytes:
    if moment is None:
        return bytes(4)
    word = ((moment.year - 2000) << 26) + (moment.month << 22) + (moment.day << 17) \
        + (moment.hour << 12) + (moment.minute << 6) + moment.second
    return struct.pack("<I", word)


def unpack_date(data: bytes) -> datetime | None:
    (word,) = struct.unpack("<I", data)
    if word == 0:
        return None
    return datetime(2000 + (word >> 26), (word >> 22) & 15, (word >> 17) & 31, (word >> 12) & 31,
                    (word >> 6) & 63, word & 63)


def pack_index(value: Decimal, width: int = 4) -> bytes:
    whole = int(value)
    fraction = int((value - whole) * 100_000_000)
    return whole.to_bytes(width, "little") + fraction.to_bytes(4, "little")


# The simulated firmware: map "b0040" (classic, non-MID) with parameter ids and types.
FIRMWARE = "FL_b0040"
PARAMETERS = {0: "firmware", 1: "pulse_weight", 0x5E: "map", 106: "clock", 107: "battery",
              148: "index_unconverted", 149: "index_converted", 152: "flow_unconverted",
              153: "flow_converted", 158: "temperature", 159: "pressure"}
PERIODS = {0: ("interval", 900), 1: ("hourly", 3600), 2: ("daily", 86400), 3: ("monthly", None)}
RECORDS_PER_FRAME = 4


@dataclass(frozen=True)
class SimCorusMeter:
    """One Corus on its own line (I-FLAG has no bus addressing). password: what the PASS prompt
    must be answered with ("PASS", the default, accepts the echo). history_hours: how far the
    interval and hourly databases go back."""

    password: str = "PASS"
    timezone: str = "UTC"
    clock_offset: float = 0.0
    pulse_weight: Decimal = Decimal("0.1")
    history_hours: int = 48
    faults: Faults = Faults()
    name: str = ""


class CorusModel:
    """Values of one simulated device; the flow is 2.5 m3/h (25 pulses of 0.1 m3 an hour)."""

    def __init__(self, spec: SimCorusMeter, clock: Callable[[], float] = time.time):
        self.spec = spec
        self._clock = clock
        self._offset = spec.clock_offset
        self.tz = ZoneInfo(spec.timezone)
        self.injector = FaultInjector(spec.faults)
        self.started = clock()
        self.writes: list[tuple[int, bytes]] = []
        self._lock = threading.Lock()

    def now_utc(self) -> datetime:
        with self._lock:
            return datetime.fromtimestamp(self._clock() + self._offset, timezone.utc)

    def local(self, instant: datetime) -> datetime:
        return instant.astimezone(self.tz).replace(tzinfo=None)

    def set_local(self, local: datetime) -> None:
        with self._lock:
            self._offset = local.replace(tzinfo=self.tz).timestamp() - self._clock()

    def pulses_until(self, instant: datetime) -> int:
        """Pulses counted since 2020-01-01 UTC: 25 an hour."""
        return int((instant - datetime(2020, 1, 1, tzinfo=timezone.utc)).total_seconds() * 25 // 3600)

    def parameter(self, ident: int) -> bytes | None:
        now = self.now_utc()
        volume = Decimal(self.pulses_until(now)) * self.spec.pulse_weight
        values = {
            "firmware": b"C1.23\x00\x00\x00", "map": FIRMWARE.encode("latin-1"),
            "pulse_weight": struct.pack("<f", float(self.spec.pulse_weight)),
            "clock": pack_date(self.local(now)), "battery": struct.pack("<H", 1795),
            "index_unconverted": pack_index(volume), "index_converted": pack_index(volume * Decimal("1.5")),
            "flow_unconverted": struct.pack("<f", 2.5), "flow_converted": struct.pack("<f", 3.75),
            "temperature": struct.pack("<f", 11.5), "pressure": b"\xff\xff\xff\xff",  # sensor absent
        }
        name = PARAMETERS.get(ident)
        return values.get(name) if name else None

    def write(self, ident: int, data: bytes) -> bool:
        if PARAMETERS.get(ident) != "clock" or len(data) != 4:
            return False
        try:
            local = unpack_date(data)
        except ValueError:
            return False
        if local is None:
            return False
        self.set_local(local)
        self.writes.append((ident, data))
        return True

    # -- databases: classic record layouts (52 bytes interval/hourly, 57 daily, 103 monthly) --
    def _ends(self, db: int) -> list[datetime]:
        """UTC end instants of the records, newest first."""
        now = self.now_utc()
        name, period = PERIODS[db]
        if period is None:  # monthly: first of each month, local midnight
            local = self.local(now).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            ends = []
            for _ in range(6):
                ends.append(local.replace(tzinfo=self.tz).astimezone(timezone.utc))
                local = (local - timedelta(days=1)).replace(day=1)
            return ends
        last = datetime.fromtimestamp(now.timestamp() // period * period, timezone.utc)
        count = max(1, int(self.spec.history_hours * 3600 // period))
        return [last - timedelta(seconds=period * i) for i in range(count)]

    def _record(self, db: int, end: datetime) -> bytes:
        name, period = PERIODS[db]
        length = period or 30 * 86400
        start = end - timedelta(seconds=length)
        pulses = self.pulses_until(end) - self.pulses_until(start)
        wide = db in (2, 3)
        out = (struct.pack("<H", length // 60) if wide else bytes([min(length // 60, 255)]))
        out += bytes([0]) + pack_date(self.local(end))
        if wide:
            out += pulses.to_bytes(3, "little") + (pulses * 3 // 2).to_bytes(5, "little")
            out += bytes(3) + bytes(5)
        else:
            out += struct.pack("<HI", pulses & 0xFFFF, pulses * 3 // 2) + struct.pack("<HI", 0, 0)
        out += struct.pack("<hhh", 1050, 1210, 1125)                 # 10.50 / 12.10 / 11.25 C
        out += struct.pack("<HHH", 0x8000 | 102, 0x8000 | 105, 0x8000 | 103)  # 1.02 / 1.05 / 1.03 bar
        out += struct.pack("<HHHH", 20, 30, 30, 45)                   # flow rates, exponent -1
        out += b"\xff\xff\xff\xff"
        if db == 3:
            volume = Decimal(self.pulses_until(end)) * self.spec.pulse_weight
            out += pack_index(volume) + pack_index(volume * Decimal("1.5")) + bytes(16)
            out += struct.pack("<H", 30) + pack_date(self.local(start)) + struct.pack("<I", 45) \
                + pack_date(self.local(start))
        out += struct.pack("<HH", 25, 37) + pack_date(self.local(start)) + b"\xff\xff"
        return out

    def records(self, db: int, newest: datetime | None, oldest: datetime | None) -> list[bytes]:
        chosen = []
        for end in self._ends(db):
            local = self.local(end)
            if newest and local > newest or oldest and local < oldest:
                continue
            chosen.append(self._record(db, end))
        return chosen

