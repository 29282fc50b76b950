"""A null-modem cable made of two ptys: bytes written on one tty come out of the other.

Both ends are real ttys, so a serial client (pyserial) and a serial server (pymodbus's
ModbusSerialServer) can each open a device path, as they would on a real RS-485 line.
"""

from __future__ import annotations

import logging
import os
import select
import threading

log = logging.getLogger(__name__)


class PtyPair:
    """`client_path` and `server_path` are the two ends; a thread copies between the masters."""

    def __init__(self) -> None:
        self._client_master, self._client_slave = os.openpty()
        self._server_master, self._server_slave = os.openpty()
        self.client_path = os.ttyname(self._client_slave)
        self.server_path = os.ttyname(self._server_slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, name="pty-pair", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _relay(self) -> None:
        peer = {self._client_master: self._server_master, self._server_master: self._client_master}
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select(list(peer), [], [], 0.1)
                for fd in ready:
                    os.write(peer[fd], os.read(fd, 4096))
        except OSError as exc:  # a master closed under us: the cable is cut
            if not self._stop.is_set():
                log.warning("pty pair %s <-> %s stopped relaying: %s", self.client_path,
                            self.server_path, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        # The slaves stay open until here so neither master reads EIO between client sessions.
        for fd in (self._client_master, self._client_slave, self._server_master, self._server_slave):
            try:
                os.close(fd)
            except OSError:
                pass
