"""A NOTIFY_SOCKET listener for benchmarks (what systemd would receive)."""

from __future__ import annotations

import pathlib
import socket
import time


class NotifyListener:
    def __init__(self, path: pathlib.Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)

    def wait_for(self, needle: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if needle in self.sock.recv(65536).decode():
                    return time.monotonic()
            except socket.timeout:
                continue
        raise RuntimeError(f"no {needle} within {timeout}s")

    def close(self) -> None:
        self.sock.close()
