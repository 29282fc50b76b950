"""A simulated Itron Corus gas volume converter speaking I-FLAG, written from the protocol
description (not from the client): wake-up, sign-on, the PASS prompt and password check, parameter
reads and writes, database reads in numbered frames with ACK/NAK, break. Its own CRC (table
driven) and its own encoders, so a framing bug shared with the client cannot hide.

Faults: `latency` (slow answers), `bad_bcc` (a frame with a wrong CRC), `timeout`, `garble`,
`disconnect`; a wrong password is a meter whose `password` differs from the client's.
"""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass, field
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


class CorusEngine:
    """The device side of one line: runs conversations until the line closes or `stop` is set."""

    def __init__(self, line, model: CorusModel, stop: threading.Event):
        self.line, self.model, self.stop = line, model, stop
        self.buffer = bytearray()

    def _fill(self, timeout: float) -> None:
        from utilitarian_sim.iec_engine import LineClosed

        if self.stop.is_set():
            raise LineClosed()
        self.buffer += self.line.read(min(timeout, 0.2))

    def _take(self, count: int, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while len(self.buffer) < count:
            if time.monotonic() > deadline:
                return None
            self._fill(deadline - time.monotonic())
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def _send(self, data: bytes) -> None:
        time.sleep(self.model.spec.faults.latency)
        self.line.write(data)

    def _frame(self, data: bytes, fault: str | None = None) -> bytes:
        body = bytes([1, len(data)]) + data + bytes([3])
        check = crc(body)
        if fault == "bad_bcc":
            check = bytes([check[0] ^ 0x5A, check[1]])
        if fault == "garble":
            return self.model.injector.noise(len(body) + 2)
        return body + check

    def serve(self) -> None:
        from utilitarian_sim.iec_engine import LineClosed

        try:
            while not self.stop.is_set():
                self._conversation()
        except LineClosed:
            pass

    def _conversation(self) -> None:
        # Wake-up: a run of NUL bytes (at least 12), answered with three NULs once the line is quiet.
        self._fill(1.0)
        nuls = len(self.buffer) - len(self.buffer.lstrip(b"\x00"))
        if nuls < 12:
            if self.buffer and not self.buffer.startswith(b"\x00"):
                self.buffer.clear()
            return
        while True:
            before = len(self.buffer)
            self._fill(0.05)
            if len(self.buffer) == before:
                break
        del self.buffer[:len(self.buffer) - len(self.buffer.lstrip(b"\x00"))]
        fault = self.model.injector.pick(("timeout", "disconnect"))
        if fault == "timeout":
            self.buffer.clear()
            return
        if fault == "disconnect":
            raise LineClosed_()
        self._send(b"\x00\x00\x00")
        request = self._line(3.0)
        if request != b"/?!\r\n":
            return
        self._send(b"/ACT5CORUS\r\n")
        option = self._line(3.0)
        if option is None or not option.startswith(b"\x06"):
            return
        self._send(b"PASS" + crc(b"PASS"))
        answer = self._burst(3.0)
        if len(answer) < 3:
            return
        password, check = answer[:-2], answer[-2:]
        if crc(password) != check or password.decode("latin-1") != self.model.spec.password:
            self._send(b"\x15")
            return
        self._send(b"\x06")
        self._commands()

    def _burst(self, timeout: float, quiet: float = 0.15) -> bytes:
        """Bytes that arrive until the line is quiet for `quiet` seconds (a password has no
        length field)."""
        deadline = time.monotonic() + timeout
        while not self.buffer and time.monotonic() < deadline:
            self._fill(deadline - time.monotonic())
        while True:
            before = len(self.buffer)
            self._fill(quiet)
            if len(self.buffer) == before:
                break
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def _line(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            if time.monotonic() > deadline:
                return None
            self._fill(deadline - time.monotonic())
        end = self.buffer.index(b"\n") + 1
        line = bytes(self.buffer[:end])
        del self.buffer[:end]
        return line

    def _request(self) -> tuple[int, bytes] | None:
        """(command, data) of the next SOH frame with a good CRC; NAK for a bad one."""
        while True:
            head = self._take(1, 10.0)
            if head is None:
                return None
            if head[0] != 1:
                continue
            cmd_len = self._take(2, 2.0)
            if cmd_len is None:
                return None
            if cmd_len == b"B0":                       # break: SOH B0 ETX CRC
                self._take(3, 1.0)
                return None
            rest = self._take(cmd_len[1] + 3, 2.0)
            if rest is None:
                return None
            data, etx, check = rest[:-3], rest[-3], rest[-2:]
            if etx != 3 or crc(head + cmd_len + data + bytes([etx])) != check:
                self._send(b"\x15")
                continue
            return cmd_len[0], data

    def _commands(self) -> None:
        while True:
            request = self._request()
            if request is None:
                return
            command, data = request
            fault = self.model.injector.pick(("timeout", "disconnect", "garble", "bad_bcc"))
            if fault == "timeout":
                continue
            if fault == "disconnect":
                raise LineClosed_()
            if command == 0xBF:
                self._answer_read(data, fault)
            elif command == 0xFF:
                ok = self._apply_write(data)
                self._send(b"\x06" if ok else b"\x15")
            elif command == 0xBE and len(data) == 13:
                self._answer_database(data, fault)
            else:
                self._send(b"\x15")

    def _ids(self, data: bytes) -> list[int]:
        ids, pos = [], 0
        while pos < len(data):
            if data[pos] >= 0xF0:
                ids.append(((data[pos] & 0x0F) << 8) | data[pos + 1])
                pos += 2
            else:
                ids.append(data[pos])
                pos += 1
        return ids

    def _send_with_repeats(self, frame_data: bytes, fault: str | None) -> bool:
        """Send a frame; repeat it while the client NAKs. False when the client went quiet."""
        self._send(self._frame(frame_data, fault))
        for _ in range(10):
            reply = self._take(1, 5.0)
            if reply is None:
                return False
            if reply == b"\x15":
                self._send(self._frame(frame_data, self.model.injector.pick(("bad_bcc",))))
                continue
            self.buffer[:0] = reply
            return True
        return False

    def _answer_read(self, data: bytes, fault: str | None) -> None:
        values = []
        for ident in self._ids(data):
            value = self.model.parameter(ident)
            if value is None:
                self._send(b"\x15")
                return
            values.append(value)
        self._send_with_repeats(b"".join(values), fault)

    def _apply_write(self, data: bytes) -> bool:
        ids = self._ids(data[:2] if data and data[0] >= 0xF0 else data[:1])
        size = 2 if data and data[0] >= 0xF0 else 1
        return len(ids) == 1 and self.model.write(ids[0], data[size:])

    def _answer_database(self, data: bytes, fault: str | None) -> None:
        db = data[0] & 0x0F
        if db not in PERIODS:
            self._send(b"\x15")
            return
        newest, oldest = unpack_date(data[5:9]), unpack_date(data[9:13])
        records = self.model.records(db, newest, oldest)
        size = len(records[0]) if records else 0
        # A frame carries at most 255 data bytes: the frame number, the record size, records.
        per_frame = max(1, min(RECORDS_PER_FRAME, 252 // max(size, 1)))
        chunks = [records[i:i + per_frame] for i in range(0, len(records), per_frame)] or [[]]
        for number, chunk in enumerate(chunks):
            word = number | (0x8000 if number == len(chunks) - 1 else 0)
            body = struct.pack("<H", word) + (bytes([size]) if number == 0 else b"") + b"".join(chunk)
            if not self._send_with_repeats(body, fault if number == 0 else None):
                return
            if number == len(chunks) - 1:
                return
            ack = self._take(1, 5.0)
            if ack != b"\x06":
                return


class LineClosed_(Exception):
    pass


@dataclass
class CorusSimulator:
    """Simulated Corus devices, one per TCP port or pty. `urls` say where each is."""

    meters: list[SimCorusMeter]
    transport: str = "tcp"
    host: str = "127.0.0.1"
    models: list[CorusModel] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.models = [CorusModel(m) for m in self.meters]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listeners = []
        self._lines = []
        self.ports: list[int] = []
        self.devices: list[str] = []

    def __enter__(self) -> CorusSimulator:
        import socket

        from utilitarian_sim.iec_server import PtyLine

        for index, model in enumerate(self.models):
            if self.transport == "pty":
                line = PtyLine()
                self._lines.append(line)
                self.devices.append(line.path)
                target, args = self._serve_line, (line, model)
            else:
                listener = socket.create_server((self.host, 0))
                listener.settimeout(0.2)
                self._listeners.append(listener)
                self.ports.append(listener.getsockname()[1])
                target, args = self._accept, (listener, model)
            thread = threading.Thread(target=target, args=args, daemon=True, name=f"corus-sim-{index}")
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for listener in self._listeners:
            listener.close()
        for thread in self._threads:
            thread.join(5.0)
        for line in self._lines:
            line.close()

    def _accept(self, listener, model: CorusModel) -> None:
        import socket

        from utilitarian_sim.iec_server import SocketLine

        while not self._stop.is_set():
            try:
                conn, _peer = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            line = SocketLine(conn)
            try:
                self._serve_line(line, model)
            finally:
                line.close()

    def _serve_line(self, line, model: CorusModel) -> None:
        try:
            CorusEngine(line, model, self._stop).serve()
        except LineClosed_:
            pass

    def url(self, index: int = 0) -> str:
        if self.transport == "pty":
            return f"corus+serial://{self.devices[index]}"
        return f"corus+tcp://{self.host}:{self.ports[index]}"
