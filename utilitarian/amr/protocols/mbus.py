"""Wired M-Bus master sessions (EN 13757-2/-3) over a serial line (2400 8E1 by default) or a
transparent TCP M-Bus gateway: SND_NKE, selection by secondary address, REQ_UD2 with the FCB
toggled per telegram, multi-telegram answers.

A request whose answer is garbled (a collision on the bus, noise) or missing is repeated with the
same FCB up to `retries` times; after that the poll fails with `BusCollision` or `MeterTimeout`,
both retryable by the pipeline's policy.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from utilitarian.amr.errors import MeterChecksumError, MeterError, MeterProtocolError, MeterTimeout
from utilitarian.amr.protocols import mbus_frames as f
from utilitarian.amr.protocols.mbus_records import Header, Record, parse_header, parse_records
from utilitarian.amr.protocols.transport import Channel, Transport, open_transport
from utilitarian.amr.target import MeterTarget

log = logging.getLogger(__name__)
MAX_TELEGRAMS = 16
QUIET = 0.05   # seconds of silence to let the bus settle before a repeat (EN 13757-2: 33 bit times)


class BusCollision(MeterTimeout):
    """Answers that did not check (overlapping slaves, noise) after every repeat. Retryable."""

    kind = "collision"


class WrongAddress(MeterProtocolError):
    """An answer from another slave than the one asked."""


@dataclass(frozen=True)
class MbusReadout:
    header: Header | None
    records: tuple[Record, ...]
    telegrams: int


class MbusSession:
    """One conversation with one slave. Use as a context manager."""

    def __init__(self, target: MeterTarget, *, transport: Transport | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if target.protocol != "mbus":
            raise MeterProtocolError(f"{target}: not an M-Bus target")
        self.target = target
        self.primary = target.option("address")
        self.secondary = target.option("secondary")
        self.max_telegrams = int(target.option("max_telegrams", MAX_TELEGRAMS))
        self.transport = transport or open_transport(target)
        self.clock, self.sleep = clock, sleep
        self.channel = Channel(self.transport, timeout=target.timeout,
                               deadline=clock() + target.session_timeout, clock=clock)
        self.address = f.ADDRESS_SELECTED if self.secondary else self.primary
        self.fcb = True
        self._opened = False

    @property
    def where(self) -> str:
        who = f"secondary {self.secondary}" if self.secondary else f"address {self.primary}"
        return f"{self.target.interface} {who}"

    def __enter__(self) -> MbusSession:
        self.transport.open(min(self.target.timeout, max(self.channel.remaining(), 0.001)))
        self._opened = True
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self._opened:
            if self.secondary:
                try:   # deselect, so the next master's secondary search starts clean
                    self.channel.send(f.snd_nke(f.ADDRESS_SELECTED))
                    self.channel.receive(f.extract_frame, "ACK to deselect")
                except MeterError as exc:
                    log.debug("deselect of %s not confirmed (%s)", self.where, exc)
            self.transport.close()
            self._opened = False

    def _exchange(self, request: bytes, what: str) -> f.Frame:
        """Send and receive one answer, repeating after silence or a garbled answer."""
        failures: list[str] = []
        attempts = max(self.target.retries, 0) + 1
        for attempt in range(attempts):
            self.channel.buffer.clear()
            self.channel.send(request)
            try:
                frame = self.channel.receive(f.extract_frame, what)
            except MeterTimeout as exc:
                if self.channel.remaining() <= 0:
                    raise
                failures.append(f"no answer ({exc.message})")
            except (MeterChecksumError, f.MbusFrameError) as exc:
                failures.append(exc.message)
                self._settle()
            else:
                return frame
            log.debug("%s: %s; attempt %d of %d", self.where, failures[-1], attempt + 1, attempts)
        text = f"{self.where}: {what} failed {attempts} time(s): {'; '.join(failures[-3:])}"
        if any("no answer" not in reason for reason in failures):
            raise BusCollision(text)
        raise MeterTimeout(text)

    def _settle(self) -> None:
        """Read until the bus is quiet: the tail of a collided answer must not start the next one."""
        while self.channel.remaining() > 0:
            chunk = self.transport.read(QUIET)
            if not chunk:
                return

    def start(self) -> None:
        if self.secondary:
            frame = self._exchange(f.select_secondary(self.secondary), "ACK to the selection")
        else:
            frame = self._exchange(f.snd_nke(self.primary), "ACK to SND_NKE")
        if frame.kind != "ack":
            raise MeterProtocolError(f"{self.where}: expected an ACK (E5), got a {frame.kind} frame")
        self.fcb = True    # the first REQ_UD2 after SND_NKE or a selection carries FCB set

    def read(self) -> MbusReadout:
        header: Header | None = None
        records: list[Record] = []
        for telegram in range(1, self.max_telegrams + 1):
            frame = self._exchange(f.req_ud2(self.address, self.fcb), "RSP_UD")
            self.fcb = not self.fcb
            if frame.kind != "long" or frame.control & 0x4F != f.RSP_UD:
                raise MeterProtocolError(f"{self.where}: expected RSP_UD, got a {frame.kind} frame "
                                         f"(C 0x{frame.control:02x})")
            if self.primary is not None and not self.secondary and frame.address != self.primary:
                raise WrongAddress(f"{self.where}: answer from primary address {frame.address}")
            this_header, start = parse_header(frame.ci, frame.data)
            if this_header is not None:
                if self.secondary and not _matches(self.secondary, this_header):
                    raise WrongAddress(f"{self.where}: answer from meter {this_header.identification}")
                if header is not None and this_header.identification != header.identification:
                    raise WrongAddress(f"{self.where}: telegram {telegram} from meter "
                                       f"{this_header.identification}, not {header.identification}")
                header = header or this_header
            found, more = parse_records(frame.data, start)
            records.extend(found)
            if not more:
                return MbusReadout(header, tuple(records), telegram)
        raise MeterProtocolError(f"{self.where}: still more telegrams after {self.max_telegrams}")


def _matches(pattern: str, header: Header) -> bool:
    ident = pattern[:8]
    return all(p == "F" or p == c for p, c in zip(ident, header.identification))
