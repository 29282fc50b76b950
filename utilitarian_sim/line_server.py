"""Lines for simulated meters that are not IEC 62056-21: one TCP port or one pty per gateway, each
conversation handed to a `serve(line, gateway)` callback on its own thread, sessions recorded.
"""

from __future__ import annotations

import logging
import termios
import threading
import time
from typing import Callable

from utilitarian_sim.acceptor import Acceptor, Conversations
from utilitarian_sim.iec_engine import LineClosed
from utilitarian_sim.iec_server import PtyLine, SocketLine
from utilitarian_sim.sessions import SessionLog

log = logging.getLogger(__name__)


class ResettingPtyLine(PtyLine):
    """A pty whose speed goes back to 38400 after each answer. This sandbox's pty rejects a
    tcsetattr that asks for parity and changes nothing else (Linux ptys drop parity), so a client
    opening the line at 2400 8E1 a second time fails unless the speed differs; a real UART does
    not care. The client's own port settings are what the tests assert."""

    def write(self, data: bytes) -> None:
        super().write(data)
        try:
            attrs = termios.tcgetattr(self.slave)
            attrs[4] = attrs[5] = termios.B38400
            termios.tcsetattr(self.slave, termios.TCSANOW, attrs)
        except termios.error:
            pass


class LineServer:
    """`gateways` TCP listeners (transport "tcp") or ptys ("pty"); `ports`/`devices` say where."""

    def __init__(self, gateways: int, serve: Callable[[object, int, threading.Event], None], *,
                 transport: str = "tcp", host: str = "127.0.0.1", ports=None, name: str = "sim",
                 clock: Callable[[], float] = time.time):
        if transport not in ("tcp", "pty"):
            raise ValueError("transport must be 'tcp' or 'pty'")
        self.gateways, self.serve, self.transport, self.host, self.name = gateways, serve, transport, host, name
        self._wanted = list(ports) if ports is not None else [0] * gateways
        self.sessions = SessionLog(clock)
        self.ports: list[int] = []
        self.devices: list[str] = []
        self.stop_event = threading.Event()
        self._acceptor: Acceptor | None = None
        self._names: list[str] = []
        self._lines: list[PtyLine] = []
        self._conversations = Conversations(f"{name}-line")

    def start(self) -> None:
        if self.transport == "tcp":
            self._acceptor = Acceptor(self.host, self._wanted, self._accepted, name=f"{self.name}-accept")
            self.ports = self._acceptor.listen()
        else:
            self._lines = [ResettingPtyLine() for _ in range(self.gateways)]
            self.devices = [line.path for line in self._lines]
        self._names = self.interfaces()
        if self._acceptor is not None:
            self._acceptor.start()
        for gateway, line in enumerate(self._lines):
            self._conversations.spawn(self._run, line, gateway, False)

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        if self._acceptor is not None:
            self._acceptor.stop(timeout)
        self._conversations.join(timeout)
        for line in self._lines:
            line.close()

    def _accepted(self, gateway: int, conn) -> None:
        self._conversations.spawn(self._run, SocketLine(conn), gateway, True)

    def interfaces(self) -> list[str]:
        if self.transport == "pty":
            return list(self.devices)
        return [f"{self.host}:{p}" for p in self.ports]

    def _run(self, line, gateway: int, closes: bool) -> None:
        name = self._names[gateway]
        self.sessions.started(name)
        try:
            self.serve(line, gateway, self.stop_event)
        except LineClosed:
            pass
        except Exception:  # one broken conversation must not take the gateway down
            log.exception("simulated %s gateway %s: conversation failed; line closed", self.name, name)
        finally:
            if closes:
                line.close()
            self.sessions.ended(name)
