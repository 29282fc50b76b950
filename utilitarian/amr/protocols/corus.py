"""A Corus conversation over a TCP gateway or a serial line: wake-up, sign-on, the password
exchange, parameter reads and writes, database reads in acknowledged frames, break.

The password exchange: the device prompts with "PASS" + CRC and accepts the password it was given
(the platform's client answers with the prompt itself, which a device with the default password
accepts). Wrong password: NAK. A frame with a bad CRC is NAKed for a repeat, at most `retries`
times. Every read is bounded by the target's timeout and the session deadline (transport.Channel).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Callable

from utilitarian.amr.errors import (MeterAuthenticationError, MeterChecksumError, MeterError,
                                    MeterProtocolError, MeterUnsupported)
from utilitarian.amr.protocols import corus_frames as cf
from utilitarian.amr.protocols.transport import Channel, Transport, open_transport
from utilitarian.amr.target import MeterTarget

log = logging.getLogger(__name__)

WAKEUP_NULS = 200          # the description asks for at least 12; devices in the field like more
OPTION_SELECT = bytes([cf.ACK]) + b"076\r\n"   # what the platform's client sends after sign-on
MAX_FRAMES = 10_000


class CorusSession:
    def __init__(self, target: MeterTarget, *, transport: Transport | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if target.protocol != "corus":
            raise MeterUnsupported(f"{target}: not a Corus target")
        self.target = target
        self.transport = transport or open_transport(target)
        self.channel = Channel(self.transport, timeout=target.timeout,
                               deadline=clock() + target.session_timeout, clock=clock)
        self.identification = ""
        self._opened = False
        self._signed_on = False

    @property
    def where(self) -> str:
        return self.target.interface

    def __enter__(self) -> CorusSession:
        self.transport.open(min(self.target.timeout, max(self.channel.remaining(), 0.001)))
        self._opened = True
        try:
            self.sign_on()
        except BaseException:
            # __exit__ does not run when __enter__ raises: close here, or the line stays open
            # (a gateway serving one connection at a time would refuse the next poll).
            self.transport.close()
            self._opened = False
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        if self._signed_on:
            try:
                self.channel.send(cf.build_break())
                self.transport.drain()
            except MeterError as exc:
                log.debug("break to %s not sent (%s); the device times out on its own", self.where, exc)
        if self._opened:
            self.transport.close()
            self._opened = False

    def _receive(self, extract, what: str):
        try:
            return self.channel.receive(extract, what)
        except MeterProtocolError as exc:
            raise MeterProtocolError(f"{self.where}: {exc.message}") from None

    def sign_on(self) -> None:
        self.channel.send(b"\x00" * WAKEUP_NULS)
        self._receive(cf.extract_wakeup, "wake-up answer")
        self.channel.send(b"/?!\r\n")
        self.identification = self._receive(cf.extract_line, "identification")
        self.channel.send(OPTION_SELECT)
        if not self._receive(cf.extract_prompt, "password prompt"):
            raise MeterChecksumError(f"{self.where}: password prompt with a wrong CRC")
        log.debug("%s: sending the password", self.where)
        self.channel.send(cf.build_password(self.target.password or "PASS"))
        answer = self._receive(cf.extract_frame, "answer to the password")
        if answer.kind == "nak":
            raise MeterAuthenticationError(f"{self.where}: password refused")
        if answer.kind != "ack":
            raise MeterProtocolError(f"{self.where}: unexpected answer to the password")
        self._signed_on = True

    def _data_frame(self, request: bytes, what: str) -> bytes:
        """Send a request, return its data frame; a bad CRC is NAKed for a repeat."""
        self.channel.send(request)
        for _attempt in range(self.target.retries + 1):
            frame = self._receive(cf.extract_frame, what)
            if frame.kind == "nak":
                raise MeterProtocolError(f"{self.where}: device refused the {what.split()[-1]} request")
            if frame.kind != "data":
                raise MeterProtocolError(f"{self.where}: {what}: got {frame.kind}")
            if frame.crc_ok:
                return frame.data
            log.debug("%s: %s with a bad CRC, asking for a repeat", self.where, what)
            self.channel.send(bytes([cf.NAK]))
        raise MeterChecksumError(f"{self.where}: {what} CRC still wrong after {self.target.retries} repeats")

    def read(self, items: list[tuple[int, str]]) -> list:
        """Values of (parameter id, type) pairs, in order; None where the device has no value."""
        data = self._data_frame(cf.build_read([i for i, _ in items]), "answer to the parameter read")
        expected = sum(cf.LENGTHS[kind] for _, kind in items)
        if len(data) != expected:
            raise MeterProtocolError(f"{self.where}: parameter answer of {len(data)} bytes, expected {expected}")
        out, pos = [], 0
        for _ident, kind in items:
            size = cf.LENGTHS[kind]
            out.append(cf.decode(kind, data[pos:pos + size]))
            pos += size
        return out

    def write(self, items: list[tuple[int, bytes]]) -> None:
        self.channel.send(cf.build_write(items))
        frame = self._receive(cf.extract_frame, "answer to the parameter write")
        if frame.kind == "nak":
            raise MeterProtocolError(f"{self.where}: parameter write refused")
        if frame.kind != "ack":
            raise MeterProtocolError(f"{self.where}: parameter write not acknowledged")

    def read_database(self, database: str, newest: datetime | None, oldest: datetime | None
                      ) -> tuple[int, list[bytes]]:
        """(record size, raw records, newest first) of `database` between the two local times."""
        data = self._data_frame(cf.build_database_read(database, newest, oldest),
                                f"first frame of the {database} database")
        first = cf.parse_database_frame(data, first=True)
        size, payload, frame = first.record_size or 0, bytearray(first.payload), first
        while not frame.last:
            if len(payload) > MAX_FRAMES * 255:
                raise MeterProtocolError(f"{self.where}: {database} database never ended")
            data = self._data_frame(bytes([cf.ACK]), f"frame {frame.number + 1} of the {database} database")
            following = cf.parse_database_frame(data, first=False)
            if following.number != frame.number + 1:
                raise MeterProtocolError(f"{self.where}: {database} database frame {following.number} "
                                         f"after {frame.number}")
            payload += following.payload
            frame = following
        if size == 0:
            return 0, []
        if len(payload) % size:
            raise MeterProtocolError(f"{self.where}: {database} database: {len(payload)} bytes are not "
                                     f"whole records of {size}")
        return size, [bytes(payload[i:i + size]) for i in range(0, len(payload), size)]
