"""The simulated Corus's side of a line (wake-up, sign-on, password, reads, writes, database
frames with ACK/NAK) and the simulator that serves devices on TCP ports or ptys. The device's data
and its own codec live in corus_meter."""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass, field

from utilitarian_sim.gateways import Conversations, Gateways
from utilitarian_sim.corus_meter import PERIODS, RECORDS_PER_FRAME, CorusModel, SimCorusMeter, crc, unpack_date
from utilitarian_sim.iec_engine import LineClosed


class CorusEngine:
    """The device side of one line: runs conversations until the line closes or `stop` is set."""

    def __init__(self, line, model: CorusModel, stop: threading.Event):
        self.line, self.model, self.stop = line, model, stop
        self.buffer = bytearray()

    def _fill(self, timeout: float) -> None:
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
            raise LineClosed()
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
                raise LineClosed()
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


@dataclass
class CorusSimulator:
    """Simulated Corus devices, one per TCP port or pty. `urls` say where each is."""

    meters: list[SimCorusMeter]
    transport: str = "tcp"
    host: str = "127.0.0.1"
    models: list[CorusModel] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.models = [CorusModel(m) for m in self.meters]
        # A device holds one conversation at a time, as its serial port does: a second client
        # waits until the first has hung up.
        self._busy = [threading.Lock() for _ in self.models]
        self._stop = threading.Event()
        self._conversations = Conversations("corus-sim")
        from utilitarian_sim.iec_server import PtyLine

        self._gateways = Gateways(len(self.models), self.transport, host=self.host,
                                  on_accept=self._accepted, open_pty=PtyLine, name="corus-sim")
        self.ports: list[int] = []
        self.devices: list[str] = []

    def __enter__(self) -> CorusSimulator:
        self._gateways.open()
        self.ports, self.devices = self._gateways.ports, self._gateways.devices
        self._gateways.serve()
        for line, model in zip(self._gateways.lines, self.models):
            self._conversations.spawn(self._serve_line, line, model)
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._gateways.stop_accepting()
        self._conversations.join(5.0)
        self._gateways.close_lines()

    def _accepted(self, index: int, conn) -> None:
        from utilitarian_sim.iec_server import SocketLine

        self._conversations.spawn(self._serve_connection, index, SocketLine(conn))

    def _serve_connection(self, index: int, line) -> None:
        try:
            with self._busy[index]:
                if not self._stop.is_set():
                    self._serve_line(line, self.models[index])
        finally:
            line.close()

    def _serve_line(self, line, model: CorusModel) -> None:
        CorusEngine(line, model, self._stop).serve()

    def url(self, index: int = 0) -> str:
        if self.transport == "pty":
            return f"corus+serial://{self.devices[index]}"
        return f"corus+tcp://{self.host}:{self.ports[index]}"
