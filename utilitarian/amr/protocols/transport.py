"""Byte transports for IEC 62056-21 (TCP socket, pyserial port) and the deadline-bounded receive buffer.

Every read is bounded twice: by the per-read timeout (restarted whenever bytes arrive, so a long
readout at 300 baud is fine) and by the session deadline (so a babbling meter cannot hold a worker).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import termios
import time
from typing import Callable, Protocol, TypeVar

from utilitarian import steps
from utilitarian.amr.errors import MeterTimeout, MeterUnreachable
from utilitarian.amr.target import MeterTarget, SerialSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
# recv flags after a steps.Readable said the bytes are there (both TCP transports: this and mbap.py)
RECV_NOWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)


class Transport(Protocol):
    """What the protocol layer needs from a line. A line whose waits a worker can park (TCP) also
    offers `open_steps(timeout)` and `read_steps(timeout)`, `open` and `read` as stepwise functions
    (utilitarian/steps.py), and `ask_steps(data, at, timeout)`, a write at a given time and then
    `read_steps`; Channel uses them when they are there."""

    can_switch_baud: bool

    def open(self, timeout: float) -> None: ...
    def close(self) -> None: ...
    def write(self, data: bytes) -> None: ...
    def read(self, timeout: float) -> bytes: ...   # b"" when nothing arrived in time
    def drain(self) -> None: ...                   # block until written bytes left the port
    def set_baudrate(self, baudrate: int) -> None: ...


def timeval(seconds: float) -> bytes:
    """`seconds` as the struct timeval SO_RCVTIMEO and SO_SNDTIMEO take (0 there means forever)."""
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1e6))


class TcpTransport:
    """A transparent TCP gateway or IP modem: same bytes, no baud rate changes.

    The socket blocks, without a Python timeout: that costs an ioctl per settimeout and a poll()
    before every recv and send, each a GIL hand-over that a hundred polling threads queue for. A
    blocking `read` is one recv, its timeout kept by the kernel (SO_RCVTIMEO, changed only when a
    wait differs by more than 10 ms). A stepwise read (`read_steps`) yields a steps.Readable (parked
    in the worker's epoll) and then takes the bytes with MSG_DONTWAIT. A send is bounded by
    SO_SNDTIMEO. The connect is non-blocking (`open_steps`): a handshake still under way when
    connect returns is a steps.Writable, so a modem link's round trip holds no thread."""

    can_switch_baud = False

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self._sock: socket.socket | None = None
        self._fd = -1
        self._wait = -1.0   # the socket's SO_RCVTIMEO in seconds

    def open(self, timeout: float) -> None:
        """`open_steps`, waiting for the handshake in this thread (poll)."""
        steps.drive(self.open_steps(timeout))

    def open_steps(self, timeout: float) -> steps.Steps:
        """Connect within `timeout`: a non-blocking connect, then one steps.Writable while the
        handshake is still under way. Asked a second time, connect says whether it is: to loopback
        or a LAN gateway the handshake has finished by then, and nothing is yielded (a parked wait
        would cost a wake-up of the wait loop and a step thread for an answer already there)."""
        deadline = time.monotonic() + timeout
        last: MeterUnreachable | None = None
        for family, address in self._addresses():
            # Created non-blocking (Linux): the connect does not block, and no ioctl per poll sets it so.
            sock = socket.socket(family, socket.SOCK_STREAM | _SOCK_NONBLOCK)
            try:
                if not _SOCK_NONBLOCK:
                    sock.setblocking(False)
                code = sock.connect_ex(address)
                if code == errno.EINPROGRESS:
                    code = sock.connect_ex(address)  # 0 (or EISCONN) once connected, EALREADY meanwhile
                    if code == errno.EALREADY:
                        if not (yield steps.Writable(sock.fileno(), deadline)):
                            raise MeterUnreachable(f"{self.host}:{self.port}: connect timed out")
                        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code and code != errno.EISCONN:
                    last = MeterUnreachable(f"{self.host}:{self.port}: {os.strerror(code)}")
                    sock.close()
                    continue
                sock.setblocking(True)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # A send blocks only when the gateway stops reading; bound it like the connect.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval(max(timeout, 0.001)))
            except BaseException:  # a timeout, or the task closed while it waited: no socket left open
                sock.close()
                raise
            self._sock, self._fd, self._wait = sock, sock.fileno(), -1.0
            return
        raise last or MeterUnreachable(f"{self.host}:{self.port}: no address")

    def _addresses(self) -> list[tuple[int, tuple]]:
        """Where to connect, in order. An IP address as itself: getaddrinfo costs a GIL hand-over."""
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                socket.inet_pton(family, self.host)
            except OSError:
                continue
            return [(family, (self.host, self.port))]
        try:
            found = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)
        except OSError as exc:
            raise MeterUnreachable(f"{self.host}:{self.port}: {exc.strerror or exc}") from None
        return [(family, address) for family, _type, _proto, _name, address in found]

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock, self._fd = None, -1

    def write(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise MeterUnreachable(f"{self.host}:{self.port}: send failed ({exc.strerror or exc})") from None

    def read(self, timeout: float) -> bytes:
        timeout = max(timeout, 0.001)  # 0 would mean "forever" to the kernel
        if abs(timeout - self._wait) > 0.01:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(timeout))
            self._wait = timeout
        try:
            data = self._sock.recv(4096)
        except BlockingIOError:  # SO_RCVTIMEO passed (EAGAIN)
            return b""
        except OSError as exc:
            raise self._lost(exc) from None
        return self._received(data)

    def read_steps(self, timeout: float) -> steps.Steps:
        """`read` as a stepwise function: yields one steps.Readable; b"" when nothing arrived in
        time (or the wake-up found no bytes: the caller's loop waits again for what is left)."""
        if not (yield steps.Readable(self._fd, time.monotonic() + max(timeout, 0.0))):
            return b""
        return self._recv_now()

    def ask_steps(self, data: bytes, at: float, timeout: float) -> steps.Steps:
        """`data` written at `at` (time.monotonic), then `read_steps(timeout)`, as one steps.Ask:
        the request a reaction time holds back goes out from the wait, not from a thread woken
        only to send it. What the wait could not send is written here (a failed line raises)."""
        ask = steps.Ask(self._sock, data, at, time.monotonic() + max(timeout, 0.0))
        answered = yield ask
        if ask.sent < len(data):
            self.write(data[ask.sent:])
            return b""  # the caller's loop waits for the answer
        return self._recv_now() if answered else b""

    def _recv_now(self) -> bytes:
        try:
            data = self._sock.recv(4096, RECV_NOWAIT)
        except BlockingIOError:
            return b""
        except OSError as exc:
            raise self._lost(exc) from None
        return self._received(data)

    def _received(self, data: bytes) -> bytes:
        if not data:
            raise MeterUnreachable(f"{self.host}:{self.port}: connection closed by the meter side")
        return data

    def _lost(self, exc: OSError) -> MeterUnreachable:
        return MeterUnreachable(f"{self.host}:{self.port}: {exc.strerror or exc}")

    def drain(self) -> None:
        pass

    def set_baudrate(self, baudrate: int) -> None:
        pass


class SerialTransport:
    """A local serial port through pyserial (optical head, RS-485 adapter, or a pty in tests).
    `line_history` records every line setting applied, for diagnostics and tests."""

    can_switch_baud = True

    def __init__(self, device: str, settings: SerialSettings):
        self.device, self.settings = device, settings
        self._port = None
        self.line_history: list[tuple[str, int, int, str, int]] = []

    def _record(self, event: str) -> None:
        p = self._port
        self.line_history.append((event, p.baudrate, p.bytesize, p.parity, p.stopbits))

    def open(self, timeout: float) -> None:
        import serial
        s = self.settings
        try:
            # timeout=0: reads never block inside pyserial; `read` waits with select instead, so
            # the port is not reconfigured (a tcsetattr) for every read's different timeout.
            self._port = serial.Serial(self.device, baudrate=s.baudrate, bytesize=s.bytesize,
                                       parity=s.parity, stopbits=s.stopbits, timeout=0,
                                       write_timeout=max(timeout, 1.0))
        except (serial.SerialException, OSError, ValueError, termios.error) as exc:
            # termios.error is not an OSError: a line setting the driver refuses raised it raw.
            raise MeterUnreachable(f"{self.device}: cannot open ({exc})") from None
        self._record("open")

    def close(self) -> None:
        if self._port is not None:
            try:
                self._port.close()
            except OSError:
                log.debug("closing %s failed; nothing left to do", self.device)
            self._port = None

    def write(self, data: bytes) -> None:
        import serial
        try:
            self._port.write(data)
        except (serial.SerialException, OSError) as exc:
            raise MeterUnreachable(f"{self.device}: write failed ({exc})") from None

    def read(self, timeout: float) -> bytes:
        import serial
        try:
            ready, _, _ = select.select([self._port.fileno()], [], [], max(timeout, 0.0))
            if not ready:
                return b""
            return self._port.read(max(self._port.in_waiting, 1))
        except (serial.SerialException, OSError, ValueError) as exc:
            raise MeterUnreachable(f"{self.device}: read failed ({exc})") from None

    def drain(self) -> None:
        import serial
        try:
            self._port.flush()
        except (serial.SerialException, OSError) as exc:
            raise MeterUnreachable(f"{self.device}: flush failed ({exc})") from None

    def set_baudrate(self, baudrate: int) -> None:
        import serial
        try:
            self._port.baudrate = baudrate
        except (serial.SerialException, OSError, ValueError) as exc:
            raise MeterUnreachable(f"{self.device}: cannot set {baudrate} baud ({exc})") from None
        self._record("baud")


def open_transport(target: MeterTarget) -> Transport:
    """The transport a target describes (not yet opened)."""
    if target.transport == "serial":
        return SerialTransport(target.device, target.serial or SerialSettings(300, 7, "E", 1))
    return TcpTransport(target.host, target.port)


class Channel:
    """A transport plus receive buffer. `receive(extract)` feeds the buffer to a pure extractor
    until it yields a value, a typed error, or a timeout."""

    def __init__(self, transport: Transport, *, timeout: float, deadline: float,
                 clock: Callable[[], float] = time.monotonic):
        self.transport = transport
        self.timeout = timeout
        self.deadline = deadline
        self.clock = clock
        self.buffer = bytearray()
        # receive_steps yields the reads' waits (a TCP line) instead of blocking in them.
        self.park = hasattr(transport, "read_steps")
        self._later: tuple[bytes, float] | None = None  # send_later's request and its time (monotonic)

    def remaining(self) -> float:
        return self.deadline - self.clock()

    def send(self, data: bytes) -> None:
        if self._later is not None:
            self._send_held()
        if self.remaining() <= 0:
            raise MeterTimeout("session timeout reached before sending")
        self.transport.write(data)

    def send_later(self, data: bytes, delay: float) -> None:
        """Send `data` `delay` seconds from now (a protocol's reaction time), together with the
        wait for its answer: the next `receive_steps` on a parking line yields one wait for both
        (a steps.Ask), not a pause and then a read. Otherwise it is slept out and sent as the next
        receive or send begins."""
        self._later = (data, time.monotonic() + delay)

    def _send_held(self) -> None:
        """send_later's request, sent in this thread (a line that does not park, or a send first)."""
        (data, at), self._later = self._later, None
        early = at - time.monotonic()
        if early > 0:
            time.sleep(early)
        self.send(data)

    def receive(self, extract: Callable[[bytearray], tuple[int, T] | None], what: str,
                *, on_timeout: Callable[[], Exception | None] | None = None) -> T:
        """`receive_steps`, blocking in the transport's reads."""
        return steps.drive(self.receive_steps(extract, what, on_timeout=on_timeout, park=False))

    def receive_steps(self, extract: Callable[[bytearray], tuple[int, T] | None], what: str,
                      *, on_timeout: Callable[[], Exception | None] | None = None,
                      park: bool | None = None) -> steps.Steps:
        """`receive` as a stepwise function: while `park` (default: self.park) it yields the
        transport's waits (read_steps); else it blocks in the transport's reads, yielding nothing."""
        read_steps = self.transport.read_steps if (self.park if park is None else park) else None
        if self._later is not None and read_steps is None:
            self._send_held()
        last_activity = self.clock()
        if self._later is not None:
            # The held request goes out with the first wait; the read timeout counts from then.
            (data, at), self._later = self._later, None
            last_activity += max(at - time.monotonic(), 0.0)
            if last_activity >= self.deadline:
                raise MeterTimeout("session timeout reached before sending")
            wait = min(last_activity + self.timeout, self.deadline) - self.clock()
            chunk = yield from self.transport.ask_steps(data, at, wait)
            if chunk:
                self.buffer += chunk
                last_activity = self.clock()
        while True:
            result = extract(self.buffer)
            if result is not None:
                consumed, value = result
                del self.buffer[:consumed]
                return value
            now = self.clock()
            wait = min(last_activity + self.timeout, self.deadline) - now
            if wait <= 0:
                error = on_timeout() if on_timeout else None
                if error is not None:
                    raise error
                if now >= self.deadline:
                    raise MeterTimeout(f"session timeout while waiting for {what}")
                raise MeterTimeout(f"no {what} within {self.timeout:g}s")
            chunk = (yield from read_steps(wait)) if read_steps is not None else self.transport.read(wait)
            if chunk:
                self.buffer += chunk
                last_activity = self.clock()
