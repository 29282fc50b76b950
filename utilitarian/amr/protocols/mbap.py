"""Modbus TCP (MBAP framing) register reads on a plain socket, for the poll's common case: function 3
or 4 to a TCP gateway. pymodbus's sync client spends most of a poll's protocol CPU in its transaction
machinery (request objects, framer, decoder registry, select loop); one read here is a pack, a send,
a recv and an unpack (docs/benchmarks-amr.md). RTU framing and serial lines stay on pymodbus.

Written from the Modbus Application Protocol V1.1b3 and the Messaging on TCP/IP Implementation
Guide V1.0b (MBAP header: transaction id, protocol id 0, length of unit id + PDU, unit id) and tested
against pymodbus's own server (tests/integration/amr/test_amr_modbus.py, test_modbus_pool.py).
"""

from __future__ import annotations

import fcntl
import os
import resource
import select
import socket
import struct
import time

from utilitarian import steps
from utilitarian.amr.protocols.transport import RECV_NOWAIT, timeval
from utilitarian.amr.target import MeterTarget

_REQUEST = struct.Struct(">HHHBBHH")   # tid, protocol 0, length 6, unit, function, address, count
_HEADER = struct.Struct(">HHHB")       # tid, protocol, length, unit
MAX_LENGTH = 254                       # unit id + the largest PDU (253 bytes)

# select() (pymodbus's sync clients for RTU framings wait with it) fails for a descriptor at or
# above FD_SETSIZE. Our sockets never go near select(): they live from here up when the process may
# open that many, so a pool of hundreds of them leaves the low numbers to those that need them
# (modbus_pool.py caps only connections on low descriptors).
FD_SETSIZE = 1024
_HIGH_FDS = resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 2 * FD_SETSIZE


def _above_select_range(sock: socket.socket) -> socket.socket:
    """`sock` on a descriptor >= FD_SETSIZE (the same connection), or `sock` itself when the
    process may not open that many."""
    if not _HIGH_FDS or sock.fileno() >= FD_SETSIZE:
        return sock
    try:
        fd = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, FD_SETSIZE)
    except OSError:  # EMFILE, or a limit lowered since start: the low one still works
        return sock
    try:
        high = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return sock
    sock.close()
    return high


class NoAnswer(Exception):
    """Nothing came back within the timeout."""


class Garbled(Exception):
    """Bytes came back, but not a Modbus TCP frame answering the request."""


class ConnectionLost(Exception):
    """The gateway closed or reset the connection."""


class MalformedAnswer(Exception):
    """A well-framed answer whose PDU does not fit the request."""


class ExceptionAnswer(Exception):
    """The device answered with a Modbus exception code."""

    def __init__(self, code: int):
        super().__init__(f"exception code {code}")
        self.code = code


def read_request(tid: int, unit: int, function: int, address: int, count: int) -> bytes:
    return _REQUEST.pack(tid, 0, 6, unit, function, address, count)


def split_frame(buffer: bytes) -> tuple[int, int, bytes, bytes] | None:
    """(tid, unit, pdu, rest) of the first frame in `buffer`, None while it is incomplete; raises
    Garbled when the header cannot be a Modbus TCP header."""
    if len(buffer) < 7:
        return None
    tid, protocol, length, unit = _HEADER.unpack_from(buffer)
    if protocol != 0 or not 2 <= length <= MAX_LENGTH:
        raise Garbled(f"protocol id {protocol}, length {length}")
    end = 6 + length
    if len(buffer) < end:
        return None
    return tid, unit, buffer[7:end], buffer[end:]


def parse_read_response(pdu: bytes, function: int, count: int) -> list[int]:
    """The registers of a read answer; ExceptionAnswer or MalformedAnswer otherwise."""
    if pdu[0] == function | 0x80 and len(pdu) == 2:
        raise ExceptionAnswer(pdu[1])
    if pdu[0] != function or len(pdu) < 2 or pdu[1] != 2 * count or len(pdu) != 2 + pdu[1]:
        raise MalformedAnswer(f"function {pdu[0]}, {len(pdu)} bytes for {count} registers")
    return list(struct.unpack_from(f">{count}H", pdu, 2))


class MbapConnection:
    """One TCP connection to a Modbus TCP gateway; the interface of modbus_pool.ModbusConnection.
    Not thread-safe: one session uses it at a time."""

    def __init__(self, target: MeterTarget, endpoint):
        self.endpoint = endpoint
        self.host, self.port = target.host or "", target.port or 502
        self.timeout = target.timeout
        self.retries = target.retries
        self.sock: socket.socket | None = None
        self.received = False   # bytes seen since the last request (tells garbage from silence)
        self.last_used = 0.0    # pool clock when it was last returned
        self.fd = -1
        self.low_fd = True      # holds a descriptor select() could take (modbus_pool.py counts those)
        self._tid = 0
        self._poller = None  # select.poll on fd, for looks_alive

    def connect(self) -> bool:
        sock = _above_select_range(socket.create_connection((self.host, self.port), timeout=self.timeout))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Blocking without a Python timeout (which costs a poll() before every recv and send): a
        # read waits for its answer as a steps.Readable (parked in the worker's epoll, or one
        # poll() in `read`) and then takes the bytes with MSG_DONTWAIT; a send of a request is
        # bounded by SO_SNDTIMEO.
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval(self.timeout))
        self.sock = sock
        self.fd = sock.fileno()
        self.low_fd = self.fd < FD_SETSIZE
        self._poller = None
        return True

    def close(self) -> None:
        sock, self.sock = self.sock, None
        self._poller = None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def looks_alive(self) -> bool:
        """False when the gateway closed the connection while it was idle, or sent bytes nobody
        asked for (a late answer): either way it must not carry the next request."""
        if self.sock is None:
            return False
        # One poll(0): any event (bytes, the gateway's FIN, an error) says no. A recv peek said
        # the same by raising BlockingIOError when all was well; the exception cost 4 us of the
        # 5 a check took, and every pooled poll checks.
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(self.fd, select.POLLIN | select.POLLPRI)
        return not self._poller.poll(0)

    def read(self, function: int, address: int, count: int, device_id: int) -> list[int]:
        """`read_steps`, waiting in this thread."""
        return steps.drive(self.read_steps(function, address, count, device_id))

    def read_steps(self, function: int, address: int, count: int, device_id: int) -> steps.Steps:
        """Registers, or one of this module's exceptions; after a timeout the request is sent
        again `retries` times (a late answer to an earlier try is recognised by its id). Yields
        a steps.Readable while it waits for an answer."""
        for attempt in range(self.retries + 1):
            self._tid = self._tid % 0xFFFF + 1
            try:
                self.sock.sendall(read_request(self._tid, device_id, function, address, count))
            except OSError as exc:
                raise ConnectionLost(f"connection lost ({exc.strerror or exc})") from None
            self.received = False
            try:
                return (yield from self._answer(self._tid, device_id, function, count))
            except NoAnswer:
                if attempt == self.retries:
                    raise
        raise NoAnswer()  # not reached

    def _answer(self, tid: int, unit: int, function: int, count: int) -> steps.Steps:
        deadline = time.monotonic() + self.timeout
        buffer = b""
        while True:
            frame = split_frame(buffer)
            if frame is not None:
                got_tid, got_unit, pdu, buffer = frame
                if got_tid != tid:
                    continue  # a late answer to an earlier try: skip it
                if got_unit != unit:
                    raise Garbled(f"answer from unit {got_unit}")
                return parse_read_response(pdu, function, count)
            if deadline - time.monotonic() <= 0 or not (yield steps.Readable(self.fd, deadline)):
                raise Garbled("incomplete frame") if self.received else NoAnswer()
            try:
                chunk = self.sock.recv(512, RECV_NOWAIT)
            except BlockingIOError:  # woken without bytes after all: wait again
                continue
            except OSError as exc:
                raise ConnectionLost(f"connection lost ({exc.strerror or exc})") from None
            if not chunk:
                raise ConnectionLost("connection lost")
            self.received = True
            buffer += chunk
