"""Lines for simulated meters that are not IEC 62056-21: one TCP port or one pty per gateway, each
conversation handed to a `serve(line, gateway)` callback on its own thread, sessions recorded.
"""

from __future__ import annotations

import logging
import termios
import threading
import time
from typing import Callable

from utilitarian_sim.gateways import Conversations, Gateways
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
        self.gateways, self.serve, self.transport, self.host, self.name = gateways, serve, transport, host, name
        self._gateways = Gateways(gateways, transport, host=host, ports=ports, on_accept=self._accepted,
                                  open_pty=ResettingPtyLine, name=name)
        self.sessions = SessionLog(clock)
        self.ports: list[int] = []
        self.devices: list[str] = []
        self.stop_event = threading.Event()
        self._conversations = Conversations(f"{name}-line")

    def start(self) -> None:
        self._gateways.open()
        self.ports, self.devices = self._gateways.ports, self._gateways.devices
        self._gateways.serve()
        for gateway, line in enumerate(self._gateways.lines):
            self._conversations.spawn(self._run, line, gateway, False)

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        self._gateways.stop_accepting(timeout)
        self._conversations.join(timeout)
        self._gateways.close_lines()

    def _accepted(self, gateway: int, conn) -> None:
        self._conversations.spawn(self._run, SocketLine(conn), gateway, True)

    def interfaces(self) -> list[str]:
        return list(self._gateways.names)

    def _run(self, line, gateway: int, closes: bool) -> None:
        name = self._gateways.names[gateway]
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
