"""The meter side of an IEC 62056-21 conversation over any line (TCP socket or pty): request,
identification, option select, baud switch, readout or programming mode, with injected faults.

Several meters may share one line, as on an RS-485 bus: the request's address picks the meter.
On a pty the engine checks the line speed it sees at each step and records what it saw.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from utilitarian_sim import iec_wire as f
from utilitarian_sim.faults import FaultInjector
from utilitarian_sim.iec_meter import GenericMeterModel
from utilitarian_sim.lis200_meter import Lis200Model

log = logging.getLogger(__name__)

ACK_WAIT = 3.0       # seconds the meter waits for the option select before going idle
COMMAND_WAIT = 5.0   # programming-mode inactivity before the meter drops the session
SWITCH_WAIT = 1.0    # how long the meter waits to see the client's line at the new speed
MIN_WAKE_NULS = 10   # NUL bytes a battery meter must see before it listens


class LineClosed(Exception):
    """The other end went away (or the simulator is stopping)."""


class Line(Protocol):
    def read(self, timeout: float) -> bytes: ...    # b"" on timeout, LineClosed when gone
    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def speed(self) -> int | None: ...              # observed line speed, None on TCP
    def framing(self) -> str | None: ...            # "7E1" if the OS lets us see it, else None


@dataclass(frozen=True)
class LineObservation:
    step: str            # "request", "data"
    expected: int
    seen: int | None
    framing: str | None
    ok: bool


class IecEngine:
    """Runs conversations on one line until it closes or `stop` is set."""

    def __init__(self, line: Line, meters: dict[str, GenericMeterModel | Lis200Model],
                 stop: threading.Event, observations: list[LineObservation]):
        self.line = line
        self.meters = meters
        self.stop = stop
        self.observations = observations
        self.buffer = bytearray()

    # -- line helpers ------------------------------------------------------------------------
    def _fill(self, timeout: float) -> bool:
        if self.stop.is_set():
            raise LineClosed()
        data = self.line.read(min(timeout, 0.2))
        self.buffer += data
        return bool(data)

    def _read_line(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end + 1])
                del self.buffer[:end + 1]
                return line
            if time.monotonic() >= deadline:
                return None
            self._fill(deadline - time.monotonic())

    def _read_frame(self, timeout: float) -> f.Frame | None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = f.extract_frame(self.buffer)
            except f.Garbled:
                self.buffer.clear()
                return None
            if result:
                del self.buffer[:result[0]]
                return result[1]
            if time.monotonic() >= deadline:
                return None
            self._fill(deadline - time.monotonic())

    def _observe(self, step: str, expected: int, *, wait: float = 0.0) -> bool:
        """Check (waiting up to `wait` for it) that the line runs at `expected` baud."""
        seen = self.line.speed()
        if seen is None:
            return True
        deadline = time.monotonic() + wait
        while seen != expected and time.monotonic() < deadline:
            time.sleep(0.005)
            seen = self.line.speed()
        framing = self.line.framing()
        ok = seen == expected and framing in (None, "7E1")
        self.observations.append(LineObservation(step, expected, seen, framing, ok))
        if not ok:
            log.warning("simulated meter: line at %s baud %s during %s, expected %d 7E1",
                        seen, framing or "", step, expected)
        return ok

    def _send(self, meter, data: bytes) -> None:
        latency = meter.spec.faults.latency
        time.sleep(meter.spec.reaction_time + latency)
        self.line.write(data)

    # -- conversation ------------------------------------------------------------------------
    def serve(self) -> None:
        try:
            while not self.stop.is_set():
                self._serve_one()
        except LineClosed:
            pass

    def _serve_one(self) -> None:
        line = self._read_line(1.0)
        if line is None:
            if len(self.buffer) > 4096:
                self.buffer.clear()
            return
        start = line.find(b"/?")
        if start < 0 or not line.endswith(b"!\r\n"):
            return  # noise, NUL wake-up bytes, or a stray frame: keep listening
        nuls = line[:start].count(0)
        address = line[start + 2:-3].decode("ascii", errors="replace")
        meter = self.meters.get(address)
        if meter is None and not address and len(self.meters) == 1:
            meter = next(iter(self.meters.values()))
        if meter is None:
            return
        if meter.spec.battery and nuls < MIN_WAKE_NULS:
            log.debug("simulated meter %s asleep: %d NUL bytes before the request", address, nuls)
            return
        if not self._observe("request", 300):
            return
        self._conversation(meter, meter.injector)

    def _conversation(self, meter, injector: FaultInjector) -> None:
        spec = meter.spec
        fault = injector.pick(("timeout", "disconnect", "garble", "garbage"))
        if fault == "timeout":
            return
        if fault == "disconnect":
            raise LineClosed()
        if fault == "garble":
            self._send(meter, injector.noise(20))
            return
        prefix = injector.noise(12, avoid=b"/\n") + b"\r\n" if fault == "garbage" else b""
        self._send(meter, prefix + spec.identification.encode("ascii") + f.CRLF)
        ack = self._read_line(ACK_WAIT)
        if ack is None or len(ack) < 6 or ack[-6] != f.ACK:
            return
        baud_char, mode = chr(ack[-4]), chr(ack[-3])
        proposed = f.BAUD_CHARS[spec.baud_char]
        if baud_char not in f.BAUD_CHARS or f.BAUD_CHARS[baud_char] > proposed:
            return
        time.sleep(spec.reaction_time)
        if not self._observe("data", f.BAUD_CHARS[baud_char], wait=SWITCH_WAIT):
            self.line.write(injector.noise(30))  # what a meter at another speed looks like
            return
        if mode == f.MODE_READOUT:
            self._readout(meter, injector)
        elif mode == f.MODE_PROGRAMMING:
            self._programming(meter, injector)

    def _readout(self, meter, injector: FaultInjector) -> None:
        fault = injector.pick(("timeout", "disconnect", "garble", "bad_bcc", "missing_end"))
        if fault == "timeout":
            return
        if fault == "disconnect":
            raise LineClosed()
        if isinstance(meter, Lis200Model):
            lines = [f"{a}({meter.read(a)})" for a in ("2:300.0", "4:300.0", "1:400.0")]
        else:
            lines = meter.readout_lines()
        payload = "\r\n".join(lines).encode("ascii") + b"\r\n"
        payload += b"" if fault == "missing_end" else b"!\r\n"
        self._send(meter, self._block(payload, True, injector, fault))

    def _block(self, payload: bytes, final: bool, injector: FaultInjector,
               fault: str | None) -> bytes:
        block = f.build_block(payload, final=final)
        if fault == "bad_bcc":
            block = block[:-1] + bytes([block[-1] ^ 0x5A])
        if fault == "garble":
            block = injector.noise(len(block))
        return block

    def _programming(self, meter, injector: FaultInjector) -> None:
        operand = f"({meter.spec.address})".encode("ascii")
        last_raw, last_block = f.build_command("P0", operand), None
        self._send(meter, last_raw)
        authenticated = meter.spec.password is None or isinstance(meter, Lis200Model)
        pending: list[tuple[bytes, bool]] = []
        while True:
            frame = self._read_frame(COMMAND_WAIT)
            if frame is None:
                return
            if frame.kind == "nak":  # the client asks for a repeat; line noise may strike again
                if last_block is not None:
                    last_raw = self._block(*last_block, injector, injector.pick(("bad_bcc",)))
                self._send(meter, last_raw)
                continue
            if frame.kind == "ack" and pending:
                last_block = pending.pop(0)
                last_raw = self._block(*last_block, injector, None)
                self._send(meter, last_raw)
                continue
            if frame.kind != "block":
                continue
            if not frame.bcc_ok:
                self._send(meter, bytes([f.NAK]))
                continue
            if frame.command == "B0":
                return
            fault = injector.pick(("timeout", "disconnect", "garble", "bad_bcc", "nak"))
            if fault == "timeout":
                continue
            if fault == "disconnect":
                raise LineClosed()
            if fault == "nak":
                self._send(meter, bytes([f.NAK]))
                continue
            last_block = None
            if frame.command == "P1":
                password = frame.payload.decode("ascii", errors="replace").strip("()")
                authenticated = meter.spec.password is None or password == meter.spec.password
                last_raw = bytes([f.ACK if authenticated else f.NAK])
                self._send(meter, last_raw)
                continue
            blocks = self._answer(meter, frame, authenticated)
            if blocks is None:
                last_raw = bytes([f.ACK])
                self._send(meter, last_raw)
                continue
            last_block, pending = blocks[0], blocks[1:]
            last_raw = self._block(*last_block, injector, fault)
            self._send(meter, last_raw)

    def _answer(self, meter, frame: f.Frame, authenticated: bool) -> list[tuple[bytes, bool]] | None:
        """(payload, final) blocks answering R1/R3/W1, or None for a plain ACK."""
        try:
            address, param = f.parse_request(frame.payload)
        except f.Garbled:
            return [(b"(ERROR)", True)]
        lis = isinstance(meter, Lis200Model)

        def error(code: int) -> list[tuple[bytes, bool]]:
            return [(f"(#{code:04d})".encode("ascii") if lis else b"(ERROR)", True)]

        if frame.command == "W1":
            if lis:
                code = meter.write(address, param)
                return None if code is None else error(code)
            if not authenticated:
                return error(19)
            return None if meter.write(address, param) else error(1)
        if frame.command in ("R1", "R3") and lis and ":V." in address:
            archive, _, attribute = address.partition(":V.")
            rows = meter.archive(int(archive) if archive.isdigit() else -1, attribute, param)
            if isinstance(rows, int):
                return error(rows)
            lines = ["".join(f"({v})" for v in row) for row in rows]
            size = int((param.split(";") + ["", "", "", ""])[3] or 0) if frame.command == "R3" else 0
            size = size if size > 0 else max(len(lines), 1)
            chunks = [lines[i:i + size] for i in range(0, len(lines), size)] or [[]]
            return [(("\r\n".join(c) + "\r\n").encode("ascii"), i == len(chunks) - 1)
                    for i, c in enumerate(chunks)]
        if frame.command == "R5" and not lis:
            lines = meter.load_profile(address, param)
            if lines is None:
                return [(b"(ERROR)", True)]
            chunks = [lines[i:i + 8] for i in range(0, len(lines), 8)] or [[]]
            return [(("\r\n".join(c) + "\r\n").encode("ascii"), i == len(chunks) - 1)
                    for i, c in enumerate(chunks)]
        if frame.command == "R1":
            value = meter.read(address) if lis else meter.value(address)
            if value is None or isinstance(value, int):
                return error(value if isinstance(value, int) else 1)
            text = f"({value})" if lis else f"{address}({value})"
            return [(text.encode("ascii"), True)]
        return error(200)
