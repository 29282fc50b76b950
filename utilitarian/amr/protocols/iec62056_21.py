"""IEC 62056-21 mode C sessions: sign-on, readout, programming mode (P0/P1, R1/R3, W1, B0).

One `Iec62056Session` is one conversation with one meter, bounded by the target's read timeout and
session timeout. Passwords go on the wire only; logs and errors never contain them.

Each exchange is a stepwise function (utilitarian/steps.py, `..._steps`): over TCP it yields its
waits (the connect: steps.Writable; an answer: steps.Readable; a request after the reaction time
and its answer: one steps.Ask), so a worker parks a poll between answers without holding a thread;
on a serial line it blocks in its thread and yields nothing. The
plain methods (LIS-200, tests) run the same steps to their end in their thread, blocking in each
read; steps.drive of the `..._steps` blocks in each wait instead (`utilitarian read`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from utilitarian import steps
from utilitarian.amr.errors import (MeterAuthenticationError, MeterChecksumError, MeterError,
                                    MeterProtocolError, MeterTimeout, MeterUnsupported)
from utilitarian.amr.protocols import iec_frames as f
from utilitarian.amr.protocols.iec_datasets import DataSet, parse_data_block, parse_readout
from utilitarian.amr.protocols.transport import Channel, Transport, open_transport
from utilitarian.amr.target import MeterTarget

log = logging.getLogger(__name__)

# Battery meters sleep until they see NUL bytes for 2.1-2.3 s, then need 1.5-1.7 s of quiet.
WAKEUP_DURATION = 2.2
WAKEUP_PAUSE = 1.5


@dataclass(frozen=True)
class Readout:
    identification: f.Identification
    datasets: tuple[DataSet, ...]


class Iec62056Session:
    """A mode C conversation. Use as a context manager; programming mode ends with B0 on exit.
    The line opens as the first exchange begins (its sign-on), so over TCP a stepwise exchange
    yields the connect's wait too (`open` opens it at once, in this thread)."""

    def __init__(self, target: MeterTarget, *, transport: Transport | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] | None = None,
                 wakeup_duration: float = WAKEUP_DURATION, wakeup_pause: float = WAKEUP_PAUSE,
                 answer_check: Callable[[str, str], None] | None = None):
        if target.protocol not in ("iec62056-21", "lis200"):
            raise MeterUnsupported(f"{target}: not an IEC 62056-21 target")
        self.target = target
        self.transport = transport or open_transport(target)
        # sleep None: the session's own (a parked steps.pause, or time.sleep); a test with its own
        # clock passes the sleep that advances it.
        self.clock, self.sleep = clock, sleep
        self.wakeup_duration, self.wakeup_pause = wakeup_duration, wakeup_pause
        # Dialects with their own error answers (LIS-200 "#0017") raise typed errors from here.
        self.answer_check = answer_check
        self.deadline = clock() + target.session_timeout
        self.channel = Channel(self.transport, timeout=target.timeout, deadline=self.deadline,
                               clock=clock)
        self.identification: f.Identification | None = None
        self.programming = False
        self._opened = False

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Iec62056Session:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def open(self) -> None:
        self._run(self.open_steps())

    def open_steps(self) -> steps.Steps:
        """Open the line, bounded by the read timeout and the session deadline; over TCP (while
        the channel parks) a connect still under way is a parked wait."""
        timeout = min(self.target.timeout, max(self.channel.remaining(), 0.001))
        if self.channel.park:
            yield from self.transport.open_steps(timeout)
        else:
            self.transport.open(timeout)
        self._opened = True

    def close(self) -> None:
        if self.programming:
            self.programming = False
            try:
                self.channel.send(f.build_command("B0"))
                self.transport.drain()
            except MeterError as exc:
                log.debug("B0 to %s not sent (%s); the meter times out on its own", self.where, exc)
        if self._opened:
            self.transport.close()
            self._opened = False

    def _run(self, exchange: steps.Steps):
        """A stepwise exchange run to its end in this thread, not parking: each read is one
        blocking recv (transport.read), not a poll() and then a recv, a GIL hand-over more per
        answer when a hundred threads poll (LIS-200 and `utilitarian read` come this way)."""
        park, self.channel.park = self.channel.park, False
        try:
            return steps.drive(exchange)
        finally:
            self.channel.park = park

    @property
    def where(self) -> str:
        address = f" address {self.target.address}" if self.target.address else ""
        return f"{self.target.interface}{address}"

    def _pause(self, seconds: float) -> steps.Steps:
        if seconds > 0:
            if self.channel.remaining() < seconds:
                raise MeterTimeout(f"{self.where}: session timeout reached")
            if self.sleep is not None:
                self.sleep(seconds)
            elif self.channel.park:
                yield steps.pause(seconds)
            else:
                # A serial line keeps its thread: its pauses time the baud switch, which a parked
                # wait (resumed when a task thread is free) could miss.
                time.sleep(seconds)

    def _send_after(self, seconds: float, data: bytes) -> steps.Steps:
        """Send `data` once the reaction time `seconds` has passed; an answer is received next.
        Over TCP the request is held for that receive (Channel.send_later), which sends it from
        the wait for the answer: one parked wait, not a pause and then a read."""
        if self.channel.park and self.sleep is None:
            if self.channel.remaining() < seconds:
                raise MeterTimeout(f"{self.where}: session timeout reached")
            self.channel.send_later(data, seconds)
        else:
            yield from self._pause(seconds)
            self.channel.send(data)

    @property
    def reaction_time(self) -> float:
        return self.identification.reaction_time if self.identification else 0.2

    # -- sign-on -----------------------------------------------------------------------------
    def wake_up(self) -> None:
        self._run(self.wake_up_steps())

    def wake_up_steps(self) -> steps.Steps:
        """NUL bytes for `wakeup_duration`, paced so no gap exceeds 0.5 s, then the pause."""
        baud = self.target.serial.baudrate if self.target.serial else 300
        chunk = max(1, int(0.2 * baud / 10))  # 0.2 s worth of characters at the line speed
        started = self.clock()
        log.debug("waking %s: NUL bytes for %.1fs", self.where, self.wakeup_duration)
        while self.clock() - started < self.wakeup_duration:
            self.channel.send(b"\x00" * chunk)
            yield from self._pause(0.2)
        self.transport.drain()
        yield from self._pause(self.wakeup_pause)

    def sign_on(self, mode: str) -> f.Identification:
        return self._run(self.sign_on_steps(mode))

    def sign_on_steps(self, mode: str) -> steps.Steps:
        """Request, identification, option select and (on serial lines) the baud switch."""
        if not self._opened:
            yield from self.open_steps()
        if self.target.wakeup:
            yield from self.wake_up_steps()
        self.channel.send(f.build_request(self.target.address))
        extractor = f.IdentificationExtractor()
        ident = yield from self.channel.receive_steps(extractor, "identification",
                                                      on_timeout=lambda: extractor.rejected)
        self.identification = ident
        log.debug("%s identified as %s", self.where, ident)
        line_baud = self.target.serial.baudrate if self.target.serial else 300
        if self.transport.can_switch_baud:
            baud = ident.baudrate
            if self.target.max_baud and baud > self.target.max_baud:
                baud = max(b for b in f.BAUD_CHARS.values() if b <= self.target.max_baud)
        else:
            # A transparent gateway keeps its line speed: ask the meter not to switch.
            baud = line_baud if line_baud in f.CHAR_FOR_BAUD else 300
        option_select = f.build_option_select(f.CHAR_FOR_BAUD[baud], mode)
        if self.transport.can_switch_baud and baud != line_baud:
            # The ACK must leave at the old speed. USB adapters report it sent while it is still
            # in their FIFO; switch_delay covers that.
            yield from self._pause(ident.reaction_time)
            self.channel.send(option_select)
            self.transport.drain()
            yield from self._pause(self.target.switch_delay)
            self.transport.set_baudrate(baud)
        else:
            yield from self._send_after(ident.reaction_time, option_select)
        return ident

    def readout(self) -> Readout:
        return self._run(self.readout_steps())

    def readout_steps(self) -> steps.Steps:
        """Mode C data readout: the meter's whole data message, BCC verified."""
        ident = yield from self.sign_on_steps(f.MODE_READOUT)
        frame = yield from self.channel.receive_steps(f.extract_frame, "data message")
        if frame.kind != "block" or frame.command:
            raise MeterProtocolError(f"{self.where}: expected a data message, got {frame.kind}")
        if not frame.bcc_ok:
            raise MeterChecksumError(f"{self.where}: data message BCC mismatch")
        if not frame.final:
            raise MeterProtocolError(f"{self.where}: data message ended with EOT, not ETX")
        return Readout(ident, parse_readout(frame.payload))

    # -- programming mode --------------------------------------------------------------------
    def _receive_block(self, what: str) -> steps.Steps:
        """A block or ACK/NAK; a block with a bad BCC is NAKed for a repeat, at most `retries` times."""
        for _attempt in range(self.target.retries + 1):
            frame = yield from self.channel.receive_steps(f.extract_frame, what)
            if frame.kind != "block" or frame.bcc_ok:
                return frame
            log.debug("%s: %s with bad BCC, asking for a repeat", self.where, what)
            yield from self._send_after(self.reaction_time, bytes([f.NAK]))
        raise MeterChecksumError(f"{self.where}: {what} BCC still wrong after "
                                 f"{self.target.retries} repeats")

    def enter_programming(self, password: str | None = None) -> str:
        return self._run(self.enter_programming_steps(password))

    def enter_programming_steps(self, password: str | None = None) -> steps.Steps:
        """Sign on in programming mode and answer the P0 challenge with P1 if a password is given.
        Returns the P0 operand (often the serial number)."""
        yield from self.sign_on_steps(f.MODE_PROGRAMMING)
        self.programming = True
        frame = yield from self._receive_block("password request")
        if frame.kind != "block" or frame.command != "P0":
            raise MeterProtocolError(f"{self.where}: expected P0 after option select, got "
                                     f"{frame.command or frame.kind}")
        operand = frame.payload.decode("ascii", errors="replace").strip("()")
        if password is None:
            return operand
        log.debug("%s: sending password (P1)", self.where)
        payload = b"(" + password.encode("ascii", errors="replace") + b")"
        yield from self._send_after(self.reaction_time, f.build_command("P1", payload))
        answer = yield from self._receive_block("password answer")
        if answer.kind == "ack":
            return operand
        if answer.kind == "nak" or answer.command == "B0" or answer.payload.startswith(b"(ERR"):
            self.programming = False  # the meter has left programming mode already
            raise MeterAuthenticationError(f"{self.where}: password refused")
        raise MeterProtocolError(f"{self.where}: unexpected answer to the password")

    def _command(self, command: str, payload: bytes, what: str) -> steps.Steps:
        """Send a command; resend it (bounded) while the meter answers NAK."""
        for _attempt in range(self.target.retries + 1):
            yield from self._send_after(self.reaction_time, f.build_command(command, payload))
            frame = yield from self._receive_block(what)
            if frame.kind != "nak":
                return frame
            log.debug("%s: NAK for %s, sending again", self.where, command)
        raise MeterProtocolError(f"{self.where}: meter answered NAK to {command} "
                                 f"{self.target.retries + 1} times")

    def read(self, address: str, params: str = "") -> tuple[DataSet, ...]:
        return self._run(self.read_steps(address, params))

    def read_steps(self, address: str, params: str = "") -> steps.Steps:
        """R1: read one address. An answer without address is attributed to `address`."""
        frame = yield from self._command("R1", f"{address}({params})".encode("ascii"), f"answer to R1 {address}")
        if frame.kind != "block" or frame.command:
            raise MeterProtocolError(f"{self.where}: R1 {address} answered with {frame.kind}")
        sets = parse_data_block(frame.payload)
        if not sets or not sets[0].values:
            raise MeterProtocolError(f"{self.where}: empty answer to R1 {address}")
        self._raise_error_answer(sets[0], f"R1 {address}")
        return tuple(DataSet(s.address or address, s.values) for s in sets)

    def read_partial(self, address: str, params: str = "", command: str = "R3") -> list[bytes]:
        return self._run(self.read_partial_steps(address, params, command))

    def read_partial_steps(self, address: str, params: str = "", command: str = "R3") -> steps.Steps:
        """R3 (or R5, the load profile read): answered in partial blocks (EOT), each acknowledged
        with ACK until ETX."""
        frame = yield from self._command(command, f"{address}({params})".encode("ascii"), f"answer to {command} {address}")
        blocks: list[bytes] = []
        while True:
            if frame.kind != "block" or frame.command:
                raise MeterProtocolError(f"{self.where}: {command} {address} answered with {frame.kind}")
            blocks.append(frame.payload)
            if frame.final:
                return blocks
            if len(blocks) > 100_000:
                raise MeterProtocolError(f"{self.where}: {command} {address} never ended")
            yield from self._send_after(self.reaction_time, bytes([f.ACK]))
            frame = yield from self._receive_block(f"partial block {len(blocks) + 1} of {command} {address}")

    def write(self, address: str, value: str) -> None:
        self._run(self.write_steps(address, value))

    def write_steps(self, address: str, value: str) -> steps.Steps:
        """W1: write one value; the meter answers ACK, or an error message. The value is not
        logged (lock keys travel this way)."""
        frame = yield from self._command("W1", f"{address}({value})".encode("ascii"), f"answer to W1 {address}")
        if frame.kind == "ack":
            return
        if frame.kind == "block" and not frame.command:
            sets = parse_data_block(frame.payload)
            if sets and sets[0].values:
                self._raise_error_answer(sets[0], f"W1 {address}")
        raise MeterProtocolError(f"{self.where}: W1 {address} not acknowledged")

    def _raise_error_answer(self, dataset: DataSet, what: str) -> None:
        text = dataset.value.raw
        if text.upper().startswith("ERR"):
            raise MeterUnsupported(f"{self.where}: meter answered {text[:40]!r} to {what}")
        if self.answer_check is not None:
            self.answer_check(text, f"{self.where}: {what}")
